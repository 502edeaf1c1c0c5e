"""How far predicted probabilities can be trusted: calibration error and temperature scaling.

A classifier is calibrated when, of the images it answers with confidence p, a
fraction p is right. The expected calibration error (ECE, Guo et al. 2017, "On
Calibration of Modern Neural Networks") bins the top-label confidence into equal-width
bins and averages |accuracy - mean confidence| over the bins, weighted by their counts.

Temperature scaling divides every logit by one scalar T > 0 fitted on held-out data
(the validation subset, never the test split). It leaves the argmax, and therefore
accuracy, balanced accuracy and the confusion matrix, unchanged.

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

from collections.abc import Mapping

import numpy as np

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
    persons, person = np.unique(np.asarray(subject_ids), return_inverse=True)
    p = len(persons)
    cell = person * num_bins + index

    def per_person(weights):
        return np.bincount(cell, weights, minlength=p * num_bins).reshape(p, num_bins)

    rng = np.random.default_rng(seed)
    counts = rng.multinomial(p, np.full(p, 1.0 / p), size=num_samples)  # int64[S, P]
    gaps = np.abs(counts @ per_person(correct) - counts @ per_person(top)).sum(-1)
    n = counts @ per_person(np.ones_like(top)).sum(-1)
    tails = 100 * np.array([(1 - confidence) / 2, (1 + confidence) / 2])
    low, high = np.percentile(gaps / n, tails)
    return float(low), float(high)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray,
                            temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``logits / temperature`` against ``labels`` (nats)."""
    z, labels = _check_probs_labels(logits, labels)
    z = z / temperature
    m = z.max(-1)
    lse = m + np.log(np.exp(z - m[:, None]).sum(-1))
    return float(np.mean(lse - z[np.arange(len(labels)), labels]))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """float64[N, C] logits divided by ``temperature`` (> 0): same argmax, other confidence."""
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be positive")
    return np.asarray(logits, np.float64) / temperature


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


def calibrate_tasks(fit_logits: Mapping[str, np.ndarray], fit_labels: Mapping[str, np.ndarray],
                    eval_logits: Mapping[str, np.ndarray], eval_labels: Mapping[str, np.ndarray],
                    *, num_bins: int = 15,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
                    eval_subjects: Mapping[str, np.ndarray] | None = None,
                    seed: int = 0) -> dict[str, dict]:
    """Per task: a temperature fitted on one set, ECE and NLL before and after on another.

    Args:
      fit_logits, fit_labels: {task: float[M, C]}, {task: int[M]}: the validation
        subset, where T is fitted.
      eval_logits, eval_labels: {task: float[N, C]}, {task: int[N]}: the test split,
        where it is judged.
      num_bins: ECE bins.
      bounds: allowed temperatures.
      eval_subjects: {task: int[N]}, the person of each evaluation image: the ECEs then
        get 95% intervals by person (`ece_interval`, seeded by ``seed``).

    Returns:
      {task: {"n", "temperature", "at_bound", "ece", "ece_scaled", "nll", "nll_scaled",
      "reliability", "reliability_scaled"}}: ECE and NLL on the evaluation set at T = 1
      and at the fitted T; the two reliability entries are `reliability_bins` (numpy
      arrays: drop or convert them before writing JSON); with ``eval_subjects``, also
      "ece_interval" and "ece_scaled_interval" ([low, high]).

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
        t, y = fit["temperature"], np.asarray(eval_labels[task])
        probs, probs_scaled = softmax(z), softmax(apply_temperature(z, t))
        out[task] = {
            "n": int(len(y)),
            "temperature": t,
            "at_bound": fit["at_bound"],
            "ece": expected_calibration_error(probs, y, num_bins),
            "ece_scaled": expected_calibration_error(probs_scaled, y, num_bins),
            "nll": negative_log_likelihood(z, y),
            "nll_scaled": negative_log_likelihood(z, y, t),
            "reliability": reliability_bins(probs, y, num_bins),
            "reliability_scaled": reliability_bins(probs_scaled, y, num_bins),
        }
        if eval_subjects is not None:
            for key, p in (("ece_interval", probs), ("ece_scaled_interval", probs_scaled)):
                out[task][key] = list(ece_interval(p, y, eval_subjects[task], num_bins,
                                                   seed=seed))
    return out


def scalars(results: Mapping[str, dict]) -> dict[str, dict]:
    """`calibrate_tasks` output without the reliability arrays: JSON-ready."""
    return {task: {k: v for k, v in r.items() if not k.startswith("reliability")}
            for task, r in results.items()}
