"""Where the model looks: attribution maps per task head.

Integrated gradients (Sundararajan et al. 2017, "Axiomatic Attribution for Deep
Networks") needs only a function from images to logits: it averages the gradient of
the explained score along the straight path from a baseline image to the image, and
multiplies by (image - baseline). Its maps are complete: summed over pixels and
channels they equal score(image) - score(baseline), up to the error of the m-step
Riemann sum (the midpoint rule is used here).

Grad-CAM (Selvaraju et al. 2017) weights the channels of a late convolutional feature
map by the spatial mean of the score's gradient there. The models return only logits,
so the feature map is reached without changing them: a flax method interceptor
(`flax.linen.intercept_methods`) adds a zero perturbation to the output of the chosen
submodule's ``__call__``; the gradient with respect to that perturbation is the
gradient with respect to the feature map, and the interceptor also hands the map back.

The explained score of a task is the logit of a target class (default: the predicted
class) or, with ``score="log_prob"``, its log-softmax. Both are functions of one image:
in eval mode (``train=False``) BatchNorm uses running statistics, so the images of a
batch do not interact and one backward pass of the batch's summed score gives every
image's own gradient.

A share of attribution in a region means little alone:
`saliency_controls.controlled_shares` gives the report's shares intervals by person
(`person_interval`), one rule for all-zero maps (dropped from every number of their
task, and counted), and three controls: the same region on each image's unmasked twin
(`twin_control`: the mask's pull against the face's centre), the top layers re-
initialised (`randomize_top`: Adebayo et al. 2018's sanity check), and integrated
gradients beside Grad-CAM (`agreement`); `report.saliency_section` writes them as
markdown.

Shapes: images float[B, H, W, C] in the model's input space (after
``pipeline.normalize``, where zeros are ImageNet's mean colour); maps float32[B, H, W].
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fgmask_jax.data import pipeline

ApplyFn = Callable[[object, jax.Array], Mapping[str, jax.Array]]
SCORES = ("logit", "log_prob")


def _target_scores(logits: Mapping[str, jax.Array], targets: Mapping[str, jax.Array],
                   score: str) -> dict[str, jax.Array]:
    """{task: float[B]}: the score of each image's target class."""
    out = {}
    for task, z in logits.items():
        z = z.astype(jnp.float32)
        if score == "log_prob":
            z = jax.nn.log_softmax(z, axis=-1)
        out[task] = jnp.take_along_axis(z, targets[task][:, None].astype(jnp.int32), -1)[:, 0]
    return out


def _resolve_targets(logits: Mapping[str, jax.Array],
                     targets: Mapping[str, jax.Array] | None) -> dict[str, jax.Array]:
    targets = dict(targets or {})
    return {t: (targets[t] if t in targets else z.argmax(-1)).astype(jnp.int32)
            for t, z in logits.items()}


def _per_task_grads(fn, x, targets, score):
    """Gradient of each task's summed target score with respect to ``x``.

    ``fn(x) -> (logits {task: [B, K]}, aux)``. Returns (targets, {task: like x}, aux).
    """
    logits, vjp, aux = jax.vjp(fn, x, has_aux=True)
    targets = _resolve_targets(logits, targets)
    grads = {}
    for task in logits:
        def task_score(z, task=task):
            return _target_scores({task: z}, {task: targets[task]}, score)[task].sum()
        cotangent = {t: jnp.zeros_like(z) for t, z in logits.items()}
        cotangent[task] = jax.grad(task_score)(logits[task])
        grads[task] = vjp(cotangent)[0]
    return targets, grads, aux


# Images x points of the path per compiled call of `integrated_gradients`: the path's
# points are folded into the batch, a few at a time. A `lax.scan` over them compiles to a
# while loop, in which XLA:CPU ran ResNet-18's backward pass about 20x slower.
PATH_BATCH = 128


@functools.partial(jax.jit, static_argnames=("apply_fn", "score"))
def _path_gradients(apply_fn, variables, images, baselines, targets, alphas, score):
    """({task: float[B, H, W, C]}, {task: int32[B]}): the sum over ``alphas`` (float[k]) of
    each task's gradient at baselines + alpha (images - baselines), the k points of every
    image in one batch, and the classes explained (``targets``, else the predicted one;
    one forward pass of ``images`` more, cheaper than a program of its own to compile)."""
    targets = _resolve_targets(apply_fn(variables, images), targets)
    k, shape = alphas.shape[0], images.shape
    points = baselines[None] + alphas[:, None, None, None, None] * (images - baselines)[None]
    tiled = {t: jnp.tile(v, k) for t, v in targets.items()}  # point-major, as reshaped
    _, grads, _ = _per_task_grads(
        lambda x: (apply_fn(variables, x), None), points.reshape(k * shape[0], *shape[1:]),
        tiled, score)
    return {t: g.reshape(k, *shape).sum(0) for t, g in grads.items()}, targets


def _path_chunk(steps: int, batch: int) -> int:
    """The largest divisor of ``steps`` whose points for ``batch`` images fit `PATH_BATCH`
    (at least 1): every call then has one shape, and one program serves them all."""
    fits = [d for d in range(1, steps + 1) if steps % d == 0 and d * batch <= PATH_BATCH]
    return max(fits, default=1)


def integrated_gradients(apply_fn: ApplyFn, variables, images: jax.Array, *,
                         baselines: jax.Array | None = None,
                         targets: Mapping[str, jax.Array] | None = None,
                         steps: int = 32, score: str = "logit",
                         return_targets: bool = False):
    """Integrated-gradients maps per task, summed over colour channels.

    The path's points go through the model `PATH_BATCH` image-points at a time (each image's
    points in one batch); the compiled function is cached by (apply_fn, score, shapes), so
    make ``apply_fn`` once (for a flax model: ``functools.partial(model.apply,
    train=False)``, or ``model.apply`` with ``train`` defaulting to False) and pass
    the variables here, where they are an argument and not baked into the program.

    Args:
      apply_fn: (variables, images float[B, H, W, C]) -> {task: logits float[B, K]}.
      variables: the model's variables ({"params": ..., "batch_stats": ...}).
      images: float[B, H, W, C].
      baselines: float[B, H, W, C] or broadcastable; None: zeros of the input space
        (after `pipeline.normalize`, ImageNet's mean colour; black is
        ``pipeline.normalize`` of zero pixels). See `blurred` for the other usual choice.
      targets: {task: int[B]} classes to explain; a task left out explains its
        predicted class.
      steps: m, the points of the path integral (midpoint rule).
      score: "logit" or "log_prob".
      return_targets: also return the {task: int32[B]} classes explained.

    Returns:
      {task: float32[B, H, W]}, or (that, targets) with ``return_targets``. The sum of
      a map over pixels approximates score(image) - score(baseline).
    """
    if score not in SCORES:
        raise ValueError(f"score={score!r}: use one of {SCORES}")
    if steps < 1:
        raise ValueError(f"steps={steps} must be at least 1")
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4:
        raise ValueError(f"images {images.shape} must be float[B, H, W, C]")
    baselines = (jnp.zeros_like(images) if baselines is None
                 else jnp.broadcast_to(jnp.asarray(baselines, jnp.float32), images.shape))
    targets = {t: jnp.asarray(v, jnp.int32) for t, v in (targets or {}).items()}
    alphas = (jnp.arange(steps, dtype=jnp.float32) + 0.5) / steps  # midpoint rule
    chunk = _path_chunk(steps, len(images))
    total = None
    for start in range(0, steps, chunk):
        grads, used = _path_gradients(apply_fn, variables, images, baselines, targets,
                                      alphas[start:start + chunk], score)
        total = grads if total is None else jax.tree.map(jnp.add, total, grads)
    delta = images - baselines
    maps = {t: (g / steps * delta).sum(-1) for t, g in total.items()}
    return (maps, used) if return_targets else maps


@functools.partial(jax.jit, static_argnames="sigma")
def blurred(images: jax.Array, sigma: float) -> jax.Array:
    """Gaussian blur of float[B, H, W, C] per channel (edges padded by reflection): a
    baseline that removes detail but keeps the colours and layout of each image."""
    images = jnp.asarray(images, jnp.float32)
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = jnp.asarray(taps / taps.sum(), jnp.float32)
    _, h, w, _ = images.shape
    for axis, size in ((1, h), (2, w)):
        if size <= radius:  # reflection needs radius < size
            r = size - 1
            k = taps[radius - r: radius + r + 1]
            k = k / k.sum()
        else:
            r, k = radius, taps
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        x = jnp.pad(images, pad, mode="reflect")
        images = sum(k[i] * jax.lax.slice_in_dim(x, i, i + size, axis=axis)
                     for i in range(2 * r + 1))
    return images


# --- Grad-CAM ---------------------------------------------------------------------------


def module_outputs(model: nn.Module, variables, images: jax.Array,
                   method: str | None = None) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    """(module path, output shape) of every submodule ``__call__``, in the order they
    return, found by tracing shapes only (`jax.eval_shape`, no compile).

    A feature map of Grad-CAM is one whose shape is [B, h, w, K]; the last such in
    this list is the trunk's top map (for the ResNets the last block, for VGG-16
    conv5_3, for the study's CNN conv3).
    """
    found = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and isinstance(out, jax.Array):
            found.append((tuple(context.module.path), tuple(out.shape)))
        return out

    def run(v, x):
        with nn.intercept_methods(record):
            return model.apply(v, x, train=False, **({"method": method} if method else {}))

    jax.eval_shape(run, variables, images)
    return found


def last_feature_map(model: nn.Module, variables, images: jax.Array,
                     min_side: int = 2) -> tuple[str, ...]:
    """Path of the last submodule whose output is a spatial map float[B, h, w, K] with
    h, w >= ``min_side`` (a 1x1 map carries no location): the default Grad-CAM layer."""
    maps = [path for path, shape in module_outputs(model, variables, images)
            if len(shape) == 4 and shape[1] >= max(min_side, 2) and shape[2] >= max(min_side, 2)]
    if not maps:
        raise ValueError(f"the model has no submodule with a spatial output [B, h, w, K] of "
                         f"at least {max(min_side, 2)}x{max(min_side, 2)}: Grad-CAM has no map "
                         "to read")
    return maps[-1]


@functools.partial(jax.jit, static_argnames=("model", "layer", "map_shape", "score"))
def _grad_cam(model, layer, map_shape, variables, images, targets, score):
    def logits_and_map(perturbation):
        captured = []

        def perturb(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and tuple(context.module.path) == layer:
                out = out + perturbation.astype(out.dtype)
                captured.append(out)
            return out

        with nn.intercept_methods(perturb):
            logits = model.apply(variables, images, train=False)
        return logits, captured[0].astype(jnp.float32)

    zero = jnp.zeros(map_shape, jnp.float32)
    targets, grads, a = _per_task_grads(logits_and_map, zero, targets, score)  # a: [B, h, w, K]
    maps = {}
    for task, g in grads.items():
        weights = g.mean((1, 2), keepdims=True)  # [B, 1, 1, K]
        cam = jax.nn.relu((weights * a).sum(-1))  # [B, h, w]
        maps[task] = jax.image.resize(cam, (cam.shape[0], *images.shape[1:3]), "bilinear")
    return maps, targets


def grad_cam(model: nn.Module, variables, images: jax.Array, *,
             layer: Sequence[str] | None = None,
             targets: Mapping[str, jax.Array] | None = None,
             score: str = "logit", return_targets: bool = False):
    """Grad-CAM maps per task at a feature map of ``model``, upsampled to the image.

    Args:
      model: a flax linen module whose apply(variables, x, train=False) gives
        {task: logits float[B, K]} (as `models.create_model` makes).
      variables: its variables.
      images: float[B, H, W, C].
      layer: module path of the feature map, e.g. ("trunk", "layer4_2"); None: the
        last spatial map (`last_feature_map`). A head that does not read this map (the
        study's CNN reads conv1 or conv2 for some tasks) gets an all-zero map.
      targets: {task: int[B]}; a task left out explains its predicted class.
      score: "logit" or "log_prob".
      return_targets: also return the classes explained.

    Returns:
      {task: float32[B, H, W]} (non-negative: ReLU of the weighted channel sum,
      bilinearly resized), or (that, targets).
    """
    if score not in SCORES:
        raise ValueError(f"score={score!r}: use one of {SCORES}")
    images = jnp.asarray(images, jnp.float32)
    layer = tuple(layer) if layer is not None else last_feature_map(model, variables, images)
    shapes = [shape for path, shape in module_outputs(model, variables, images) if path == layer]
    if not shapes or len(shapes[0]) != 4:
        raise ValueError(f"layer {layer}: no submodule there returns a map [B, h, w, K]; "
                         "see module_outputs for the paths")
    targets = {t: jnp.asarray(v, jnp.int32) for t, v in (targets or {}).items()}
    maps, used = _grad_cam(model, layer, shapes[0], variables, images, targets, score)
    return (maps, used) if return_targets else maps


# --- summaries --------------------------------------------------------------------------


def region_share(maps: jax.Array, region: np.ndarray) -> np.ndarray:
    """Share of each map's absolute attribution that falls inside ``region``.

    Args:
      maps: float[B, H, W].
      region: bool[H, W] (one region for all) or bool[B, H, W] (one per image), e.g.
        the rows above a mask's top edge.

    Returns:
      float64[B] in [0, 1]; nan for an all-zero map.
    """
    a = np.abs(np.asarray(maps, np.float64))
    region = np.asarray(region, bool)
    if a.ndim != 3 or region.shape not in (a.shape[1:], a.shape):
        raise ValueError(f"maps {a.shape} must be [B, H, W] and region {region.shape} "
                         "[H, W] or [B, H, W]")
    total = a.sum((1, 2))
    inside = (a * region).sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


def mean_map(maps: jax.Array, normalize: bool = True) -> np.ndarray:
    """float64[H, W]: the mean of |map| over a set of maps float[B, H, W].

    With ``normalize`` each map is first divided by its total absolute attribution,
    so that every image weighs the same (an image with large logits would otherwise
    dominate); all-zero maps are skipped.
    """
    a = np.abs(np.asarray(maps, np.float64))
    if a.ndim != 3:
        raise ValueError(f"maps {a.shape} must be [B, H, W]")
    if normalize:
        total = a.sum((1, 2))
        a = a[total > 0] / total[total > 0, None, None]
    return a.mean(0) if len(a) else np.zeros(a.shape[1:])


def rows_above(height: int, width: int, row: int) -> np.ndarray:
    """bool[H, W], True on rows [0, row): e.g. the face above a mask whose top edge is at
    ``row`` (for per-image edges, stack one per image)."""
    region = np.zeros((height, width), bool)
    region[:max(0, row)] = True
    return region


def summarize_attributions(apply_fn: ApplyFn, variables, images: np.ndarray, *,
                           regions: Mapping[str, np.ndarray] | None = None,
                           batch_size: int = 32, steps: int = 32, score: str = "logit",
                           blur_sigma: float | None = None) -> dict:
    """Integrated gradients over a set of images, in fixed-size batches, summarised.

    Args:
      apply_fn, variables, steps, score: as `integrated_gradients`.
      images: float[N, H, W, C] in the model's input space.
      regions: {name: bool[H, W] or bool[N, H, W]} for `region_share`, e.g.
        {"upper half": rows_above(H, W, H // 2), "lower half": ~rows_above(...)}.
      batch_size: images per call.
      blur_sigma: None: black baseline; else a `blurred` copy of each image.

    Returns:
      {"mean_image": float64[H, W, C], "maps": {task: float64[H, W] (`mean_map`)},
      "shares": {task: {region: float64[N]}}, "areas": {region: mean share of the pixels
      (the share of a map spread evenly)}, "n": N}.
    """
    def explain(batch):
        baselines = None if blur_sigma is None else blurred(batch, blur_sigma)
        return integrated_gradients(apply_fn, variables, batch, baselines=baselines,
                                    steps=steps, score=score)

    return summarize(explain, images, regions, batch_size)


def summarize_grad_cam(model: nn.Module, variables, images: np.ndarray, *,
                       regions: Mapping[str, np.ndarray] | None = None,
                       batch_size: int = 32, score: str = "logit", min_side: int = 2) -> dict:
    """`grad_cam` (at the last spatial map of at least ``min_side`` x ``min_side``) over a
    set of images, summarised as `summarize_attributions`; one forward and backward pass
    per batch."""
    layer = last_feature_map(model, variables, jnp.asarray(images[:batch_size], jnp.float32),
                             min_side)
    return summarize(lambda batch: grad_cam(model, variables, batch, layer=layer, score=score),
                     images, regions, batch_size)


def explain_batches(explain: Callable[[np.ndarray], Mapping[str, jax.Array]],
                    images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """``explain`` (a batch float[B, H, W, C] -> {task: maps float[B, H, W]}) over
    ``images`` float[N, H, W, C] in batches of ``batch_size``: {task: float32[N, H, W]}.

    The last batch is padded to ``batch_size`` (pads dropped after) so that one
    compiled program serves every batch.
    """
    images = np.asarray(images, np.float32)
    if not len(images):
        raise ValueError("no images to explain")
    per_task: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        real = len(batch)
        for task, m in explain(pipeline.pad_rows(batch, batch_size)).items():
            per_task.setdefault(task, []).append(np.asarray(m, np.float32)[:real])
    return {t: np.concatenate(ms) for t, ms in per_task.items()}


def summarize(explain: Callable[[np.ndarray], Mapping[str, jax.Array]], images: np.ndarray,
              regions: Mapping[str, np.ndarray] | None, batch_size: int) -> dict:
    """`explain_batches`, summarised (see `summarize_attributions`)."""
    images = np.asarray(images, np.float32)
    maps = explain_batches(explain, images, batch_size)
    n = len(images)
    regions = _checked_regions(regions, n)
    shares = {t: {name: region_share(m, r) for name, r in regions.items()}
              for t, m in maps.items()}
    return {"mean_image": images.mean(0, dtype=np.float64), "n": n,
            "maps": {t: mean_map(m) for t, m in maps.items()}, "shares": shares,
            "areas": {name: float(r.mean()) for name, r in regions.items()}}


def _checked_regions(regions: Mapping[str, np.ndarray] | None, n: int) -> dict[str, np.ndarray]:
    regions = {name: np.asarray(r, bool) for name, r in (regions or {}).items()}
    for name, r in regions.items():
        if r.ndim == 3 and len(r) != n:
            raise ValueError(f"region {name!r} has {len(r)} masks for {n} images")
    return regions
