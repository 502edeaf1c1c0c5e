"""One model, start to finish: split, build, start, train, test, report.

`fit_and_test` is the run's story, one call a phase; each phase lives in its own
module (`state`, `optim`, `steps`, `loop`, `evaluate`) or below it here.
"""

from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fgmask_jax import checkpointing, errors, runs
from fgmask_jax.data import labels as labels_lib
from fgmask_jax.data import pipeline, splits
from fgmask_jax.evaluation import calibration as calibration_lib
from fgmask_jax.evaluation import report as report_lib
from fgmask_jax.evaluation import saliency as saliency_lib
from fgmask_jax.evaluation import saliency_controls, writers
from fgmask_jax.evaluation import subgroups as subgroups_lib
from fgmask_jax.train import evaluate as evaluate_lib
from fgmask_jax.train import optim
from fgmask_jax.train import state as state_lib
from fgmask_jax.train.loop import Loop, Trained
from fgmask_jax.train.steps import Steps, check_batch, make_mesh


def fit_and_test(config: ml_collections.ConfigDict, workdir: str, train_source,
                 train_indices: np.ndarray, test_source, test_indices: np.ndarray, *,
                 mesh=None, test_name: str = "test split") -> dict:
    """One model: trained on ``train_source[train_indices]`` less a validation subset, then
    tested once on ``test_source[test_indices]``. The validation persons are split in two
    (`split_validation`): one half early-stops and picks the checkpoint, the other fits
    the temperatures of the calibration.

    Resumes from ``workdir``'s latest good checkpoint if there is one, else starts from
    ``config.init_from`` if set, else from ``config.pretrained``'s trunk, else from
    scratch. ``test_name`` says in the log and report what was tested. Returns
    {"test": {task: summary}, "validation": {...} (the checkpoint's half), "steps",
    "best_step", "calibration", "calibration_subsets", "calibration_by_group",
    "calibration_by_group_skipped", "subgroups", "timing"}.
    """
    began = time.perf_counter()
    mesh = mesh or make_mesh()
    check_batch(config.batch_size, mesh)
    config = runs.with_resolved_dtype(config)  # config.json says what the run computed in
    state_lib.record_config(workdir, config)
    if config.get("runlocal"):
        logging.info("runlocal: a shrunk run for a laptop CPU (image_size=%d, %s epochs)",
                     config.image_size, config.num_epochs)
    fit, val = split_train(config, train_source, train_indices)
    stop, held, subsets = split_validation(config, train_source, val)
    steps_per_epoch, total_steps = step_counts(config, len(fit))
    logging.info("%s/%s: %d fit, %d val (%d early-stop, %d fit the temperature), %d test "
                 "examples; %d steps of %d on %d devices", config.dataset, config.protocol,
                 len(fit), len(val), len(stop), len(held), len(test_indices), total_steps,
                 config.batch_size, mesh.size)

    model = runs.make_model(config)
    tx, schedule = optim.make_optimizer(config, steps_per_epoch, total_steps)
    steps = Steps(model, tx, config, mesh)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                      config.keep_checkpoints)
    # best/ keeps one more than checkpoints/: the best step of every checkpoint kept, even
    # when a crash left a best newer than the last checkpoint (Loop._save).
    keep = config.keep_checkpoints
    best_ckpt = checkpointing.Checkpointer(os.path.join(workdir, "best"),
                                           keep + 1 if keep else None)
    state, meta = state_lib.start(steps, model, config, ckpt)
    start = int(meta["step"])
    # Best checkpoints after the resumed step belong to steps that are run again.
    if dropped := best_ckpt.delete_after(start):
        logging.info("Dropped best checkpoints of steps %s (after step %d, run again)",
                     dropped, start)

    writer = writers.MetricWriter(workdir)
    loop = Loop(steps, config, ckpt=ckpt, best_ckpt=best_ckpt, writer=writer,
                schedule=schedule, total_steps=total_steps,
                eval_every=config.eval_every_steps or steps_per_epoch, began=began,
                profile_dir=os.path.join(workdir, "profile"))
    trained = loop.run(state, meta, train_source, fit, stop)
    # The test split is read once, by the best model on the validation subset.
    state, tested_step = runs.restore_best(trained.state, trained.meta, best_ckpt, ckpt)
    if tested_step in best_ckpt.all_steps():  # a finished run keeps its best state only
        best_ckpt.delete_all_but(tested_step)
    ckpt.close()
    best_ckpt.close()
    result, calibration = test(steps, state, trained, config, workdir, test_source,
                               test_indices, subsets=subsets, temperature_source=train_source,
                               temperature_indices=held if subsets["split"] else None)
    writer.write(int(trained.meta["step"]), evaluate_lib.flat(result["test"], "test"))
    writer.close()
    logging.info("Test metrics (%s, best validation model):\n%s", test_name,
                 report_lib.format_table(result["test"]))
    if jax.process_index() == 0:
        write_results(workdir, result)
        report(workdir, config, model, state, result, calibration, mesh=mesh,
               test_name=test_name,
               tested_step=tested_step, test_source=test_source, test_indices=test_indices)
    return result


def fit_val_indices(labels: dict[str, np.ndarray], config) -> tuple[np.ndarray, np.ndarray]:
    """The training examples carved into fit and validation (by person under subject and
    lopo) by ``config.split_seed``: indices into ``labels``' arrays."""
    seed = config.split_seed
    if config.protocol in ("subject", "lopo"):
        return splits.subject_split(labels["subject_id"], seed, config.val_fraction)
    if config.protocol == "photo":  # copies of one photo on one side only
        return splits.photo_split(labels["photo_id"], seed, config.val_fraction)
    return splits.study_split(len(labels["subject_id"]), seed, config.val_fraction)


def split_train(config, source, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation): ``indices`` into ``source`` carved by `fit_val_indices`."""
    indices = np.asarray(indices)
    labels = pipeline.read_labels(source)
    fit, val = fit_val_indices({k: v[indices] for k, v in labels.items()}, config)
    return indices[fit], indices[val]


MIN_PERSONS_TO_SPLIT = 4  # the fewest validation persons split into two halves


def stop_temperature_split(subject_ids: np.ndarray,
                           seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The validation images' persons in two halves by a seeded draw: (stop, temperature),
    sorted int64 indices into ``subject_ids``; no person in both. The stop half (the larger
    for an odd number of persons) early-stops and picks the checkpoint; the temperature
    half fits the calibration's temperatures, on persons that did not pick the model.

    A pure function of the set of persons and ``seed`` (`config.split_seed`), drawn from a
    stream of its own (entropy ``(seed, 1)``), not the permutation that carved the
    validation persons. None for fewer than `MIN_PERSONS_TO_SPLIT` persons.
    """
    subject_ids = np.asarray(subject_ids)
    persons = np.unique(subject_ids)
    if len(persons) < MIN_PERSONS_TO_SPLIT:
        return None
    drawn = np.random.default_rng((seed, 1)).permutation(persons)
    held = np.isin(subject_ids, drawn[: len(persons) // 2])
    return np.flatnonzero(~held), np.flatnonzero(held)


def split_validation(config, source, val: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """(stop, temperature, subsets): the validation indices ``val`` into ``source`` split by
    `stop_temperature_split`; with too few persons both are the whole of ``val``.

    subsets: {"split": bool, "note": in words, "stop" and "temperature": {"persons":
    sorted ids, "images": count}}, for results.json and the report.
    """
    val = np.asarray(val)
    subjects = pipeline.read_labels(source)["subject_id"][val]
    halves = stop_temperature_split(subjects, config.split_seed)
    stop, held = (val, val) if halves is None else (val[halves[0]], val[halves[1]])

    def described(ix):
        persons = np.unique(subjects[np.isin(val, ix)])
        return {"persons": [int(p) for p in persons], "images": int(len(ix))}

    subsets = {"split": halves is not None, "stop": described(stop),
               "temperature": described(held)}
    persons, images = len(subsets["temperature"]["persons"]), len(held)
    if halves is None:
        subsets["note"] = (
            "temperature fitted on the checkpoint-selection subset: too few persons to split "
            f"({_persons(persons)} in validation, {images} images; {MIN_PERSONS_TO_SPLIT} "
            "needed)")
    else:
        subsets["note"] = (
            f"temperature fitted on {_persons(persons)} of the validation subset ({images} "
            f"images) that did not choose the checkpoint; the other "
            f"{_persons(len(subsets['stop']['persons']))} ({len(stop)} images) early-stopped "
            "and chose it")
    return stop, held, subsets


def _persons(n: int) -> str:
    return f"{n} person" + ("" if n == 1 else "s")


def step_counts(config, num_fit: int) -> tuple[int, int]:
    """(steps per epoch, total steps) of a run of ``config`` on ``num_fit`` examples.

    Raises:
      ConfigError: ``num_fit`` examples make no batch of ``config.batch_size``.
    """
    steps_per_epoch = num_fit // config.batch_size
    if steps_per_epoch == 0:
        raise errors.ConfigError(
            f"{num_fit} training examples make no batch of config.batch_size="
            f"{config.batch_size}; set a smaller one (main: --config.batch_size=N; study, "
            "mask_gap: --neural_override=batch_size=N)"
        )
    total = config.num_train_steps or int(math.ceil(config.num_epochs * steps_per_epoch))
    return steps_per_epoch, int(total)


def test(steps: Steps, state, trained: Trained, config, workdir: str, test_source,
         test_indices, *, subsets: dict | None = None, temperature_source=None,
         temperature_indices: np.ndarray | None = None) -> tuple[dict, dict]:
    """(results, calibration): the best model on the test split (once), on the validation
    subset that chose it, and on ``temperature_source[temperature_indices]`` (the
    validation persons that did not; None: the validation subset itself): the metrics, a
    temperature per task fitted on the latter and judged on test, overall and per age
    group and mask kind, and the accuracy of each subgroup of test persons.

    subsets: `split_validation`'s description, kept in the results."""
    test_metrics, test_out = evaluate_lib.evaluate(
        steps, state, evaluate_lib.host_eval_batches(steps, test_source, test_indices, config,
                                                     trained.workers),
        config, os.path.join(workdir, "predictions.npz"), return_outputs=True)
    validation, val_out = evaluate_lib.evaluate(steps, state, trained.val_batches(), config,
                                                return_outputs=True)
    held_out = val_out
    if temperature_indices is not None:
        _, held_out = evaluate_lib.evaluate(
            steps, state, evaluate_lib.host_eval_batches(
                steps, temperature_source, temperature_indices, config, trained.workers),
            config, return_outputs=True)

    def by_task(out, key):
        return {t: out[f"{key}_{t}"] for t in config.tasks}

    calibration = calibration_lib.calibrate_tasks(
        by_task(held_out, "logits"), by_task(held_out, "label"),
        by_task(test_out, "logits"), by_task(test_out, "label"),
        eval_subjects={t: test_out["subject_id"] for t in config.tasks},
        seed=config.split_seed)
    tested = test_out["index"]  # the tables are assembled by dataset index
    if not np.array_equal(tested, np.sort(test_indices)):
        raise RuntimeError(f"the test pass evaluated {len(tested)} images, not the "
                           f"{len(test_indices)} asked for: a bug in the evaluation batches")
    groups = group_variables(test_source, tested)
    subgroups = subgroups_lib.subgroup_accuracy(
        by_task(test_out, "label"), by_task(test_out, "pred"), test_out["subject_id"], groups,
        group_names=dict(labels_lib.TASKS), seed=config.split_seed)
    temperatures = {t: c["temperature"] for t, c in calibration.items()}
    by_group, skipped = calibration_by_group(config, test_out, temperatures, groups)
    return {"steps": int(trained.meta["step"]), "best_step": trained.meta["best_step"],
            "test": test_metrics, "validation": validation,
            "calibration": calibration_lib.scalars(calibration),
            # Where the predictor marks an input uncertain: judged on the same held-out
            # persons as the temperature, with it.
            "ood_threshold": calibration_lib.ood_threshold(by_task(held_out, "logits"),
                                                           temperatures),
            "calibration_subsets": subsets or {}, "calibration_by_group": by_group,
            "calibration_by_group_skipped": skipped, "subgroups": subgroups,
            "timing": trained.timing}, calibration


CALIBRATION_GROUPS = ("age_group", "mask_kind")


def group_variables(source, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The group variables of ``source[indices]``: every task's label, and ``mask_kind``
    where the dataset records it."""
    groups = {g: v[indices] for g, v in pipeline.read_labels(source).items()
              if g in labels_lib.TASKS}
    if (kinds := pipeline.read_mask_kinds(source)) is not None:
        groups["mask_kind"] = kinds[indices]
    return groups


def calibration_by_group(config, outputs: dict[str, np.ndarray], temperatures: dict,
                         groups: dict[str, np.ndarray]) -> tuple[dict, dict[str, str]]:
    """(calibration per age group and per mask kind of ``outputs`` (``logits_<task>``,
    ``label_<task>``, ``subject_id``), {group left out: why}).

    temperatures: {task: T}, or {task: float[N]} one per image (pooled folds).
    """
    present = {g: groups[g] for g in CALIBRATION_GROUPS if g in groups}
    skipped = {g: f"{config.dataset} does not record each image's {g}"
               for g in CALIBRATION_GROUPS if g not in groups}
    by_group = calibration_lib.calibration_by_group(
        {t: outputs[f"logits_{t}"] for t in config.tasks},
        {t: outputs[f"label_{t}"] for t in config.tasks}, temperatures,
        outputs["subject_id"], present, group_names=dict(labels_lib.TASKS),
        seed=config.split_seed)
    return by_group, skipped


def write_results(workdir: str, result: dict) -> None:
    """``results.json``; predictions.npz is written first: a folder with results.json is a
    finished run."""
    writers.write_json(os.path.join(workdir, "results.json"), {
        "best_step": result["best_step"], "steps": result["steps"], "test": result["test"],
        "validation": result["validation"], "calibration": result["calibration"],
        "ood_threshold": result["ood_threshold"],
        **{k: result[k] for k in ("calibration_subsets", "calibration_by_group",
                                  "calibration_by_group_skipped")},
        "subgroups": result["subgroups"], "timing": result["timing"]})


def report(workdir: str, config, model, state, result: dict, calibration: dict, *, mesh,
           test_name: str, tested_step: int, test_source, test_indices) -> None:
    """``report.md`` and its figures: metrics, calibration, subgroups, saliency."""
    steps, best = result["steps"], result["best_step"]
    report_lib.write_report(
        workdir,
        f"{config.model} on {config.dataset}, protocol={config.protocol}",
        {"test": result["test"], "validation": result["validation"]},
        notes=[
            f"tasks: {', '.join(config.tasks)}; image size {config.image_size}; "
            f"batch {config.batch_size} on {mesh.size} devices; tested on the {test_name}",
            start_note(config, state.params),
            f"trained {steps} steps; best validation at step {best} "
            f"({config.early_stopping_metric}); the test examples were read once, by the "
            + ("model of that step" if tested_step == best else
               f"model of step {tested_step} (the best one's checkpoint was lost)"),
            "majority rate: the accuracy of always answering the most frequent true class",
            f"validation (below): the images that chose the checkpoint; {subsets_note(result)}",
            f"out-of-distribution threshold {result['ood_threshold']:.3f}: prediction calls an "
            "input uncertain above it (the 95th percentile of the ood_score on the "
            "temperature's held-out images; docs/predicting.md)",
        ],
    )
    sections = [report_lib.calibration_section(workdir, calibration,
                                               fitted_on=fitted_on(result)),
                report_lib.calibration_group_section(result["calibration_by_group"],
                                                     result["calibration_by_group_skipped"]),
                report_lib.subgroup_section(result["subgroups"])]
    if config.get("saliency_images", 0) > 0:
        sections.append(saliency_section(workdir, model, state, test_source, test_indices,
                                         config))
    report_lib.append_sections(workdir, sections)


def subsets_note(result: dict) -> str:
    """`split_validation`'s note of a run's results, or what a run without one did."""
    return result.get("calibration_subsets", {}).get(
        "note", "temperature fitted on the checkpoint-selection subset")


def fitted_on(result: dict) -> str:
    """Where a run's temperatures were fitted, in words, for the report."""
    subsets = result.get("calibration_subsets") or {}
    if not subsets:
        return "the validation subset"
    held = subsets["temperature"]
    size = f"{_persons(len(held['persons']))}, {held['images']} images"
    if subsets["split"]:
        return f"the validation persons that did not choose the checkpoint ({size})"
    return (f"the whole validation subset ({size}), which also chose the checkpoint: too few "
            "persons to split")


def saliency_section(workdir: str, model, state, source, indices, config) -> str:
    """Where the model looks, over ``config.saliency_images`` test images drawn at random (by
    ``config.split_seed``: the same for every training seed, in index order): Grad-CAM at the
    last feature map of at least 4x4 (a ResNet's last map is 2x2 at 64 px), the share of
    attribution on each image's mask, above it and elsewhere (from the dataset's landmarks;
    without them, the upper and lower half of the image) with intervals by person, and its
    controls (`saliency_controls.controlled_shares`: unmasked twins where the dataset has them, top
    layers randomised, integrated gradients from a black image). Writes the figure and
    ``saliency.json``; returns the markdown. Runs on this process's devices only."""
    indices = np.asarray(indices)
    rng = np.random.default_rng(config.split_seed)
    indices = np.sort(rng.choice(indices, min(config.saliency_images, len(indices)),
                                 replace=False))
    loaded = pipeline.load_all(source, indices, config.image_size)
    images = loaded["image"]
    variables = jax.device_get(state_lib.model_variables(state.params, state.batch_stats))
    h, w = images.shape[1:3]
    if (on := pipeline.mask_regions(source, indices, config.image_size)) is not None:
        top = np.where(on.any(2), np.arange(h), h).min(1)  # each mask's first row
        above = np.arange(h)[None, :, None] < top[:, None, None]
        regions = {"above the mask": np.broadcast_to(above, on.shape), "on the mask": on,
                   "elsewhere": ~on & ~above}
    else:
        upper = saliency_lib.rows_above(h, w, h // 2)
        regions = {"upper half": upper, "lower half (mask)": ~upper}
    twins = saliency_controls.load_twins(config.dataset, pipeline.data_dir(config), source,
                                         indices, config.image_size)
    if not isinstance(twins, str):
        twins = (np.asarray(pipeline.normalize(twins[0], jnp.float32)), twins[1])
    black = np.asarray(pipeline.normalize(np.zeros((1, 1, 1, 3), np.uint8), jnp.float32))
    numbers, mean_maps = saliency_controls.controlled_shares(
        model, variables, np.asarray(pipeline.normalize(images, jnp.float32)),
        loaded["subject_id"], regions, model_name=config.model, twins=twins,
        batch_size=config.batch_size, seed=config.split_seed, ig_baseline=("black", black))
    report_lib.plot_mean_saliency(images.mean(0), mean_maps,
                                  os.path.join(workdir, "saliency_test.png"), "test: Grad-CAM")
    writers.write_json(os.path.join(workdir, "saliency.json"), saliency_controls.jsonable(numbers))
    return report_lib.saliency_section(numbers, "saliency_test.png")


def start_note(config, params) -> str:
    """Where the weights came from and what was trained, for the report."""
    if config.get("init_from"):
        start = f"started from the run {config.init_from}"
    elif config.get("pretrained"):
        start = (f"trunk started from the pretrained weights {config.pretrained}, "
                 "heads from scratch")
    else:
        start = "trained from scratch"
    frozen = (f"frozen: {config.freeze} ({optim.trained_and_frozen(params, config)})"
              if config.get("freeze") else "nothing frozen")
    rate = config.get("trunk_lr_multiplier", 1.0)
    return f"{start}; {frozen}" + (f"; trunk learning rate x{rate:g}" if rate != 1.0 else "")
