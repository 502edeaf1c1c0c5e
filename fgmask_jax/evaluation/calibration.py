"""How far predicted probabilities can be trusted: calibration error and temperature scaling.

A classifier is calibrated when, of the images it answers with confidence p, a
fraction p is right. The expected calibration error (ECE, Guo et al. 2017, "On
Calibration of Modern Neural Networks") bins the top-label confidence into equal-width
bins and averages |accuracy - mean confidence| over the bins, weighted by their counts.

Temperature scaling divides every logit by one scalar T > 0 fitted on held-out data
(a trainer's validation persons that did not choose its checkpoint, never the test split).
It leaves the argmax, and therefore accuracy, balanced accuracy and the confusion matrix,
unchanged. `judge` measures ECE and NLL before and after it, with intervals from a
bootstrap over persons; `calibration_by_group` does so inside each subgroup (an age group,
a mask kind); a temperature may also be given per image (float[N]): pooled folds of
leave-persons-out, each image divided by its own fold's T.

The fit: the negative log-likelihood of logits z scaled by b = 1/T,
``NLL(b) = mean(logsumexp(b z) - b z_y)``, is convex in b (a log-sum-exp of functions
linear in b, minus a linear one), so its derivative ``mean(E_softmax(bz)[z] - z_y)``
rises monotonically and the minimum is found by bisection on the derivative's sign:
no step size, no starting point, the same answer every time. On data the model
separates perfectly the NLL keeps falling as T -> 0 (every correct logit margin grows
without bound); on data where it is always wrong it keeps falling as T -> infinity.
Neither limit is a useful model, so T is confined to ``bounds`` (default 0.05 to 20)
and a fit that ends on a bound says that the data could not pin T down
(`fit_temperature_info` reports it).

All functions are numpy, in float64.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fgmask_jax.evaluation import subgroups

TEMPERATURE_BOUNDS = (0.05, 20.0)


def _check_probs_labels(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.int64)
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"scores {probs.shape} must be [N, C] and labels {labels.shape} [N] "
                         "of one length N")
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in [0, {probs.shape[1]}); got "
                         f"{labels.min()}..{labels.max()}")
    return probs, labels


def softmax(logits: np.ndarray) -> np.ndarray:
    """float64[N, C] probabilities of float[N, C] logits."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> dict:
    """Top-label confidence in equal-width bins: the data of a reliability diagram.

    Bin k holds the images whose top probability lies in (k/K, (k+1)/K] (bin 0 also
    takes a confidence of exactly 0).

    Args:
      probs: float[N, C] predicted probabilities (rows sum to 1).
      labels: int[N] true classes in [0, C).
      num_bins: K.

    Returns:
      {"edges": float64[K+1], "count": int64[K], "confidence": float64[K] (mean top
      probability per bin), "accuracy": float64[K] (share of top-1 answers that are
      right)}; confidence and accuracy are nan in empty bins.
    """
    if num_bins < 1:
        raise ValueError(f"num_bins={num_bins} must be at least 1")
    probs, labels = _check_probs_labels(probs, labels)
    confidence = probs.max(-1)
    correct = (probs.argmax(-1) == labels).astype(np.float64)
    index = np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    count = np.bincount(index, minlength=num_bins)
    conf_sum = np.bincount(index, confidence, minlength=num_bins)
    correct_sum = np.bincount(index, correct, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "edges": np.linspace(0.0, 1.0, num_bins + 1),
            "count": count,
            "confidence": np.where(count > 0, conf_sum / count, np.nan),
            "accuracy": np.where(count > 0, correct_sum / count, np.nan),
        }


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray,
                               num_bins: int = 15) -> float:
    """Top-label ECE: sum over bins of (bin count / N) * |accuracy - mean confidence|.

    Args:
      probs: float[N, C] predicted probabilities.
      labels: int[N] true classes.
      num_bins: equal-width confidence bins on [0, 1].

    Returns:
      ECE in [0, 1]; nan for N = 0.
    """
    bins = reliability_bins(probs, labels, num_bins)
    n = bins["count"].sum()
    if not n:
        return float("nan")
    filled = bins["count"] > 0
    gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float((bins["count"][filled] * gaps).sum() / n)


def _person_draws(subject_ids: np.ndarray, num_samples: int,
                  seed: int) -> tuple[np.ndarray, int, np.ndarray]:
    """(each image's person as 0..P-1, P, draw counts int64[S, P]): the samples of
    `bootstrap.person_bootstrap`, each P persons drawn with replacement."""
    persons, person = np.unique(np.asarray(subject_ids), return_inverse=True)
    p = len(persons)
    rng = np.random.default_rng(seed)
    return person, p, rng.multinomial(p, np.full(p, 1.0 / p), size=num_samples)


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tails = 100 * np.array([(1 - confidence) / 2, (1 + confidence) / 2])
    low, high = np.percentile(samples, tails)
    return float(low), float(high)


def ece_interval(probs: np.ndarray, labels: np.ndarray, subject_ids: np.ndarray,
                 num_bins: int = 15, *, num_samples: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[float, float]:
    """A percentile interval of `expected_calibration_error` from a bootstrap over persons
    (as `bootstrap.person_bootstrap`: every image of a drawn person, twice if drawn twice).

    Vectorised: a bin's weighted gap is |sum of correct - sum of confidence| over its
    images, so per-person sums per bin, int or float[P, K], times the samples' draw counts
    give every sample's ECE at once.
    """
    probs, labels = _check_probs_labels(probs, labels)
    top = probs.max(-1)
    correct = (probs.argmax(-1) == labels).astype(np.float64)
    index = np.clip(np.ceil(top * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    person, p, counts = _person_draws(subject_ids, num_samples, seed)
    cell = person * num_bins + index

    def per_person(weights):
        return np.bincount(cell, weights, minlength=p * num_bins).reshape(p, num_bins)

    gaps = np.abs(counts @ per_person(correct) - counts @ per_person(top)).sum(-1)
    n = counts @ per_person(np.ones_like(top)).sum(-1)
    return _percentiles(gaps / n, confidence)


def nll_interval(logits: np.ndarray, labels: np.ndarray, subject_ids: np.ndarray,
                 temperature: float | np.ndarray = 1.0, *, num_samples: int = 1000,
                 seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """A percentile interval of `negative_log_likelihood` from the same bootstrap over
    persons as `ece_interval` (the same ``seed`` draws the same persons)."""
    z, labels = _check_probs_labels(logits, labels)
    losses = _per_image_nll(apply_temperature(z, temperature), labels)
    person, p, counts = _person_draws(subject_ids, num_samples, seed)
    sums = np.bincount(person, losses, minlength=p)
    n = np.bincount(person, minlength=p)
    return _percentiles((counts @ sums) / (counts @ n), confidence)


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(-1)
    return m + np.log(np.exp(z - m[:, None]).sum(-1))


def _per_image_nll(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """float64[N]: -log softmax(z)[label] of each row."""
    return _logsumexp(z) - z[np.arange(len(labels)), labels]


# Share of held-out faces whose out-of-distribution score is at or below a run's threshold.
OOD_QUANTILE = 0.95


def energy(logits: Mapping[str, np.ndarray], temperatures: Mapping[str, float]) -> np.ndarray:
    """float64[N]: the out-of-distribution score of each image, the energy of its
    temperature-scaled logits (-T logsumexp(z / T), Liu et al. 2020) averaged over tasks;
    higher is less like the training images. The predictor computes the same inside its
    compiled function (`inference.predictor.probabilities_fn`)."""
    return np.mean([-temperatures.get(t, 1.0) * _logsumexp(apply_temperature(
        z, temperatures.get(t, 1.0))) for t, z in logits.items()], axis=0)


def ood_threshold(logits: Mapping[str, np.ndarray], temperatures: Mapping[str, float],
                  quantile: float = OOD_QUANTILE) -> float:
    """The ``quantile`` of held-out faces' `energy`: a score above it marks an input as
    unlike the training images, and flags 1 - ``quantile`` of faces like them."""
    return float(np.quantile(energy(logits, temperatures), quantile))


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray,
                            temperature: float | np.ndarray = 1.0) -> float:
    """Mean cross-entropy of ``logits / temperature`` against ``labels`` (nats);
    ``temperature`` a scalar or one per row (`apply_temperature`)."""
    z, labels = _check_probs_labels(logits, labels)
    return float(np.mean(_per_image_nll(apply_temperature(z, temperature), labels)))


def apply_temperature(logits: np.ndarray, temperature: float | np.ndarray) -> np.ndarray:
    """float64[N, C] logits divided by ``temperature`` (> 0): same argmax, other confidence.

    ``temperature``: one scalar, or float[N], one per row (pooled folds, each with its own).
    """
    z = np.asarray(logits, np.float64)
    t = np.asarray(temperature, np.float64)
    if t.ndim > 1 or (t.ndim == 1 and t.shape != z.shape[:1]):
        raise ValueError(f"temperature {t.shape} must be a scalar or one per row of "
                         f"logits {z.shape}")
    if not np.all(t > 0):
        raise ValueError(f"temperature={temperature} must be positive")
    return z / (t[:, None] if t.ndim else t)


def _nll_slope(z: np.ndarray, labels: np.ndarray, inverse_t: float) -> float:
    """d NLL / d(1/T) = mean(E_softmax(z/T)[z] - z_y): rises with 1/T."""
    p = softmax(z * inverse_t)
    return float(np.mean((p * z).sum(-1) - z[np.arange(len(labels)), labels]))


def fit_temperature_info(logits: np.ndarray, labels: np.ndarray, *,
                         bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
                         iterations: int = 60) -> dict:
    """The temperature that minimises the NLL of ``logits / T`` within ``bounds``.

    Bisection on the sign of the NLL's derivative with respect to 1/T (the NLL is
    convex in 1/T): after 60 halvings the interval is below float64 resolution.

    Args:
      logits: float[N, C], for example the validation subset's.
      labels: int[N].
      bounds: (lowest, highest) T allowed, 0 < lowest < highest.
      iterations: bisection steps.

    Returns:
      {"temperature": T, "at_bound": True where the NLL still falls at the bound
      (separable data, or very few images), "nll": NLL at T = 1, "nll_scaled": at T}.

    Raises:
      ValueError: no images, bad shapes or labels, or bad bounds.
    """
    low_t, high_t = bounds
    if not 0 < low_t < high_t:
        raise ValueError(f"bounds={bounds} must satisfy 0 < lowest < highest")
    z, labels = _check_probs_labels(logits, labels)
    if not len(labels):
        raise ValueError("no images: a temperature needs at least one logit row")
    lo, hi = 1.0 / high_t, 1.0 / low_t  # in 1/T
    if _nll_slope(z, labels, lo) >= 0:
        inverse_t, at_bound = lo, True
    elif _nll_slope(z, labels, hi) <= 0:
        inverse_t, at_bound = hi, True
    else:
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            if _nll_slope(z, labels, mid) > 0:
                hi = mid
            else:
                lo = mid
        inverse_t, at_bound = 0.5 * (lo + hi), False
    t = 1.0 / inverse_t
    return {"temperature": t, "at_bound": at_bound,
            "nll": negative_log_likelihood(z, labels),
            "nll_scaled": negative_log_likelihood(z, labels, t)}


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """T > 0 minimising the NLL of ``logits / T`` on (logits, labels), clipped to ``bounds``.

    See `fit_temperature_info` for the method and the bound's meaning.
    """
    return fit_temperature_info(logits, labels, bounds=bounds)["temperature"]


def judge(logits: np.ndarray, labels: np.ndarray, temperature: float | np.ndarray,
          subject_ids: np.ndarray | None = None, *, num_bins: int = 15,
          seed: int = 0) -> dict:
    """ECE and NLL of ``logits`` at T = 1 and divided by ``temperature``.

    Args:
      logits: float[N, C].
      labels: int[N].
      temperature: a scalar, or float[N] (each image its own: pooled folds).
      subject_ids: int[N], the person of each image: the ECEs and NLLs then get 95%
        intervals by person (`ece_interval`, `nll_interval`, seeded by ``seed``).
      num_bins: ECE bins.

    Returns:
      {"n", "ece", "ece_scaled", "nll", "nll_scaled", "reliability",
      "reliability_scaled"} (the two reliability entries are `reliability_bins`, numpy
      arrays); with ``subject_ids``, also "ece_interval", "ece_scaled_interval",
      "nll_interval" and "nll_scaled_interval" ([low, high]).
    """
    z, y = _check_probs_labels(logits, labels)
    scaled = apply_temperature(z, temperature)
    probs, probs_scaled = softmax(z), softmax(scaled)
    out = {
        "n": int(len(y)),
        "ece": expected_calibration_error(probs, y, num_bins),
        "ece_scaled": expected_calibration_error(probs_scaled, y, num_bins),
        "nll": negative_log_likelihood(z, y),
        "nll_scaled": negative_log_likelihood(scaled, y),
        "reliability": reliability_bins(probs, y, num_bins),
        "reliability_scaled": reliability_bins(probs_scaled, y, num_bins),
    }
    if subject_ids is not None:
        if np.shape(subject_ids) != y.shape:
            raise ValueError(f"subject_ids {np.shape(subject_ids)} must be [N] of labels "
                             f"{y.shape}")
        for key, p in (("ece_interval", probs), ("ece_scaled_interval", probs_scaled)):
            out[key] = list(ece_interval(p, y, subject_ids, num_bins, seed=seed))
        for key, x in (("nll_interval", z), ("nll_scaled_interval", scaled)):
            out[key] = list(nll_interval(x, y, subject_ids, seed=seed))
    return out


def calibrate_tasks(fit_logits: Mapping[str, np.ndarray], fit_labels: Mapping[str, np.ndarray],
                    eval_logits: Mapping[str, np.ndarray], eval_labels: Mapping[str, np.ndarray],
                    *, num_bins: int = 15,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
                    eval_subjects: Mapping[str, np.ndarray] | None = None,
                    seed: int = 0) -> dict[str, dict]:
    """Per task: a temperature fitted on one set, ECE and NLL before and after on another.

    Args:
      fit_logits, fit_labels: {task: float[M, C]}, {task: int[M]}: held-out images where
        T is fitted (the trainer's temperature half of its validation persons).
      eval_logits, eval_labels: {task: float[N, C]}, {task: int[N]}: the test split,
        where it is judged.
      num_bins: ECE bins.
      bounds: allowed temperatures.
      eval_subjects: {task: int[N]}, the person of each evaluation image: the ECEs and
        NLLs then get 95% intervals by person (`judge`, seeded by ``seed``).

    Returns:
      {task: {"n", "temperature", "at_bound", "ece", "ece_scaled", "nll", "nll_scaled",
      "reliability", "reliability_scaled"}}: ECE and NLL on the evaluation set at T = 1
      and at the fitted T; the two reliability entries are `reliability_bins` (numpy
      arrays: drop or convert them before writing JSON); with ``eval_subjects``, also the
      intervals of `judge`.

    Raises:
      KeyError: a task of ``eval_logits`` missing from another mapping.
    """
    out = {}
    for task, z in eval_logits.items():
        for name, mapping in (("fit_logits", fit_logits), ("fit_labels", fit_labels),
                              ("eval_labels", eval_labels)):
            if task not in mapping:
                raise KeyError(f"task {task!r} of eval_logits is missing from {name}")
        fit = fit_temperature_info(fit_logits[task], fit_labels[task], bounds=bounds)
        subjects = None if eval_subjects is None else eval_subjects[task]
        out[task] = {"temperature": fit["temperature"], "at_bound": fit["at_bound"],
                     **judge(z, eval_labels[task], fit["temperature"], subjects,
                             num_bins=num_bins, seed=seed)}
    return out


def calibration_by_group(logits: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                         temperatures: Mapping[str, float | np.ndarray],
                         subject_ids: np.ndarray, groups: Mapping[str, np.ndarray], *,
                         group_names: Mapping[str, Sequence[str]] | None = None,
                         num_bins: int = 15, seed: int = 0) -> dict[str, dict[str, dict]]:
    """Per subgroup (an age group, a mask kind) and task: ECE and NLL before and after
    temperature, with 95% intervals from a bootstrap over the subgroup's persons.

    Args:
      logits, labels: {task: float[N, C]}, {task: int[N]} of the evaluation images.
      temperatures: {task: T}, or {task: float[N]} one per image (pooled folds).
      subject_ids: int[N].
      groups: {group variable: [N] values}, as `subgroups.subgroup_accuracy`.
      group_names: {group variable: names of codes 0, 1, ...}.

    Returns:
      {group: {value name: {"n", "persons", "tasks": {task: `judge`'s scalars}}}}, values
      in sorted order of their codes; JSON-ready. The subgroups' n sum to N.

    Raises:
      ValueError: arrays of another length than ``subject_ids``, or codes without a name.
    """
    subject_ids = np.asarray(subject_ids)
    n = len(subject_ids)
    per_image = {f"logits[{t!r}]": np.shape(z)[:1] for t, z in logits.items()}
    per_image.update({f"labels[{t!r}]": np.shape(labels[t]) for t in logits})
    per_image.update({f"temperatures[{t!r}]": np.shape(temperatures[t]) for t in logits
                      if np.ndim(temperatures[t])})
    per_image.update({f"groups[{g!r}]": np.shape(v) for g, v in groups.items()})
    for what, shape in per_image.items():
        if shape != (n,):
            raise ValueError(f"{what} has {shape[:1]} rows; subject_ids has {n}")
    group_names = group_names or {}
    out = {}
    for group, values in groups.items():
        values = np.asarray(values)
        distinct, names = subgroups.value_names(group, values, group_names.get(group))
        rows = {}
        for value, name in zip(distinct, names, strict=True):
            member = values == value
            row = {"n": int(member.sum()),
                   "persons": int(len(np.unique(subject_ids[member]))), "tasks": {}}
            for task, z in logits.items():
                t = np.asarray(temperatures[task], np.float64)
                judged = judge(np.asarray(z)[member], np.asarray(labels[task])[member],
                               t[member] if t.ndim else t, subject_ids[member],
                               num_bins=num_bins, seed=seed)
                row["tasks"][task] = _without_reliability(judged)
            rows[name] = row
        out[group] = rows
    return out


def _without_reliability(result: Mapping) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("reliability")}


def scalars(results: Mapping[str, dict]) -> dict[str, dict]:
    """`calibrate_tasks` output without the reliability arrays: JSON-ready."""
    return {task: _without_reliability(r) for task, r in results.items()}
