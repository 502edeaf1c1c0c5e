"""The saliency section of a run's report: shares with intervals by person, the unmasked
twins' control, the randomised-model check and integrated gradients beside Grad-CAM
(`controlled_shares`), whose markdown is `report.saliency_section`. The attribution methods
are `saliency`'s."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from fgmask_jax import models
from fgmask_jax.data import pipeline
from fgmask_jax.evaluation.saliency import (
    _checked_regions,
    explain_batches,
    grad_cam,
    integrated_gradients,
    last_feature_map,
    mean_map,
    region_share,
)

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
