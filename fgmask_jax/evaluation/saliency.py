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

A share of attribution in a region means little alone: `controlled_shares` gives the
report's shares intervals by person (`person_interval`), one rule for all-zero maps
(dropped from every number of their task, and counted), and three controls: the same
region on each image's unmasked twin (`twin_control`: the mask's pull against the face's
centre), the top layers re-initialised (`randomize_top`: Adebayo et al. 2018's sanity
check), and integrated gradients beside Grad-CAM (`agreement`); `format_section` writes
them as markdown.

Shapes: images float[B, H, W, C] in the model's input space (after
``pipeline.normalize``, where zeros are ImageNet's mean colour); maps float32[B, H, W].
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from fgmask_jax import models
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


# --- intervals and controls: the report's section ---------------------------------------
#
# One rule for all-zero maps (Grad-CAM's ReLU can zero a whole map; a head that does not
# read the chosen layer gives only zeros): such a map has no share, and its image is left
# out of every number of its task (shares, the pixel share beside them, twin pairs,
# comparisons), and counted.

CONFIDENCE = 0.95
NUM_SAMPLES = 1000
# The randomised model and integrated gradients run on a seeded subsample of the Grad-CAM
# images. On 2 busy CPU cores, integrated gradients of 32 images of 64 px through ResNet-18
# take about 3 s per 4 steps (a backward pass per step and task) and 8 s to compile. 8
# steps: on 16 of the demo's test images their shares of the mask region were within 0.2
# points of 64 steps' (16 steps: 0.1), the completeness error 3-9% (16: 3-4%).
CONTROL_IMAGES = 32
IG_STEPS = 8
RANDOMIZE_SEED = 0  # the fresh initialisation of the randomised top layers


def nonzero_maps(maps: np.ndarray) -> np.ndarray:
    """bool[N]: the maps float[N, H, W] with some finite non-zero attribution."""
    a = np.abs(np.asarray(maps, np.float64)).reshape(len(maps), -1)
    return np.isfinite(a).all(1) & (a.sum(1) > 0)


def person_interval(values: np.ndarray, subject_ids: np.ndarray, *,
                    num_samples: int = NUM_SAMPLES, seed: int = 0,
                    confidence: float = CONFIDENCE) -> dict:
    """The mean of the finite ``values`` with a percentile interval from a bootstrap over
    persons (`bootstrap.person_bootstrap`'s resampling, for a mean).

    Each of ``num_samples`` samples draws the P persons that have a finite value with
    replacement and averages all their values (a person drawn twice counts twice). On
    per-image differences of two measures of the same images it is the paired bootstrap.

    Args:
      values: float[N]; nan marks an image left out (e.g. the share of an all-zero map).
      subject_ids: int[N], the person of each image.

    Returns:
      {"value", "low", "high", "n" (finite values), "persons"}; value, low and high are
      nan when no value is finite.
    """
    v = np.asarray(values, np.float64)
    subjects = np.asarray(subject_ids)
    if v.ndim != 1 or v.shape != subjects.shape:
        raise ValueError(f"values {v.shape} and subject ids {subjects.shape} must be 1-D "
                         "and of one length")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must lie strictly between 0 and 1")
    keep = np.isfinite(v)
    v, subjects = v[keep], subjects[keep]
    if not len(v):
        return {"value": np.nan, "low": np.nan, "high": np.nan, "n": 0, "persons": 0}
    persons, ix = np.unique(subjects, return_inverse=True)
    p = len(persons)
    sums, counts = np.bincount(ix, v, p), np.bincount(ix, minlength=p).astype(np.float64)
    draws = np.random.default_rng(seed).multinomial(p, np.full(p, 1.0 / p), size=num_samples)
    means = (draws @ sums) / (draws @ counts)  # every drawn person has a value
    low, high = np.percentile(means, 100 * np.array([(1 - confidence) / 2,
                                                     (1 + confidence) / 2]))
    return {"value": float(v.mean()), "low": float(low), "high": float(high),
            "n": int(len(v)), "persons": int(p)}


def share_intervals(maps: Mapping[str, np.ndarray], regions: Mapping[str, np.ndarray],
                    subject_ids: np.ndarray, *, seed: int = 0,
                    num_samples: int = NUM_SAMPLES) -> dict:
    """Per task and region, the mean share of attribution [interval by person] and the
    region's share of the pixels of the same images (what a map spread evenly gives).

    Args:
      maps: {task: float[N, H, W]}.
      regions: {name: bool[H, W] or bool[N, H, W]}.
      subject_ids: int[N].

    Returns:
      {task: {"images": N, "dropped": all-zero maps (left out of every number of the
      task), "regions": {name: `person_interval`'s dict plus "pixels"}}}.
    """
    subject_ids = np.asarray(subject_ids)
    regions = _checked_regions(regions, len(subject_ids))
    out = {}
    for task, m in maps.items():
        m = np.asarray(m)
        if len(m) != len(subject_ids):
            raise ValueError(f"{task}: {len(m)} maps for {len(subject_ids)} subject ids")
        kept = nonzero_maps(m)
        rows = {}
        for name, r in regions.items():
            shares = np.where(kept, region_share(m, r), np.nan)
            rows[name] = person_interval(shares, subject_ids, seed=seed,
                                         num_samples=num_samples)
            area = np.broadcast_to(r, m.shape).mean((1, 2))
            rows[name]["pixels"] = float(area[kept].mean()) if kept.any() else np.nan
        out[task] = {"images": int(len(m)), "dropped": int((~kept).sum()), "regions": rows}
    return out


def twin_control(maps: Mapping[str, np.ndarray], twin_maps: Mapping[str, np.ndarray],
                 regions: Mapping[str, np.ndarray], subject_ids: np.ndarray,
                 has_twin: np.ndarray | None = None, *, seed: int = 0,
                 num_samples: int = NUM_SAMPLES) -> dict:
    """Each region's share on the masked images and, in the same region, on their unmasked
    twins, and the paired difference (masked - twin): how much of a region's share comes
    from the mask rather than from where the region lies on the face.

    Args:
      maps: {task: float[N, H, W]}, the masked images' maps.
      twin_maps: {task: float[N, H, W]}, row i the same model's map of image i's twin.
      regions: {name: bool[H, W] or bool[N, H, W]}: the masked images' regions, used for
        both maps of a pair.
      subject_ids: int[N].
      has_twin: bool[N], False for an image without a twin (its row of ``twin_maps`` is
        ignored); None: all have one.

    Returns:
      {task: {"pairs": pairs counted, "dropped": pairs with an all-zero map,
      "without_twin": int, "regions": {name: {"masked", "twin", "difference"}}}}, each a
      `person_interval` over the same pairs (the difference's is the paired bootstrap).
    """
    subject_ids = np.asarray(subject_ids)
    n = len(subject_ids)
    has_twin = np.ones(n, bool) if has_twin is None else np.asarray(has_twin, bool)
    regions = _checked_regions(regions, n)
    out = {}
    for task, m in maps.items():
        t = np.asarray(twin_maps[task])
        if len(m) != n or t.shape != np.shape(m) or has_twin.shape != (n,):
            raise ValueError(f"{task}: maps {np.shape(m)}, twin maps {t.shape}, has_twin "
                             f"{has_twin.shape} and {n} subject ids do not match")
        both = nonzero_maps(m) & nonzero_maps(np.where(has_twin[:, None, None], t, 0.0))
        rows = {}
        for name, r in regions.items():
            a = np.where(both, region_share(m, r), np.nan)
            b = np.where(both, region_share(t, r), np.nan)
            rows[name] = {k: person_interval(v, subject_ids, seed=seed, num_samples=num_samples)
                          for k, v in (("masked", a), ("twin", b), ("difference", a - b))}
        out[task] = {"pairs": int(both.sum()), "dropped": int((has_twin & ~both).sum()),
                     "without_twin": int((~has_twin).sum()), "regions": rows}
    return out


def twin_rows(photo_ids: np.ndarray, twin_photo_ids: np.ndarray) -> np.ndarray:
    """int64[N]: for each image's ``photo_ids`` entry, the index in ``twin_photo_ids`` of its
    unmasked twin (the first, if several), -1 where there is none."""
    photo_ids, twin_photo_ids = np.asarray(photo_ids), np.asarray(twin_photo_ids)
    order = np.argsort(twin_photo_ids, kind="stable")
    sorted_ids = twin_photo_ids[order]
    at = np.searchsorted(sorted_ids, photo_ids)
    found = (at < len(sorted_ids)) & (sorted_ids[np.minimum(at, len(sorted_ids) - 1)]
                                      == photo_ids)
    return np.where(found, order[np.minimum(at, len(order) - 1)], -1).astype(np.int64)


def top_modules(model_name: str, variables) -> list[tuple[str, ...]]:
    """The paths `randomize_top` re-initialises for the model ``model_name`` (a name of
    `models.MODELS`): ("heads",) and the trunk's modules of its last part
    (`models.trunk_parts`: ResNet's last stage, VGG-16's fc7, the study CNN's conv3)."""
    last = models.trunk_parts(model_name)[-1]
    trunk = variables["params"].get("trunk", {})
    return [("heads",), *(("trunk", name) for name in trunk
                          if models.part_of(model_name, name) == last)]


def randomize_top(variables, modules: Sequence[Sequence[str]],
                  seed: int = RANDOMIZE_SEED) -> dict:
    """``variables`` with every leaf under ``modules`` (paths such as ("heads",) or
    ("trunk", "layer4_1"), in every collection) drawn afresh from
    ``numpy.random.default_rng(seed)``: kernels from a He normal (sd sqrt(2 / fan-in),
    fan-in the product of all but the last axis), BatchNorm scales and running variances
    1, biases, BatchNorm shifts and running means 0.

    The model-randomisation test of Adebayo et al. 2018 ("Sanity Checks for Saliency
    Maps"), top layers randomised: a method whose maps do not change is not reading what
    the model learnt. Drawn here rather than by ``model.init``, whose compiled init costs
    seconds, and whose zero-initialised last BatchNorm scale of each residual block would
    leave the randomised blocks identities. Leaves keep their type (numpy or jax) and
    dtype, so that a program compiled for ``variables`` serves the result too.
    """
    modules = [tuple(p) for p in modules]
    rng = np.random.default_rng(seed)
    out, replaced = {}, set()
    for collection, tree in variables.items():
        flat = traverse_util.flatten_dict(tree)
        for key in sorted(flat):  # a fixed order of draws
            under = [p for p in modules if key[:len(p)] == p]
            if not under:
                continue
            leaf = flat[key]
            shape, dtype = np.shape(leaf), np.asarray(leaf).dtype
            if key[-1] == "kernel":
                fan_in = int(np.prod(shape[:-1])) or 1
                new = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
            elif key[-1] in ("scale", "var"):
                new = np.ones(shape)
            else:
                new = np.zeros(shape)
            new = new.astype(dtype)
            flat[key] = new if isinstance(leaf, np.ndarray) else jnp.asarray(new)
            replaced.update(under)
        out[collection] = traverse_util.unflatten_dict(flat)
    if missing := [p for p in modules if p not in replaced]:
        raise ValueError(f"no variables under {missing}: see the model's parameter tree")
    return out


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """float64[N, K]: each row's ranks, tied values sharing their mean rank."""
    order = np.argsort(x, axis=1, kind="stable")
    s = np.take_along_axis(x, order, 1)
    k = x.shape[1]
    pos = np.broadcast_to(np.arange(k), x.shape)
    starts = np.ones(x.shape, bool)
    starts[:, 1:] = s[:, 1:] != s[:, :-1]
    ends = np.ones(x.shape, bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, pos, k)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty(x.shape)
    np.put_along_axis(ranks, order, (first + last) / 2.0, 1)
    return ranks


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64[N]: Spearman's rank correlation of |a[i]| and |b[i]| over the pixels (ties
    at their mean rank) of two sets of maps float[N, H, W]; nan where either map is
    constant (all-zero)."""
    a, b = (np.abs(np.asarray(m, np.float64)).reshape(len(m), -1) for m in (a, b))
    if a.shape != b.shape:
        raise ValueError(f"maps {a.shape} and {b.shape} differ in shape")
    ra, rb = (r - r.mean(1, keepdims=True) for r in (_average_ranks(a), _average_ranks(b)))
    denom = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(1) / denom, np.nan)


def side_of_pixels(row: Mapping[str, float]) -> str:
    """Where a share's interval lies against the region's pixel share: "above", "below",
    "within" (the interval holds it), or "-" with no interval."""
    low, high, pixels = row["low"], row["high"], row["pixels"]
    if not np.isfinite([low, high, pixels]).all():
        return "-"
    return "above" if low > pixels else "below" if high < pixels else "within"


def agreement(a: Mapping[str, dict], b: Mapping[str, dict]) -> dict:
    """Per task and region of two `share_intervals` tables on the same images: whether the
    intervals overlap, each one's `side_of_pixels`, and "agree" (overlap and one side)."""
    out = {}
    for task in a:
        out[task] = {}
        for name, ra in a[task]["regions"].items():
            rb = b[task]["regions"][name]
            overlap = bool(ra["low"] <= rb["high"] and rb["low"] <= ra["high"])
            sides = (side_of_pixels(ra), side_of_pixels(rb))
            out[task][name] = {"overlap": overlap, "sides": list(sides),
                               "agree": overlap and sides[0] == sides[1] != "-"}
    return out


def controlled_shares(model: nn.Module, variables, images: np.ndarray,
                      subject_ids: np.ndarray, regions: Mapping[str, np.ndarray], *,
                      model_name: str, twins: tuple[np.ndarray, np.ndarray] | str,
                      batch_size: int = 32, seed: int = 0, min_side: int = 4,
                      control_images: int = CONTROL_IMAGES, ig_steps: int = IG_STEPS,
                      ig_baseline: tuple[str, np.ndarray | None] = ("mean colour", None),
                      randomize_seed: int = RANDOMIZE_SEED,
                      num_samples: int = NUM_SAMPLES) -> tuple[dict, dict[str, np.ndarray]]:
    """Grad-CAM's shares of attribution per region, with intervals and three controls.

    1. Grad-CAM at the last feature map of at least ``min_side`` x ``min_side``: each
       task's shares [interval by person] and the regions' pixel shares, on all images.
    2. Twins, on all images: the same on each image's unmasked twin, in the masked
       image's regions, and the paired difference (`twin_control`).
    3. Model randomisation, on a subsample of ``control_images`` (drawn by ``seed``): the
       heads and the trunk's last part re-initialised (`top_modules`, `randomize_top`);
       shares beside the trained model's on the same images, and each image's rank
       correlation of the two maps.
    4. Integrated gradients on the same subsample, ``ig_steps`` steps at the input's
       resolution, beside Grad-CAM's shares on the same images (`agreement`).

    Args:
      model, variables: a `models.create_model` model and its variables.
      images: float[N, H, W, C] in the model's input space.
      subject_ids: int[N], for the bootstrap by person (seeded by ``seed``).
      regions: {name: bool[H, W] or bool[N, H, W]}.
      model_name: the model's name in `models.MODELS` (for `top_modules`).
      twins: (twin images float[M, H, W, C], rows int[N]: the row of image i's twin there,
        -1 for none); or a sentence saying why there are none.
      control_images: the subsample of controls 3 and 4; 0 skips them.
      ig_baseline: (its name for the report, float broadcastable to [H, W, C] in the input
        space, or None for zeros there).

    Returns:
      (numbers, JSON-ready after `jsonable`; {task: `mean_map` of the Grad-CAM maps}).
    """
    x = np.asarray(images, np.float32)
    subject_ids = np.asarray(subject_ids)
    n = len(x)
    regions = _checked_regions(regions, n)
    batch_size = max(1, min(batch_size, n))
    layer = last_feature_map(model, variables, jnp.asarray(x[:batch_size]), min_side)
    seconds = {}

    def cam(v, imgs):
        # Always full batches (padded): one compiled program for every set of images.
        return explain_batches(lambda b: grad_cam(model, v, b, layer=layer), imgs, batch_size)

    def shares(maps, regs=regions, subjects=subject_ids):
        return share_intervals(maps, regs, subjects, seed=seed, num_samples=num_samples)

    began = time.perf_counter()
    maps = cam(variables, x)
    numbers = {"method": "Grad-CAM", "layer": "/".join(layer), "images": n,
               "persons": int(len(np.unique(subject_ids))), "seed": seed,
               "confidence": CONFIDENCE, "num_samples": num_samples, "regions": list(regions),
               "grad_cam": shares(maps)}
    seconds["grad_cam"] = time.perf_counter() - began

    began = time.perf_counter()
    if isinstance(twins, str):
        numbers["twins"] = {"absent": twins}
    else:
        twin_images, rows = np.asarray(twins[0], np.float32), np.asarray(twins[1])
        has_twin = rows >= 0
        twin_maps = {t: m[np.where(has_twin, rows, 0)]
                     for t, m in cam(variables, twin_images).items()}
        numbers["twins"] = twin_control(maps, twin_maps, regions, subject_ids, has_twin,
                                        seed=seed, num_samples=num_samples)
    seconds["twins"] = time.perf_counter() - began

    if k := min(control_images, n):
        rows = np.sort(np.random.default_rng(seed).choice(n, k, replace=False))
        sub = {name: r[rows] if r.ndim == 3 else r for name, r in regions.items()}
        subjects = subject_ids[rows]
        trained = {t: m[rows] for t, m in maps.items()}
        numbers["controls"] = {"images": int(k), "persons": int(len(np.unique(subjects)))}

        began = time.perf_counter()
        modules = top_modules(model_name, variables)
        randomized = cam(randomize_top(variables, modules, randomize_seed), x[rows])
        numbers["randomized"] = {
            "modules": ["/".join(p) for p in modules], "seed": randomize_seed,
            "trained": shares(trained, sub, subjects),
            "grad_cam": shares(randomized, sub, subjects),
            "rank_correlation": {t: person_interval(rank_correlation(trained[t], randomized[t]),
                                                    subjects, seed=seed,
                                                    num_samples=num_samples)
                                 for t in maps}}
        seconds["randomized"] = time.perf_counter() - began

        began = time.perf_counter()
        name, baseline = ig_baseline
        ig = explain_batches(
            lambda b: integrated_gradients(model.apply, variables, b, baselines=baseline,
                                           steps=ig_steps), x[rows], min(batch_size, k))
        # Compared on the same images: a pair with an all-zero map leaves both tables.
        both = {t: nonzero_maps(trained[t]) & nonzero_maps(m) for t, m in ig.items()}
        ig_table = shares({t: np.where(both[t][:, None, None], m, 0) for t, m in ig.items()},
                          sub, subjects)
        cam_table = shares({t: np.where(both[t][:, None, None], trained[t], 0) for t in ig},
                           sub, subjects)
        numbers["integrated_gradients"] = {
            "steps": ig_steps, "baseline": name, "shares": ig_table,
            "grad_cam_same_images": cam_table, "agreement": agreement(cam_table, ig_table)}
        seconds["integrated_gradients"] = time.perf_counter() - began
    numbers["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return numbers, {t: mean_map(m) for t, m in maps.items()}


def jsonable(value):
    """``value`` with numpy scalars as Python numbers and nan as None (for JSON)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# --- the section's markdown -------------------------------------------------------------


def _share(row: Mapping[str, float], pixels: bool = False) -> str:
    if not np.isfinite(row["value"]):
        return "-"
    cell = f"{row['value']:.1%} [{100 * row['low']:.1f}, {100 * row['high']:.1f}]"
    return cell + (f" ({row['pixels']:.1%})" if pixels else "")


def _points(row: Mapping[str, float]) -> str:
    if not np.isfinite(row["value"]):
        return "-"
    return (f"{100 * row['value']:+.1f} [{100 * row['low']:+.1f}, "
            f"{100 * row['high']:+.1f}]")


def _share_table(table: dict, regions: Sequence[str]) -> list[str]:
    lines = ["| task | images | all-zero | " + " | ".join(
        f"share {r} [95% CI] (pixels)" for r in regions) + " |",
        "|---|---:|---:|" + "---:|" * len(regions)]
    for task, t in table.items():
        lines.append(f"| {task} | {t['images']} | {t['dropped']} | " + " | ".join(
            _share(t["regions"][r], pixels=True) for r in regions) + " |")
    return lines


def format_section(numbers: dict, figure: str, split: str = "test") -> str:
    """The report's markdown section from `controlled_shares`' numbers; ``figure`` is the
    file name of the mean maps' figure beside report.md."""
    regions = numbers["regions"]
    parts = [
        f"## Where the model looks ({split})", "",
        f"Grad-CAM of each task head (the predicted class) at `{numbers['layer']}` over "
        f"{numbers['images']} {split} images of {numbers['persons']} persons, drawn at "
        "random (`config.split_seed`). The figure: each head's mean absolute map (each "
        "image's map normalised to sum 1) over the mean image.", "",
        f"![{split} saliency]({figure})", "",
        "Share of each image's absolute attribution inside each region, mean over the "
        "images [95% interval from a bootstrap of persons]; in brackets after it the "
        "region's share of the pixels of the same images, what a map spread evenly would "
        "give. An all-zero map has no share: its image is left out of every number of its "
        "task in this section (shares, pixel shares, pairs, comparisons) and counted under "
        "\"all-zero\".", "", *_share_table(numbers["grad_cam"], regions), ""]
    parts += _twin_part(numbers["twins"], regions)
    if "controls" in numbers:
        controls = numbers["controls"]
        parts += [
            "### Controls on a subsample", "",
            f"The two checks below run on {controls['images']} of the images "
            f"({controls['persons']} persons), drawn by `config.split_seed` (integrated "
            "gradients cost a backward pass per path step and task), and compare on those "
            "images only.", ""]
        parts += _randomized_part(numbers["randomized"], regions)
        parts += _ig_part(numbers["integrated_gradients"], regions)
    seconds = numbers.get("seconds", {})
    parts += [f"Seconds: {', '.join(f'{k} {v:.1f}' for k, v in seconds.items())}. "
              "Numbers also in saliency.json.", ""]
    return "\n".join(parts)


def _twin_part(twins: dict, regions: Sequence[str]) -> list[str]:
    head = ["### Control: the unmasked twins", ""]
    if "absent" in twins:
        return head + [
            f"No control by unmasked twins: {twins['absent']} A smooth map centred on the "
            "face puts more than its pixel share on any central region, mask or not, so the "
            "shares above cannot tell the mask's pull from the face's centre.", ""]
    lines = head + [
        "The same model's Grad-CAM on each image's unmasked twin (the photo before its mask "
        "was drawn; `photo_id` links them), its shares taken in the masked image's regions. "
        "The difference (with the mask - twin, per pair, points; paired bootstrap of "
        "persons) is what the mask itself adds to a region's share: an interval above 0 "
        "on the mask is a pull the face's centre does not explain. Pairs: images with a "
        "twin and two non-zero maps.", "",
        "| task | region | pairs | with the mask | unmasked twin | difference (points) |",
        "|---|---|---:|---:|---:|---:|"]
    for task, t in twins.items():
        for r in regions:
            row = t["regions"][r]
            lines.append(f"| {task} | {r} | {t['pairs']} | {_share(row['masked'])} | "
                         f"{_share(row['twin'])} | {_points(row['difference'])} |")
    without = {t: v["without_twin"] for t, v in twins.items() if v["without_twin"]}
    dropped = {t: v["dropped"] for t, v in twins.items() if v["dropped"]}
    if without or dropped:
        lines += ["", f"Images without a twin: {max(without.values(), default=0)}; pairs "
                  "left out for an all-zero map: "
                  + (", ".join(f"{t} {k}" for t, k in dropped.items()) or "none") + "."]
    return lines + [""]


def _randomized_part(randomized: dict, regions: Sequence[str]) -> list[str]:
    trained = randomized["trained"]
    lines = [
        "#### Randomised top layers", "",
        f"Grad-CAM of a copy of the model whose {', '.join(randomized['modules'])} are "
        f"re-initialised (seed {randomized['seed']}; Adebayo et al. 2018's model "
        "randomisation). If a method reads what the model learnt, its maps change: shares "
        "move and each image's map correlates little with the trained one's (Spearman rank "
        "correlation over the pixels, mean [95% CI]). Maps that stay put would come from "
        "the image and the architecture, not from the training.", "",
        "| task | all-zero (trained / randomised) | " + " | ".join(
            f"share {r}: trained / randomised" for r in regions) + " | rank correlation |",
        "|---|---:|" + "---:|" * len(regions) + "---:|"]
    for task, t in randomized["grad_cam"].items():
        rho = randomized["rank_correlation"][task]
        rho_cell = (f"{rho['value']:.2f} [{rho['low']:.2f}, {rho['high']:.2f}]"
                    if np.isfinite(rho["value"]) else "-")
        lines.append(
            f"| {task} | {trained[task]['dropped']} / {t['dropped']} | " + " | ".join(
                f"{_share(trained[task]['regions'][r])} / {_share(t['regions'][r])}"
                for r in regions) + f" | {rho_cell} |")
    return lines + [""]


def _ig_part(ig: dict, regions: Sequence[str]) -> list[str]:
    lines = [
        "#### A second method: integrated gradients", "",
        f"Integrated gradients ({ig['steps']} steps of the path from a {ig['baseline']} "
        "image, midpoint rule, at the input's full resolution) beside Grad-CAM on the same "
        "images. Agree: the two intervals overlap and put the region on the same side of "
        "its pixel share (above, within or below). An image with an all-zero map from "
        "either method is left out of both.", "",
        "| task | region | Grad-CAM | integrated gradients | pixels | agree? |",
        "|---|---|---:|---:|---:|---|"]
    for task, t in ig["shares"].items():
        for r in regions:
            a = ig["grad_cam_same_images"][task]["regions"][r]
            b, verdict = t["regions"][r], ig["agreement"][task][r]
            how = ("overlap" if verdict["overlap"] else "disjoint") + "; " + (
                verdict["sides"][0] if verdict["sides"][0] == verdict["sides"][1]
                else " / ".join(verdict["sides"]))
            pixels = f"{b['pixels']:.1%}" if np.isfinite(b["pixels"]) else "-"
            lines.append(f"| {task} | {r} | {_share(a)} | {_share(b)} | {pixels} | "
                         f"{'yes' if verdict['agree'] else 'no'} ({how}) |")
    dropped = {t: v["dropped"] for t, v in ig["shares"].items() if v["dropped"]}
    if dropped:
        lines += ["", "Images left out for an all-zero map (either method): "
                  + ", ".join(f"{t} {k}" for t, k in dropped.items()) + "."]
    return lines + [""]


def load_twins(dataset: str, data_dir: str | None, source, indices: np.ndarray,
               image_size: int) -> tuple[np.ndarray, np.ndarray] | str:
    """The unmasked twins of ``source[indices]`` (``photo_id`` links a masked copy to its
    twin, in the split `pipeline.unmasked` names): (uint8[M, S, S, 3] the distinct twins,
    int64[N] each image's row there, -1 for none, e.g. an unmasked image), or a sentence
    saying why there are none (a dataset without twins: only ``synthetic_masked_faces/
    paired`` and ``fgnet_paired`` have them)."""
    info, split = getattr(source, "dataset_info", None), getattr(source, "split", None)
    if info is None or split is None:
        return "the test images come from no dataset split whose twins could be looked up."
    if all(s.startswith("unmasked_") for s in str(split).split("+")):
        return f"the test images (`{split}`) are unmasked twins themselves."
    twin_split = pipeline.unmasked(str(split))
    if any(s not in info.splits for s in twin_split.split("+")):
        return (f"`{dataset}` has none (`synthetic_masked_faces/paired` and `fgnet_paired` "
                "do).")
    records = source.__getitems__([int(i) for i in indices])
    photo_ids = np.asarray([r["photo_id"] for r in records])
    unmasked = np.asarray([(r["mask_kind"].decode() if isinstance(r["mask_kind"], bytes)
                            else str(r["mask_kind"])) == "none" for r in records], bool)
    twin_source = pipeline.open_split(dataset, twin_split, data_dir)
    rows = twin_rows(photo_ids, pipeline.read_labels(twin_source)["photo_id"])
    rows[unmasked] = -1
    needed = np.unique(rows[rows >= 0])
    if not len(needed):
        return f"none of these images has a twin in `{dataset}`'s `{twin_split}`."
    twins = pipeline.load_all(twin_source, needed, image_size)["image"]
    return twins, np.where(rows >= 0, np.searchsorted(needed, rows), -1)
