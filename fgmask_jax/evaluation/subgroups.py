"""Who the model fails: accuracy of every task within each subgroup of the test images.

A subgroup is the set of images sharing one value of a categorical variable: an age
group, a gender, a mask kind, or anything else given per image. Each subgroup's
accuracy comes with a percentile interval from the person bootstrap
(`bootstrap.person_bootstrap`, which resamples persons, not images, inside the
subgroup), its image and person counts, and its majority-class rate (the accuracy of
always answering the subgroup's most frequent true class: inside one age group the
age task's majority rate is 100%, which is why it is printed beside the accuracy).

Intervals are per subgroup; they are not intervals of the difference between two
subgroups, and a subgroup of few persons has a wide (or, with one person, degenerate)
interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fgmask_jax.evaluation import bootstrap


def value_names(name: str, values: np.ndarray,
                names: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    """(sorted distinct values, their display names) of one group variable: ``names[code]``
    for integer codes when ``names`` are given, else the values themselves."""
    distinct = np.unique(values)
    if names is None:
        return distinct, [v.decode() if isinstance(v, bytes) else str(v) for v in distinct]
    if not np.issubdtype(distinct.dtype, np.integer):
        raise ValueError(f"group {name!r}: names are given, so its values must be integer codes; "
                         f"got dtype {distinct.dtype}")
    bad = distinct[(distinct < 0) | (distinct >= len(names))]
    if bad.size:
        raise ValueError(f"group {name!r}: codes {bad.tolist()} have no name among "
                         f"{list(names)}")
    return distinct, [str(names[int(v)]) for v in distinct]


def subgroup_accuracy(labels: Mapping[str, np.ndarray], predictions: Mapping[str, np.ndarray],
                      subject_ids: np.ndarray, groups: Mapping[str, np.ndarray], *,
                      group_names: Mapping[str, Sequence[str]] | None = None,
                      num_samples: int = 1000, seed: int = 0,
                      confidence: float = 0.95) -> dict[str, dict[str, dict]]:
    """Accuracy of each task in each subgroup, with person-bootstrap intervals.

    Args:
      labels, predictions: {task: int[N]} per image.
      subject_ids: int[N], the person of each image.
      groups: {group variable name: [N] values}, e.g. {"age_group": int codes,
        "mask_kind": int codes or strings}.
      group_names: {group variable name: names of codes 0, 1, ...}, e.g.
        {"age_group": ("<=10", "11-20", "21-40", ">40")}; a variable left out is
        named by its values.
      num_samples, seed, confidence: of `bootstrap.person_bootstrap`.

    Returns:
      {group: {value name: {"n": images, "persons": P, "tasks": {task: {"accuracy",
      "low", "high", "majority_rate"}}}}}, values in sorted order of their codes. JSON-
      ready (plain floats and ints).

    Raises:
      ValueError: arrays of other lengths, tasks of labels and predictions that differ,
        codes without a name, or negative labels or predictions.
    """
    subject_ids = np.asarray(subject_ids)
    n = len(subject_ids)
    if set(labels) != set(predictions):
        raise ValueError(f"tasks of labels {sorted(labels)} and predictions "
                         f"{sorted(predictions)} differ")
    arrays = {f"labels[{t!r}]": labels[t] for t in labels}
    arrays.update({f"predictions[{t!r}]": predictions[t] for t in predictions})
    arrays.update({f"groups[{g!r}]": v for g, v in groups.items()})
    for what, a in arrays.items():
        if np.shape(a) != (n,):
            raise ValueError(f"{what} has shape {np.shape(a)}; subject_ids has ({n},)")
    y = {t: np.asarray(labels[t], np.int64) for t in labels}
    p = {t: np.asarray(predictions[t], np.int64) for t in labels}
    num_classes = {t: int(max(y[t].max(initial=0), p[t].max(initial=0))) + 1 for t in y}
    group_names = group_names or {}
    out = {}
    for group, values in groups.items():
        values = np.asarray(values)
        distinct, names = value_names(group, values, group_names.get(group))
        rows = {}
        for value, name in zip(distinct, names, strict=True):
            member = values == value
            row = {"n": int(member.sum()), "persons": int(len(np.unique(subject_ids[member]))),
                   "tasks": {}}
            for task in y:
                b = bootstrap.person_bootstrap(
                    y[task][member], p[task][member], subject_ids[member], num_classes[task],
                    num_samples=num_samples, seed=seed, confidence=confidence)
                row["tasks"][task] = {"accuracy": b["accuracy"]["value"],
                                      "low": b["accuracy"]["low"], "high": b["accuracy"]["high"],
                                      "majority_rate": b["majority_rate"]}
            rows[name] = row
        out[group] = rows
    return out
