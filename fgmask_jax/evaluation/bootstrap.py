"""Confidence intervals by person: a bootstrap that resamples persons, not images.

Images of one person are not independent (the same face, often copies of one
photo under other masks), so an interval from resampling images is too narrow.
`person_bootstrap` draws persons with replacement; every image of a drawn person
comes along, and a person drawn twice counts twice. `difference_test` does the
same for the difference of two accuracies on the same (or overlapping) persons.

Several training seeds (the same test images predicted by K models that differ only in
``config.seed``) add the variance of training: each bootstrap sample then also draws K
seeds with replacement, and its value is the mean over the drawn seeds of their metric
on the drawn persons (a two-level bootstrap: persons, then training runs). The point
value is the mean over the seeds, and ``sd`` their spread. With one seed every number is
exactly the one-level bootstrap's.

Vectorised: one confusion matrix per person, int64[P, C, C]; a bootstrap sample is
a vector of draw counts per person, int64[P] (multinomial, summing to P), and the
sample's confusion matrix is ``counts @ per_person`` -> int64[S, C, C] for S samples
in one matrix product. 1,000 samples over 3,404 images take milliseconds.
"""

from __future__ import annotations

import numpy as np

from fgmask_jax.evaluation import metrics as metrics_lib

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def metrics_from_confusions(cms: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro-F1 of many confusion matrices at once.

    Args:
      cms: int or float[..., C, C], row = true class, column = predicted class.

    Returns:
      {metric: float64[...]} with the definitions of `metrics.summarize`: balanced
      accuracy averages recall over the classes present in the labels; macro-F1
      averages F1 over the classes present in labels or predictions. nan where a
      matrix is empty.
    """
    cms = np.asarray(cms, np.float64)
    n = cms.sum((-2, -1))
    support, predicted = cms.sum(-1), cms.sum(-2)
    correct = np.diagonal(cms, axis1=-2, axis2=-1)
    present = support > 0
    seen = present | (predicted > 0)
    recall = np.divide(correct, support, out=np.zeros_like(correct), where=present)
    precision = np.divide(correct, predicted, out=np.zeros_like(correct), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(correct), where=denom > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "accuracy": np.where(n > 0, correct.sum(-1) / n, np.nan),
            "balanced_accuracy": np.where(
                n > 0, (recall * present).sum(-1) / present.sum(-1), np.nan),
            "macro_f1": np.where(n > 0, (f1 * seen).sum(-1) / seen.sum(-1), np.nan),
        }


def per_person_confusions(y_true: np.ndarray, y_pred: np.ndarray, subject_ids: np.ndarray,
                          num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(persons int64[P], confusion matrices int64[P, C, C]) of each person's images.

    Args:
      y_true, y_pred, subject_ids: int[N], one entry per image.
      num_classes: C; labels and predictions must lie in [0, C).
    """
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    subject_ids = np.asarray(subject_ids)
    if not y_true.shape == y_pred.shape == subject_ids.shape or y_true.ndim != 1:
        raise ValueError(
            f"labels {y_true.shape}, predictions {y_pred.shape} and subject ids "
            f"{subject_ids.shape} must be 1-D and of one length"
        )
    for name, y in (("labels", y_true), ("predictions", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}); got {y.min()}..{y.max()}")
    persons, person_ix = np.unique(subject_ids, return_inverse=True)
    flat = (person_ix * num_classes + y_true) * num_classes + y_pred
    cms = np.bincount(flat, minlength=len(persons) * num_classes**2)
    return persons, cms.reshape(len(persons), num_classes, num_classes)


def person_bootstrap(y_true: np.ndarray, y_pred: np.ndarray, subject_ids: np.ndarray,
                     num_classes: int, *, num_samples: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> dict:
    """Point values and percentile intervals of accuracy, balanced accuracy and macro-F1.

    Each of ``num_samples`` bootstrap samples draws P persons with replacement from
    the P persons in ``subject_ids`` and pools all their images (twice for a person
    drawn twice); with K training seeds it also draws K of them with replacement and
    averages their values. The interval is the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` percentiles of the samples' values; the point value is that
    of all images (as `metrics.summarize` computes it; with seeds, the mean over them),
    not the samples' mean. Percentile intervals are not forced to contain the point
    value (for a strongly skewed statistic on very few persons they may not), and none
    is widened or shifted here.

    Args:
      y_true: int[N] labels in [0, num_classes).
      y_pred: int[N] predictions, or int[K, N]: those of K training seeds.
      subject_ids: int[N], the person of each image.
      num_classes: C.
      num_samples: bootstrap samples S.
      seed: of numpy's default_rng; the same seed gives the same intervals.
      confidence: in (0, 1).

    Returns:
      {metric: {"value", "low", "high", "sd"}} for metric in METRICS (sd: the standard
      deviation over the seeds' values, 0 for one seed), plus "n" (images), "persons" (P),
      "seeds" (K), "num_samples", "confidence" and "majority_rate".

    Raises:
      ValueError: no images, mismatched shapes, labels out of range, or a bad
        ``num_samples`` / ``confidence``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must lie strictly between 0 and 1")
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be at least 1")
    y_true = np.asarray(y_true, np.int64)
    by_seed = np.atleast_2d(np.asarray(y_pred, np.int64))  # int64[K, N]
    confusions = [per_person_confusions(y_true, p, subject_ids, num_classes) for p in by_seed]
    persons = confusions[0][0]
    if not len(persons):
        raise ValueError("no images: a bootstrap needs at least one prediction")
    summaries = [metrics_lib.summarize(y_true, p, num_classes) for p in by_seed]
    p, k = len(persons), len(by_seed)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(p, np.full(p, 1.0 / p), size=num_samples)  # int64[S, P]
    values = {m: np.empty((k, num_samples)) for m in METRICS}
    for i, (_, cms) in enumerate(confusions):
        sampled = counts @ cms.reshape(p, -1)  # int64[S, C*C]
        for m, v in metrics_from_confusions(
                sampled.reshape(num_samples, num_classes, num_classes)).items():
            values[m][i] = v
    # Drawn after the persons, so that one seed reproduces the one-level bootstrap.
    drawn = rng.integers(0, k, (num_samples, k)) if k > 1 else np.zeros((num_samples, 1), int)
    tails = 100 * np.array([(1 - confidence) / 2, (1 + confidence) / 2])
    out = {"n": summaries[0]["n"], "persons": p, "seeds": k, "num_samples": num_samples,
           "confidence": confidence, "majority_rate": summaries[0]["majority_rate"]}
    for metric in METRICS:
        per_seed = np.array([s[metric] for s in summaries])
        samples = values[metric][drawn, np.arange(num_samples)[:, None]].mean(1)
        low, high = np.nanpercentile(samples, tails)
        out[metric] = {"value": float(per_seed.mean()), "low": float(low), "high": float(high),
                       "sd": float(per_seed.std(ddof=1)) if k > 1 else 0.0}
    return out


# --- differences, with a p-value and per-photo weighting; many intervals at once --------


def difference_test(a: tuple, b: tuple, *, num_samples: int = 1000, seed: int = 0,
                    confidence: float = 0.95, same_models: bool = False) -> dict:
    """Accuracy of ``a`` minus that of ``b``, with a percentile interval from a bootstrap
    over the persons of both (and the training seeds of each side), a two-sided bootstrap
    p-value, and optionally each photo counted once.

    ``a``, ``b``: (correct bool[N] or bool[K, N] for K training seeds, subject_ids int[N])
    of two sets of predictions, on the same persons or on overlapping ones. Each sample
    draws persons with replacement from the union of the two sets' persons and counts a
    drawn person's images in both sets (in neither where the person is absent), so a
    person who is in both varies both accuracies together: on the same persons this is
    the paired bootstrap of the difference.

    Or (correct, subject_ids, photo_ids int[N]): then each photo weighs 1 however many
    images (masked copies) it has on its side, so an accuracy is the mean over photos of
    each photo's share of correct images; where both sides hold the same photos, the
    difference is the mean of the per-photo differences (paired by photo). A person's
    photos and images all come with them.

    Seeds: each sample also draws each side's K seeds with replacement and compares their
    mean accuracies; ``same_models=True`` says the two sides are the same K models (tested
    on two test sets), so one draw of seeds serves both and the difference stays paired by
    model.

    Returns:
      {"value", "low", "high", "p"}: fractions; p = 2 * min(share of resampled differences
      <= 0, share >= 0), at most 1 (`bootstrap_p_value`).

    Raises:
      ValueError: a side without predictions, photo ids on one side only, arrays of
        different lengths, or ``same_models`` with different numbers of seeds.
    """
    (ca, sa, wa), (cb, sb, wb) = (_weighted_side(side, name) for side, name in
                                  ((a, "a"), (b, "b")))
    if (len(a) == 3) != (len(b) == 3):
        raise ValueError("photo ids on one side only: give both sides photo ids, or neither")
    if same_models and len(ca) != len(cb):
        raise ValueError(f"same_models: {len(ca)} and {len(cb)} seeds; the same models "
                         "have as many seeds on both sides")
    persons = np.union1d(sa, sb)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(persons), np.full(len(persons), 1.0 / len(persons)),
                             size=num_samples).T  # int64[P, S]
    sampled_a = _sampled_accuracy(ca, sa, wa, persons, counts)  # float[K, S]
    sampled_b = _sampled_accuracy(cb, sb, wb, persons, counts)
    if same_models and len(ca) > 1:
        drawn = rng.integers(0, len(ca), (num_samples, len(ca)))
        rows = np.arange(num_samples)[:, None]
        diffs = (sampled_a[drawn, rows] - sampled_b[drawn, rows]).mean(1)
    else:
        diffs = _seed_mean(sampled_a, rng) - _seed_mean(sampled_b, rng)
    tails = 100 * np.array([(1 - confidence) / 2, (1 + confidence) / 2])
    low, high = np.nanpercentile(diffs, tails)
    value = _weighted_mean(ca, wa).mean() - _weighted_mean(cb, wb).mean()
    return {"value": float(value), "low": float(low), "high": float(high),
            "p": bootstrap_p_value(diffs)}


def photo_accuracy(correct: np.ndarray, subject_ids: np.ndarray, photo_ids: np.ndarray, *,
                   num_samples: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Accuracy with each photo counted once (the mean over photos of each photo's share
    of correct images), with a percentile interval from a bootstrap over persons (their
    photos nested in them) and, with K seeds, over the seeds.

    Args:
      correct: bool[N], or bool[K, N] for K training seeds.
      subject_ids, photo_ids: int[N].

    Returns:
      {"value", "low", "high", "sd", "n" (images), "photos", "persons", "seeds"}.
    """
    c, s, w = _weighted_side((correct, subject_ids, photo_ids), "correct")
    persons = np.unique(s)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(persons), np.full(len(persons), 1.0 / len(persons)),
                             size=num_samples).T
    samples = _seed_mean(_sampled_accuracy(c, s, w, persons, counts), rng)
    tails = 100 * np.array([(1 - confidence) / 2, (1 + confidence) / 2])
    low, high = np.nanpercentile(samples, tails)
    per_seed = _weighted_mean(c, w)
    return {"value": float(per_seed.mean()), "low": float(low), "high": float(high),
            "sd": float(per_seed.std(ddof=1)) if len(c) > 1 else 0.0, "n": int(c.shape[1]),
            "photos": int(len(np.unique(photo_ids))), "persons": int(len(persons)),
            "seeds": int(len(c))}


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided percentile-bootstrap p-value of "the difference is 0": 2 * min(share of
    the resampled differences <= 0, share >= 0), at most 1; nan samples are left out
    (nan if none is left). Below 0.05 about when the 95% percentile interval excludes 0."""
    d = np.asarray(differences, np.float64)
    d = d[~np.isnan(d)]
    if not d.size:
        return float("nan")
    return float(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))))


def holm(p_values, alpha: float = 0.05) -> dict:
    """Holm's step-down correction of many tests at once (family-wise error ``alpha``).

    Args:
      p_values: float[M]; nan (a difference with no interval) takes no part and gets nan
        and False.

    Returns:
      {"adjusted": float64[M] (Holm-adjusted p-values), "excludes_0": bool[M] (adjusted
      <= alpha: the difference excludes 0 after the correction), "tests": m (the non-nan
      p-values), "by_chance": m * alpha (how many of m intervals at confidence 1 - alpha
      would exclude 0 by chance alone if no difference were real)}.
    """
    p = np.asarray(p_values, np.float64).reshape(-1)
    adjusted = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    order = tested[np.argsort(p[tested], kind="stable")]
    # The i-th smallest of m is compared with alpha / (m - i); adjusted values never fall.
    steps = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(steps) if m else steps
    return {"adjusted": adjusted, "excludes_0": ~np.isnan(adjusted) & (adjusted <= alpha),
            "tests": m, "by_chance": m * alpha}


def with_holm(differences: list[dict], alpha: float = 0.05) -> None:
    """Adds to each of ``differences`` (dicts with ``low``, ``high`` and a bootstrap ``p``,
    nan without an interval) ``excludes_0`` (its 95% interval excludes 0), ``p_holm`` and
    ``excludes_0_holm`` (`holm` over all of them at family-wise ``alpha``)."""
    corrected = holm([d["p"] for d in differences], alpha)
    for d, adjusted, excludes in zip(differences, corrected["adjusted"],
                                     corrected["excludes_0"], strict=True):
        d.update(excludes_0=bool(d["low"] > 0 or d["high"] < 0), p_holm=float(adjusted),
                 excludes_0_holm=bool(excludes))


def _weighted_side(side: tuple, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(correct bool[K, N], subject_ids int[N], weights float[N]): each image's weight is 1,
    or 1 / (images of its photo) when ``side`` gives photo ids."""
    correct, subject = np.atleast_2d(np.asarray(side[0], bool)), np.asarray(side[1])
    if not correct.shape[1]:
        raise ValueError("a difference of accuracies needs predictions on both sides")
    if correct.shape[1] != subject.shape[0]:
        raise ValueError(f"{name}: {correct.shape[1]} answers but {subject.shape[0]} "
                         "subject ids")
    if len(side) < 3:
        return correct, subject, np.ones(subject.shape[0])
    photo = np.asarray(side[2])
    if photo.shape != subject.shape:
        raise ValueError(f"{name}: {photo.shape[0]} photo ids but {subject.shape[0]} "
                         "subject ids")
    _, inverse, copies = np.unique(photo, return_inverse=True, return_counts=True)
    return correct, subject, 1.0 / copies[inverse]


def _sampled_accuracy(correct, subject, weights, persons, counts) -> np.ndarray:
    """float[K, S]: each seed's weighted accuracy in each bootstrap sample of persons
    (``counts`` int64[P, S]); nan where no image of this side was drawn."""
    ix = np.searchsorted(persons, subject)
    right = np.stack([np.bincount(ix, weights * c, minlength=len(persons)) for c in correct])
    total = np.bincount(ix, weights, minlength=len(persons))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (right @ counts) / (total @ counts)


def _seed_mean(values: np.ndarray, rng) -> np.ndarray:
    """float[S]: each sample's mean over K seeds drawn again with replacement."""
    k, num_samples = values.shape
    if k == 1:
        return values[0]
    drawn = rng.integers(0, k, (num_samples, k))
    return values[drawn, np.arange(num_samples)[:, None]].mean(1)


def _weighted_mean(correct: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """float[K]: each seed's weighted accuracy."""
    return (correct * weights).sum(1) / weights.sum()
