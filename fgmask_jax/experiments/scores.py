"""A finished run read back: its per-image predictions and its metrics with intervals by
person (and by training seed, for the runs of one method with several seeds)."""

from __future__ import annotations

import json
import math
import os

import numpy as np

from fgmask_jax import errors
from fgmask_jax.data import labels as labels_lib
from fgmask_jax.evaluation import bootstrap
from fgmask_jax.evaluation import metrics as metrics_lib


def load_predictions(folder: str, tasks) -> dict[str, np.ndarray] | None:
    """predictions.npz of a run: {subject_id, label_<task>, pred_<task>: int[N]}, or None.

    Raises:
      errors.DataError: the file lacks an array a task needs, or arrays differ in length.
    """
    path = os.path.join(folder, "predictions.npz")
    if not os.path.exists(path):
        return None
    with np.load(path) as f:
        arrays = {k: np.asarray(f[k]) for k in f.files}
    needed = ["subject_id", *(f"{p}_{t}" for t in tasks for p in ("label", "pred"))]
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise errors.DataError(
            f"{path} lacks {', '.join(missing)} (it has {', '.join(arrays)})")
    lengths = {len(arrays[k]) for k in needed}
    if len(lengths) != 1:
        raise errors.DataError(f"{path}: arrays of different lengths {sorted(lengths)}")
    return arrays


def summarize_run(folders: str | list[str], tasks, *, num_samples: int = 1000,
                  seed: int = 0) -> dict:
    """{task: {metric: {value, low, high, sd}, n, persons, seeds, majority_rate}} and a
    note, of one run or of the runs of one method with several training seeds (the same
    test images).

    Point values come from the per-image predictions when present (each seed's must equal
    its ``results.json``; with seeds, their mean), intervals from
    `bootstrap.person_bootstrap` (persons, and seeds when there are several); without
    predictions, values are the mean of the results.json files and low/high are nan.

    Returns:
      {"tasks": {task: ...}, "intervals": bool, "note": str or None}.

    Raises:
      errors.DataError: predictions.npz and results.json from different runs, or seeds
        whose predictions are not of the same images.
    """
    folders = [folders] if isinstance(folders, str) else list(folders)
    results = []
    for folder in folders:
        with open(os.path.join(folder, "results.json")) as f:
            results.append(json.load(f)["test"])
    predictions = [load_predictions(folder, tasks) for folder in folders]
    complete = all(p is not None for p in predictions)
    if complete:
        check_same_images(folders, predictions, tasks)
    out = {}
    for task in tasks:
        if not complete:
            out[task] = {m: {"value": float(np.mean([r[task][m] for r in results])),
                             "low": math.nan, "high": math.nan, "sd": math.nan}
                         for m in bootstrap.METRICS}
            r = results[0][task]
            out[task].update(n=r["n"], persons=None, seeds=len(folders),
                             majority_rate=r["majority_rate"])
            continue
        num_classes = len(labels_lib.TASKS[task])
        for folder, p, r in zip(folders, predictions, results, strict=True):
            mine = metrics_lib.summarize(p[f"label_{task}"], p[f"pred_{task}"], num_classes)
            for m in bootstrap.METRICS:
                if not math.isclose(mine[m], r[task][m], abs_tol=1e-9):
                    raise errors.DataError(
                        f"{folder}: predictions.npz gives {task} {m} {mine[m]:.6f} but "
                        f"results.json {r[task][m]:.6f}: the two come from different runs; "
                        "delete the folder to run the method again")
        first = predictions[0]
        b = bootstrap.person_bootstrap(
            first[f"label_{task}"], np.stack([p[f"pred_{task}"] for p in predictions]),
            first["subject_id"], num_classes, num_samples=num_samples, seed=seed)
        out[task] = {m: b[m] for m in bootstrap.METRICS}
        out[task].update(n=b["n"], persons=b["persons"], seeds=b["seeds"],
                         majority_rate=b["majority_rate"])
    note = None if complete else (
        "no per-image predictions (predictions.npz) in its folder: no interval; "
        "values from its results.json")
    return {"tasks": out, "intervals": complete, "note": note}


SEEDS_SHARE_THE_SPLIT = ("the seeds of one method must share the split; delete the seed's "
                         "folder to run it again")


def check_same_images(folders, predictions, tasks, way_out: str = SEEDS_SHARE_THE_SPLIT) -> None:
    """Raises `errors.DataError`, ending with ``way_out``, unless all ``predictions`` (of
    the runs in ``folders``) are of the same images."""
    first = predictions[0]
    keys = ["subject_id", *(f"label_{t}" for t in tasks)]
    for folder, p in zip(folders[1:], predictions[1:], strict=True):
        for key in keys + (["index"] if "index" in first and "index" in p else []):
            if not np.array_equal(p[key], first[key]):
                raise errors.DataError(
                    f"{folder} and {folders[0]} predicted other test images ({key} differs): "
                    f"{way_out}")


def correct_by_seed(workdir: str, runs, task: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(correct bool[K, N], subject_ids int[N]) of the K seeds' runs of one method on
    ``task`` (runs, or their folders under ``workdir``), or None if one lacks its
    predictions."""
    folders = [os.path.join(workdir, getattr(r, "folder", r)) for r in runs]
    predictions = [load_predictions(f, (task,)) for f in folders]
    if any(p is None for p in predictions):
        return None
    check_same_images(folders, predictions, (task,))
    correct = np.stack([p[f"label_{task}"] == p[f"pred_{task}"] for p in predictions])
    return correct, predictions[0]["subject_id"]
