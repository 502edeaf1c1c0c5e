"""Leave persons out: one model per fold of persons, every image predicted once by a
model that never saw its person."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from fgmask_jax import errors, runs
from fgmask_jax.data import labels as labels_lib
from fgmask_jax.data import pipeline, splits
from fgmask_jax.evaluation import metrics as metrics_lib
from fgmask_jax.evaluation import report as report_lib
from fgmask_jax.evaluation import writers
from fgmask_jax.train import fit
from fgmask_jax.train import state as state_lib
from fgmask_jax.train.evaluate import flat
from fgmask_jax.train.steps import make_mesh


def train_lopo(config: ml_collections.ConfigDict, workdir: str, mesh=None) -> dict:
    """Leave persons out: one model per fold of persons, trained on every other image.

    The folds (`splits.person_folds` over all images, ``config.lopo_folds`` of
    them) are the classical methods' folds for the same seed. Fold ``k`` runs
    `fit.fit_and_test` in ``workdir/fold_<k>`` (so an interrupted fold resumes from its
    checkpoints, and a finished one, with results.json, is not run again). Every
    image is then predicted once, by a model that never saw its person; the
    pooled ``predictions.npz``, ``results.json`` and ``report.md`` go in ``workdir``.

    Returns {"test": {task: pooled summary, with the mean test loss}, "folds":
    [each fold's `fit_and_test` result], "steps": total steps over the folds}.
    """
    mesh = mesh or make_mesh()
    config = runs.with_resolved_dtype(config)
    state_lib.record_config(workdir, config)
    split, _ = pipeline.split_names("lopo")
    source = pipeline.open_split(config.dataset, split, pipeline.data_dir(config))
    subject_ids = pipeline.read_labels(source)["subject_id"]
    folds = splits.person_folds(subject_ids, config.lopo_folds, config.split_seed)
    width = len(str(len(folds)))
    fold_results, arrays = [], []
    for k, (train_ix, test_ix) in enumerate(folds, 1):
        folder = os.path.join(workdir, f"fold_{k:0{width}d}")
        results, predictions = _run_fold(config, folder, source, train_ix, test_ix, k,
                                         len(folds), mesh)
        if not np.array_equal(np.sort(predictions["subject_id"]),
                              np.sort(subject_ids[test_ix])):
            raise errors.ConfigError(
                f"{folder} tested other persons than fold {k} of {len(folds)} holds: it was "
                "run with other folds (config.lopo_folds, config.split_seed or the data changed). "
                f"Use a new workdir, or delete {workdir}/fold_* to train every fold again."
            )
        fold_results.append(results)
        arrays.append(predictions)
    pooled = {name: np.concatenate([a[name] for a in arrays]) for name in arrays[0]}
    if "index" in pooled:  # each image once, by its index (folds of older runs lack it)
        by_index = np.argsort(pooled["index"], kind="stable")
        pooled = {name: a[by_index] for name, a in pooled.items()}
    test = _pooled_metrics(config, pooled, fold_results)
    steps = sum(int(r["steps"]) for r in fold_results)
    if jax.process_index() == 0:
        _write(workdir, config, pooled, test, fold_results, steps, mesh)
    logging.info("Test metrics (leave persons out, %d folds pooled):\n%s", len(folds),
                 report_lib.format_table(test))
    return {"steps": steps, "folds": fold_results, "test": test}


def _run_fold(config, folder: str, source, train_ix, test_ix, k: int, num_folds: int,
              mesh) -> tuple[dict, dict[str, np.ndarray]]:
    """(fold ``k``'s results, its predictions.npz arrays): trained now, or read back if the
    fold has finished before."""
    results_path = epath.Path(folder) / "results.json"
    if jax.process_count() > 1:  # every process sees the same finished folds
        multihost_utils.sync_global_devices(f"fgmask_jax lopo fold {k}")
    if results_path.exists():
        logging.info("lopo: %s is finished; not run again", folder)
        results = json.loads(results_path.read_text())
    else:
        logging.info("lopo: fold %d of %d: %d training, %d test images", k, num_folds,
                     len(train_ix), len(test_ix))
        results = fit.fit_and_test(config, folder, source, train_ix, source, test_ix,
                                   mesh=mesh, test_name=f"persons of fold {k} of {num_folds}")
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"fgmask_jax lopo fold {k} written")
    with (epath.Path(folder) / "predictions.npz").open("rb") as f, np.load(f) as npz:
        return results, {name: npz[name] for name in npz.files}


def _pooled_metrics(config, pooled: dict[str, np.ndarray], fold_results: list[dict]) -> dict:
    test = {}
    for t in config.tasks:
        test[t] = metrics_lib.summarize(pooled[f"label_{t}"], pooled[f"pred_{t}"],
                                        len(labels_lib.TASKS[t]))
        # Each fold's loss is its mean over its images: weighted by them, the pooled mean.
        test[t]["loss"] = float(sum(r["test"][t]["loss"] * r["test"][t]["n"]
                                    for r in fold_results) / test[t]["n"])
    return test


def _write(workdir: str, config, pooled: dict, test: dict, fold_results: list[dict],
           steps: int, mesh) -> None:
    """The pooled predictions.npz, results.json, metrics and report.md."""
    writers.write_predictions(os.path.join(workdir, "predictions.npz"), pooled, config.tasks)
    writers.write_json(os.path.join(workdir, "results.json"), {
        "steps": steps, "folds": len(fold_results), "test": test,
        "fold_test": [r["test"] for r in fold_results]})
    writer = writers.MetricWriter(workdir)
    writer.write(0, flat(test, "test"))
    writer.close()
    report_lib.write_report(
        workdir,
        f"{config.model} on {config.dataset}, protocol=lopo",
        {"test": test},
        notes=[
            f"tasks: {', '.join(config.tasks)}; image size {config.image_size}; "
            f"batch {config.batch_size} on {mesh.size} devices",
            f"leave-persons-out over {len(fold_results)} folds of persons: one model per "
            f"fold, {steps} steps in all; each image predicted once, by the model that never "
            "saw its person (each fold's report is in its fold_<k> folder)",
            "majority rate: the accuracy of always answering the most frequent true class",
        ],
    )
