"""What the mask costs: models trained on masked or unmasked faces, each tested on both
versions of the same test photos.

    out = run_mask_gap(workdir, protocol="photo", methods=("multitask_cnn",), runlocal=True)

Needs data with an unmasked twin of every masked photo (config_lib.PAIRED_DATA). Each
study run (`study.plan`) of a neural method is trained on each training set (`Cell`) of
the protocol's training photos: ``masked`` (every masked copy), ``masked_one`` (one
masked copy per photo, `one_copy_per_photo`) and ``unmasked`` (the twins), all on the
masked set's schedule (`same_schedule`: its number of steps, validation checks and
warmup); each model is then tested on the masked test split and on its unmasked twin
(`predict_split`). Every accuracy counts each test photo once (its masked copies'
mean), and every difference is paired by photo: the gap is a model's accuracy on the
unmasked twins minus that on the masked copies of the same photos, the cost a model
trained and tested unmasked minus one trained and tested masked, each with an interval
and a p-value from a bootstrap over test persons, the photos nested in them
(`bootstrap.difference_test`), and Holm's correction over all of them (`score`).
``mask_gap.md`` (`mask_gap_report`) and ``mask_gap.json`` hold the tables.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
from absl import logging

from fgmask_jax import config_lib, errors, workdir_lock
from fgmask_jax.evaluation import bootstrap
from fgmask_jax.experiments import mask_gap_report, study

METHODS = ("multitask_cnn", "multitask_resnet", "single_task_cnn", "single_task_resnet")
DEFAULT_METHODS = ("multitask_cnn", "multitask_resnet")
# The protocols whose test photos are unseen in training, so that a test photo's twin is
# unseen too.
PROTOCOLS = ("photo", "subject")
assert set(PROTOCOLS) <= set(config_lib.PROTOCOLS), "mask_gap.PROTOCOLS: an unknown protocol"
DATA = config_lib.PAIRED_DATA  # the data with unmasked twins
TRAININGS = ("masked", "masked_one", "unmasked")
TRAINING_TEXT = {"masked": "masked, all copies", "masked_one": "masked, one copy a photo",
                 "unmasked": "unmasked twins"}
TESTS = ("masked", "unmasked")
# --runlocal: the runlocal configs (ResNet-18 and the CNN at 64 px), shortened from 8 to 5
# epochs of the all-copies set, so that the three training sets of the two default methods
# fit about 30 minutes on two CPU cores (ResNet-18: about 5 minutes a run).
RUNLOCAL_OVERRIDES = {"num_epochs": 5.0}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One training run: a study run (method, task) trained on one training set."""

    run: study.Run
    training: str  # one of TRAININGS

    @property
    def folder(self) -> str:
        return os.path.join(self.run.folder, self.training)


@dataclasses.dataclass(frozen=True)
class Splits:
    """The protocol's four splits, opened, and the training sets drawn from them."""

    names: dict[str, str]  # {"train", "test", "unmasked_train", "unmasked_test"}: split names
    sources: dict  # the same keys: their data sources
    labels: dict[str, dict[str, np.ndarray]]  # the same keys: their labels
    training: dict[str, tuple[str, np.ndarray]]  # training set -> (split key, indices)


def splits_of(protocol: str) -> dict[str, str]:
    """{"train", "test", "unmasked_train", "unmasked_test"}: the split names."""
    from fgmask_jax.data import pipeline

    train, test = pipeline.split_names(protocol)
    return {"train": train, "test": test, "unmasked_train": pipeline.unmasked(train),
            "unmasked_test": pipeline.unmasked(test)}


def one_copy_per_photo(photo_ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """Sorted indices of one image per photo, drawn at random: int64[photos]."""
    photo_ids = np.asarray(photo_ids)
    order = np.random.default_rng(seed).permutation(len(photo_ids))
    _, first = np.unique(photo_ids[order], return_index=True)
    return np.sort(order[first])


def plan(protocol: str, *, methods=DEFAULT_METHODS, runlocal: bool = False,
         resnet: str = "", one_copy: bool = True,
         data: str = "synthetic_paired", seeds: int = 1) -> list[Cell]:
    """The cells of the mask gap: every run of ``methods`` (each of its ``seeds`` training
    seeds: `study.plan`) on every training set.

    Raises:
      errors.ConfigError: an unknown protocol or method, or data without unmasked twins.
    """
    if protocol not in PROTOCOLS:
        raise errors.ConfigError(
            f"protocol={protocol!r} is not one of: {', '.join(PROTOCOLS)}")
    if data not in DATA:
        raise errors.ConfigError(
            f"data={data!r}: the mask gap needs unmasked twins of the masked photos; only "
            f"{' and '.join(DATA)} have them (fgnet_paired is FG-NET with masked copies: see "
            "docs/beyond_the_study.md)")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise errors.ConfigError(
            f"methods {unknown or '(none)'}: choose from {', '.join(METHODS)}")
    trainings = TRAININGS if one_copy else ("masked", "unmasked")
    runs = study.plan(data, protocol, runlocal=runlocal, methods=tuple(methods),
                      resnet=resnet, seeds=seeds)
    return [Cell(r, t) for r in runs for t in trainings]


def step_budget(config, labels: dict[str, np.ndarray]) -> int:
    """The steps of a run of ``config`` on the training set ``labels`` (its fit part)."""
    return schedule_of(config, labels)[1]


def schedule_of(config, labels: dict[str, np.ndarray]) -> tuple[int, int]:
    """(steps per epoch, total steps) of a run of ``config`` on the training set
    ``labels``: its fit part, as the trainer carves it (`train.fit_val_indices`)."""
    from fgmask_jax import train

    fit, _ = train.fit_val_indices(labels, config)
    return train.step_counts(config, len(fit))


def same_schedule(config, masked_per_epoch: int, own_per_epoch: int) -> None:
    """Puts ``config`` (a copy) on the all-copies run's schedule, whatever its own training
    set's size: the steps are set by the caller; here a validation check every
    ``masked_per_epoch`` steps (every epoch of the all-copies set) and the warmup of that
    set, in steps.

    The trainer checks once per epoch of a run's own set and warms up for
    ``warmup_epochs`` of it; the one-copy and unmasked sets are about a third the size,
    so they would be checked three times as often (and early stopping's patience, counted
    in checks, would end them after a third of the images) and warmed up a third as long.
    Equal steps between checks are equal images seen between checks (one batch size).
    An ``eval_every_steps`` set by the user (``--neural_override``) is kept: it is already
    the same for every run.
    """
    if not config.eval_every_steps:
        config.eval_every_steps = masked_per_epoch
    if config.warmup_epochs:
        # The trainer warms up for int(warmup_epochs * own_per_epoch) steps: + 0.5 makes
        # that exactly the all-copies run's int(warmup_epochs * masked_per_epoch).
        config.warmup_epochs = (int(config.warmup_epochs * masked_per_epoch) + 0.5) \
            / own_per_epoch


def checks_of(steps: int, eval_every: int) -> int:
    """The validation checks of a run of ``steps`` steps checked every ``eval_every``
    (the trainer checks at each multiple and at the last step), if it is not stopped
    early."""
    return steps // eval_every + (1 if steps % eval_every else 0)


def predict_split(folder: str, source, config) -> dict[str, np.ndarray]:
    """The run in ``folder`` on every image of ``source``: {index, subject_id, label_<task>,
    pred_<task>}."""
    from fgmask_jax.data import pipeline
    from fgmask_jax.inference import Predictor

    data = pipeline.load_all(source, np.arange(len(source)), config.image_size)
    predictor = Predictor.from_workdir(folder, batch_size=config.batch_size)
    probs = predictor.probabilities(data["image"])
    out = {"index": data["index"].astype(np.int64),
           "subject_id": data["subject_id"].astype(np.int64)}
    for task in config.tasks:
        out[f"label_{task}"] = data[task].astype(np.int64)
        out[f"pred_{task}"] = np.argmax(probs[task], -1).astype(np.int64)
    return out


def _load(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: np.asarray(f[k]) for k in f.files}


def run_mask_gap(workdir: str, *, protocol: str = "photo", methods=DEFAULT_METHODS,
                 runlocal: bool = False, resnet: str = "", one_copy: bool = True,
                 data: str = "synthetic_paired", dataset: str = "", data_dir: str = "",
                 manual_dir: str = "", neural_overrides=None, num_samples: int = 1000,
                 seed: int = 0, command: str = "", seeds: int = 1) -> dict:
    """Trains the missing cells, tests each on both test sets, writes mask_gap.md/json.

    Args:
      workdir: each run in ``workdir/<method>[/<task>]/<training set>``.
      protocol: photo | subject: which photos are training and test photos.
      one_copy: also train on one masked copy per photo (``masked_one``).
      dataset, data_dir, manual_dir, neural_overrides: as `study.make_config` takes them.
      num_samples, seed: of the person bootstrap (seed: also of the one-copy draw).
      command: the command line, for the outputs.
      seeds: training seeds of each model (the same training and test sets): accuracies
        are their mean, and intervals resample persons and seeds.

    Returns:
      {"cells": [{method, task, train, test, value, low, high, n, photos, persons, seeds,
      image_accuracy, majority_rate}] (each photo counted once), "gaps" and "costs":
      [{method, task, train, value, low, high, p, excludes_0, p_holm, excludes_0_holm}]
      (paired by photo), "runs": [{folder, status, seconds, steps, eval_every, checks}],
      "sizes": {...}, "seconds": wall time}.

    Raises:
      errors.UserError: a protocol, data, method or override the mask gap has not
        (`errors.ConfigError`), data that cannot be built or whose test twins are not of
        the masked test photos (`errors.DataError`), or another live run holding
        ``workdir`` (`errors.WorkdirLockedError`).
    """
    from fgmask_jax.evaluation import writers

    began = time.perf_counter()
    cells = plan(protocol, methods=methods, runlocal=runlocal, resnet=resnet,
                 one_copy=one_copy, data=data, seeds=seeds)
    overrides = [*(RUNLOCAL_OVERRIDES.items() if runlocal else ()),
                 *(neural_overrides.items() if isinstance(neural_overrides, dict)
                   else neural_overrides or ())]
    configs = {c.run: study.make_config(c.run, dataset=dataset, data_dir=data_dir,
                                        manual_dir=manual_dir, neural_overrides=overrides)
               for c in cells}
    first = next(iter(configs.values()))
    splits = open_splits(first, protocol, seed)
    sizes = sizes_of(splits)
    photo_ids = {"masked": splits.labels["test"]["photo_id"],
                 "unmasked": splits.labels["unmasked_test"]["photo_id"]}
    check_same_photos(photo_ids)  # before any training: the differences pair photos
    # Held from here: the data is built (data that cannot be built leaves no workdir).
    with workdir_lock.held(workdir):
        os.makedirs(workdir, exist_ok=True)
        json_path = os.path.join(workdir, "mask_gap.json")
        previous = writers.read_json(json_path).get("runs", {})
        records = {}
        for cell in cells:
            records[cell.folder] = train_and_test(workdir, cell, configs[cell.run], splits,
                                                  previous.get(cell.folder, {}))
            writers.write_json(json_path, {"runs": {**previous, **records}})
        rows, gaps, costs = score(workdir, cells, photo_ids, num_samples=num_samples,
                                  seed=seed)
        seconds = time.perf_counter() - began
        runs = [records[c.folder] for c in cells]
        setting = {"data": data, "dataset": first.dataset, "protocol": protocol,
                   "splits": splits.names, "runlocal": runlocal, "methods": list(methods),
                   "num_samples": num_samples, "command": command, "sizes": sizes,
                   "seeds": seeds, "seconds": round(seconds, 1),
                   "eval_every_set": bool(first.eval_every_steps)}
        mask_gap_report.write_markdown(os.path.join(workdir, "mask_gap.md"), rows, gaps,
                                       costs, setting, runs, study.WORDING, TRAINING_TEXT,
                                       RUNLOCAL_OVERRIDES)
        writers.write_json(json_path, {"runs": {**previous, **records}, "setting": setting,
                                       "cells": rows, "gaps": gaps, "costs": costs})
    return {"cells": rows, "gaps": gaps, "costs": costs, "runs": runs, "sizes": sizes,
            "seconds": seconds}


def open_splits(config, protocol: str, seed: int) -> Splits:
    """Builds ``config``'s dataset if it is missing, opens the protocol's four splits and
    draws the training sets (``masked_one``'s copies with ``seed``)."""
    from fgmask_jax.data import build, pipeline

    build.build_or_explain(config.dataset, pipeline.data_dir(config),
                           config.manual_dir or None)
    names = splits_of(protocol)
    sources = {k: pipeline.open_split(config.dataset, v, pipeline.data_dir(config))
               for k, v in names.items()}
    labels = {k: pipeline.read_labels(s) for k, s in sources.items()}
    training = {"masked": ("train", np.arange(len(sources["train"]))),
                "masked_one": ("train", one_copy_per_photo(labels["train"]["photo_id"], seed)),
                "unmasked": ("unmasked_train", np.arange(len(sources["unmasked_train"])))}
    return Splits(names, sources, labels, training)


def sizes_of(splits: Splits) -> dict[str, dict[str, int]]:
    """{training set or test split: {"images", "photos", "persons"}}."""

    def size(labels, ix) -> dict[str, int]:
        return {"images": int(len(ix)),
                "photos": int(len(np.unique(labels["photo_id"][ix]))),
                "persons": int(len(np.unique(labels["subject_id"][ix])))}

    sizes = {t: size(splits.labels[src], ix) for t, (src, ix) in splits.training.items()}
    for t in ("test", "unmasked_test"):
        sizes[t] = size(splits.labels[t], np.arange(len(splits.sources[t])))
    return sizes


def train_and_test(workdir: str, cell: Cell, base_config, splits: Splits,
                   previous: dict) -> dict:
    """Trains ``cell`` unless it has results.json, and tests it on both test splits
    unless both test files are there; returns its record for mask_gap.json:
    {folder, steps, eval_every, checks, description, status, seconds}.

    Every training set runs on the all-copies set's schedule (`same_schedule`): the same
    steps (the same number of images seen, so the smaller sets are not also trained
    less), a validation check every epoch of the all-copies set, and its warmup.
    ``previous``: its record from an earlier call (for a finished run's time).
    """
    from fgmask_jax import train
    from fgmask_jax.evaluation import writers

    config = base_config.copy_and_resolve_references()
    src, ix = splits.training[cell.training]
    masked = splits.training["masked"][1]
    masked_per_epoch, config.num_train_steps = schedule_of(
        base_config, {k: v[masked] for k, v in splits.labels["train"].items()})
    own_per_epoch, _ = schedule_of(base_config, {k: v[ix] for k, v in
                                                 splits.labels[src].items()})
    same_schedule(config, masked_per_epoch, own_per_epoch)
    folder = os.path.join(workdir, cell.folder)
    files = {t: os.path.join(folder, f"test_{t}.npz") for t in TESTS}
    eval_every = ran_eval_every(folder, config.eval_every_steps)
    record = {"folder": cell.folder, "steps": config.num_train_steps,
              "eval_every": eval_every,
              "checks": checks_of(config.num_train_steps, eval_every) if eval_every else None,
              "description": study.describe(config)}
    results = os.path.join(folder, "results.json")
    if all(os.path.exists(p) for p in (*files.values(), results)):
        logging.info("mask_gap: %s is finished; not run again", folder)
        record.update(status="skipped", seconds=previous.get("seconds"))
        return record
    t0 = time.perf_counter()
    if not os.path.exists(results):
        logging.info("mask_gap: training %s (%s; a validation check every %d steps)",
                     cell.folder, record["description"], config.eval_every_steps)
        test = splits.sources["test"]
        train.fit_and_test(config, folder, splits.sources[src], ix, test,
                           np.arange(len(test)),
                           test_name=f"masked {splits.names['test']} split")
    for t, split in (("masked", "test"), ("unmasked", "unmasked_test")):
        p = predict_split(folder, splits.sources[split], config)
        writers.write_predictions(files[t], p, config.tasks)
    record.update(status="ran", seconds=round(time.perf_counter() - t0, 1))
    return record


def ran_eval_every(folder: str, planned: int) -> int | None:
    """The steps between validation checks of the run in ``folder``: ``planned``, or what
    its config.json says where an earlier version of this command trained it (None: once
    per epoch of its own training set, before the schedules were made the same)."""
    import json

    path = os.path.join(folder, "config.json")
    if not os.path.exists(os.path.join(folder, "results.json")) or not os.path.exists(path):
        return planned
    with open(path) as f:
        saved = json.load(f).get("eval_every_steps", planned)
    return int(saved) or None


def score(workdir: str, cells, photo_ids: dict[str, np.ndarray], *, num_samples: int,
          seed: int):
    """(rows, gaps, costs) from the cells' test files, each test photo counted once.

    rows: each model's accuracy on each test split (`bootstrap.photo_accuracy`: the mean
    over photos of the share of its images answered right; the unmasked test has one
    image a photo). gaps: a model's unmasked test minus its masked test, paired by photo
    and by model. costs: trained and tested unmasked minus trained and tested masked,
    paired by photo. Each difference carries a two-sided bootstrap p-value (``p``), its
    Holm-adjusted value over all gaps and costs (``p_holm``) and ``excludes_0`` /
    ``excludes_0_holm``.

    Args:
      photo_ids: {"masked": int[N], "unmasked": int[M]}: the photo of each image of the
        masked and unmasked test splits, by the ``index`` the test files record.

    Raises:
      errors.DataError: test files without ``index``, or masked and unmasked test files
        of different photos.
    """
    rows, gaps, costs = [], [], []
    for (method, _), seeds in study.by_method(dict.fromkeys(c.run for c in cells)).items():
        run = seeds[0]
        trainings = [c.training for c in cells if c.run == run]
        # Each (training, test) pair: the seeds' test files (the same images).
        preds = {(tr, te): [_load(os.path.join(workdir, r.folder, tr, f"test_{te}.npz"))
                            for r in seeds]
                 for tr in trainings for te in TESTS}
        photos = {key: _photos_of(ps[0], photo_ids[key[1]], os.path.join(
            workdir, run.folder, key[0], f"test_{key[1]}.npz")) for key, ps in preds.items()}
        for task in run.tasks:
            side = {key: (np.stack([p[f"label_{task}"] == p[f"pred_{task}"] for p in ps]),
                          ps[0]["subject_id"], photos[key])
                    for key, ps in preds.items()}
            for (tr, te), ps in preds.items():
                acc = bootstrap.photo_accuracy(*side[tr, te], num_samples=num_samples,
                                               seed=seed)
                rows.append({"method": method, "task": task, "train": tr, "test": te,
                             **acc, "image_accuracy": float(side[tr, te][0].mean()),
                             "majority_rate": photo_majority_rate(
                                 ps[0][f"label_{task}"], photos[tr, te])})
            for tr in trainings:
                d = bootstrap.difference_test(side[tr, "unmasked"], side[tr, "masked"],
                                              num_samples=num_samples, seed=seed,
                                              same_models=True)
                gaps.append({"method": method, "task": task, "train": tr, **d})
            for tr in (t for t in trainings if t != "unmasked"):
                # Trained and tested alike: unmasked on unmasked minus masked on masked.
                d = bootstrap.difference_test(side["unmasked", "unmasked"], side[tr, "masked"],
                                              num_samples=num_samples, seed=seed)
                costs.append({"method": method, "task": task, "train": tr, **d})
    bootstrap.with_holm(gaps + costs)
    return rows, gaps, costs


def photo_majority_rate(labels: np.ndarray, photos: np.ndarray) -> float:
    """The accuracy of always answering the most frequent class, each photo counted once
    (the copies of one photo share its labels)."""
    _, first = np.unique(photos, return_index=True)
    return float(np.bincount(labels[first]).max() / len(first))


def _photos_of(predictions: dict, photo_ids: np.ndarray, path: str) -> np.ndarray:
    """int[N]: the photo of each image of a test file, by its ``index`` into the split."""
    if "index" not in predictions:
        raise errors.DataError(f"{path} has no 'index': its images' photos are not known; "
                               "delete the file to test the run again")
    return np.asarray(photo_ids)[predictions["index"]]


def check_same_photos(photo_ids: dict[str, np.ndarray]) -> None:
    """Raises `errors.DataError` unless the masked and unmasked test splits hold the same
    photos (the twins of the masked copies): the differences are paired by photo."""
    masked, unmasked = (set(np.unique(photo_ids[t]).tolist()) for t in TESTS)
    if masked != unmasked:
        raise errors.DataError(
            f"the masked test split holds {len(masked)} photos and the unmasked one "
            f"{len(unmasked)}, {len(masked ^ unmasked)} of them on one side only: the twins "
            "must be those of the masked copies; build the dataset again")
