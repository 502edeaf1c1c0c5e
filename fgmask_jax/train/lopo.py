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
from fgmask_jax.evaluation import calibration as calibration_lib
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
    pooled ``predictions.npz``, ``results.json`` and ``report.md`` go in ``workdir``,
    with the pooled calibration: each fold's test logits divided by that fold's own
    temperature (`pooled_calibration`).

    Returns {"test": {task: pooled summary, with the mean test loss}, "folds":
    [each fold's `fit_and_test` result], "steps": total steps over the folds,
    "pooled_calibration": `pooled_calibration`'s scalars, or None}.
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
    pooled = pool(arrays, fold_results, config.tasks)
    test = _pooled_metrics(config, pooled, fold_results)
    groups = fit.group_variables(source, pooled["index"]) if "index" in pooled else None
    calibration = pooled_calibration(config, pooled, fold_results, groups)
    steps = sum(int(r["steps"]) for r in fold_results)
    if jax.process_index() == 0:
        _write(workdir, config, pooled, test, fold_results, steps, mesh, calibration)
    logging.info("Test metrics (leave persons out, %d folds pooled):\n%s", len(folds),
                 report_lib.format_table(test))
    return {"steps": steps, "folds": fold_results, "test": test,
            "pooled_calibration": calibration and _scalars(calibration)}


def pool(arrays: list[dict[str, np.ndarray]], fold_results: list[dict],
         tasks) -> dict[str, np.ndarray]:
    """The folds' predictions.npz arrays as one set, each image once, in the order of its
    dataset index (folds of older runs lack it: then in fold order); where every fold fitted
    temperatures, also ``temperature_<task>``: float64[N], each image's own fold's T."""
    if all(t in r.get("calibration", {}) for r in fold_results for t in tasks):
        arrays = [{**a, **{f"temperature_{t}": np.full(len(a["subject_id"]),
                                                       float(r["calibration"][t]["temperature"]))
                           for t in tasks}}
                  for a, r in zip(arrays, fold_results, strict=True)]
    pooled = {name: np.concatenate([a[name] for a in arrays]) for name in arrays[0]}
    if "index" in pooled:
        by_index = np.argsort(pooled["index"], kind="stable")
        pooled = {name: a[by_index] for name, a in pooled.items()}
    return pooled


def pooled_calibration(config, pooled: dict[str, np.ndarray], fold_results: list[dict],
                       groups: dict[str, np.ndarray] | None) -> dict | None:
    """Calibration of the pooled folds: each image's logits divided by its own fold's
    temperature (fitted on that fold's validation persons, never on a test image), then
    ECE and NLL over every image, before and after, with 95% intervals by person, overall
    and per age group and mask kind (``groups``: `fit.group_variables` of the pooled
    images; None: the folds' predictions lack the images' index).

    Returns {"tasks": {task: `calibration.judge` + "fold_temperatures" (fold order),
    "folds_at_bound"}, "by_group", "by_group_skipped", "note"}, or None where a fold has
    no temperature or logits (an older run).
    """
    tasks = config.tasks
    if any(f"{k}_{t}" not in pooled for t in tasks for k in ("temperature", "logits")):
        return None
    out = {"tasks": {}}
    for t in tasks:
        fitted = [r["calibration"][t] for r in fold_results]
        out["tasks"][t] = {
            "fold_temperatures": [float(c["temperature"]) for c in fitted],
            "folds_at_bound": sum(bool(c.get("at_bound")) for c in fitted),
            **calibration_lib.judge(pooled[f"logits_{t}"], pooled[f"label_{t}"],
                                    pooled[f"temperature_{t}"], pooled["subject_id"],
                                    seed=config.split_seed)}
    temperatures = {t: pooled[f"temperature_{t}"] for t in tasks}
    if groups is None:
        out["by_group"] = {}
        out["by_group_skipped"] = {g: "the folds' predictions lack each image's index"
                                   for g in fit.CALIBRATION_GROUPS}
    else:
        out["by_group"], out["by_group_skipped"] = fit.calibration_by_group(
            config, pooled, temperatures, groups)
    split = sum(bool(r.get("calibration_subsets", {}).get("split")) for r in fold_results)
    out["note"] = (f"{split} of {len(fold_results)} folds fitted it on validation persons "
                   "that did not choose the checkpoint" + (
                       "" if split == len(fold_results) else
                       f", {len(fold_results) - split} on the subset that chose it (too few "
                       "persons to split, or a fold of an older run)"))
    return out


def _scalars(calibration: dict) -> dict:
    """`pooled_calibration` without the reliability arrays: JSON-ready."""
    return {**calibration, "tasks": calibration_lib.scalars(calibration["tasks"])}


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
           steps: int, mesh, calibration: dict | None) -> None:
    """The pooled predictions.npz, results.json, metrics and report.md."""
    writers.write_predictions(os.path.join(workdir, "predictions.npz"), pooled, config.tasks)
    writers.write_json(os.path.join(workdir, "results.json"), {
        "steps": steps, "folds": len(fold_results), "test": test,
        "fold_test": [r["test"] for r in fold_results],
        "pooled_calibration": calibration and _scalars(calibration)})
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
    if calibration is None:
        report_lib.append_sections(workdir, [
            "## Calibration (pooled folds)\n\nNot computed: a fold has no fitted temperature "
            "or no logits (a fold of an older run; delete it to train it again).\n"])
        return
    report_lib.append_sections(workdir, [
        report_lib.calibration_section(
            workdir, calibration["tasks"], split="pooled folds",
            fitted_on=f"each fold's own validation persons and applied to that fold's "
                      f"test images only ({calibration['note']})"),
        report_lib.calibration_group_section(calibration["by_group"],
                                             calibration["by_group_skipped"],
                                             split="pooled folds")])
