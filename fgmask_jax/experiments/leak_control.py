"""A control for the copy leak: the study and photo protocols trained on as many persons as
the subject protocol.

The subject protocol trains on 75% of the persons; the study and photo protocols train
on nearly all of them, so part of ``study − subject`` may be the number of training
persons, not what was seen. The control runs every method of the comparison again under
``study`` and ``photo`` with the training split cut to the subject training split's
number of persons (drawn at random with ``split_seed``) and tests it on the test images
of those persons only: every test person is still one seen in training, as the protocol
has it, and only the number of training persons changes.

    out = run_control(workdir, prepared, num_samples=1000, seed=0)

Each run goes in ``workdir/<protocol>_<K>persons/<method>[/<task>][.seed<s>]`` and is not
run again once it holds results.json; `control_rows` scores them against the subject
protocol's runs.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import logging

from fgmask_jax import errors
from fgmask_jax.evaluation import bootstrap, tables
from fgmask_jax.experiments import study

CONTROLLED = ("study", "photo")  # the protocols cut, each set against ``subject``


def folder_of(protocol: str, persons: int) -> str:
    """The control's folder of ``protocol`` in the comparison's workdir."""
    return f"{protocol}_{persons}persons"


def draw_persons(subject_ids: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Sorted ids of ``count`` of the persons in ``subject_ids``, drawn at random with
    ``seed`` (the split seed): int[count].

    Raises:
      errors.ConfigError: fewer persons than ``count``.
    """
    persons = np.unique(subject_ids)
    if count > len(persons):
        raise errors.ConfigError(f"a cut to {count} persons needs as many; the split has "
                                 f"{len(persons)}")
    return np.sort(np.random.default_rng(seed).permutation(persons)[:count])


def cut_indices(train_subjects: np.ndarray, test_subjects: np.ndarray,
                persons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of the images of ``persons`` in a protocol's two splits."""
    return (np.flatnonzero(np.isin(train_subjects, persons)),
            np.flatnonzero(np.isin(test_subjects, persons)))


def run_control(workdir: str, prepared: dict, *, num_samples: int, seed: int) -> dict:
    """Trains (or reuses) each run of ``prepared['study']`` and ``prepared['photo']`` on its
    protocol's training split cut to the subject training split's persons, tests it on the
    test images of the drawn persons, and scores it against ``workdir/subject``'s runs.

    Args:
      prepared: {protocol: `study.prepare`'s (runs, configs)}, ``subject`` among them.

    Returns:
      {"persons": K, "protocols": [the controlled ones], "sizes": {protocol: {...}},
      "rows": [accuracy rows with protocol ``<p>@K``], "subject_rows": [subject's],
      "inflation": [{method, task, versus:
      ``<p>@K``, value, low, high, p, excludes_0, p_holm, excludes_0_holm}] (``<p>@K``
      minus subject), "runs": [{folder, status, seconds}]}.
    """
    from fgmask_jax.data import pipeline

    runs, configs = prepared["subject"]
    data_dir = pipeline.data_dir(configs[0])
    dataset, split_seed = configs[0].dataset, configs[0].split_seed
    subject_train, _ = pipeline.split_names("subject")
    k = len(np.unique(pipeline.read_labels(
        pipeline.open_split(dataset, subject_train, data_dir))["subject_id"]))
    controlled = [p for p in CONTROLLED if p in prepared]
    rows, records, sizes = [], [], {}
    for p in controlled:
        names = pipeline.split_names(p)
        sources = [pipeline.open_split(dataset, n, data_dir) for n in names]
        labels = [pipeline.read_labels(s) for s in sources]
        persons = draw_persons(labels[0]["subject_id"], k, split_seed)
        train_ix, test_ix = cut_indices(labels[0]["subject_id"], labels[1]["subject_id"],
                                        persons)
        sizes[p] = {"train_images": int(len(train_ix)), "test_images": int(len(test_ix)),
                    "test_persons": int(len(np.unique(labels[1]["subject_id"][test_ix])))}
        here = os.path.join(workdir, folder_of(p, k))
        for run, config in zip(*prepared[p], strict=True):
            record = run_cut(os.path.join(here, run.folder), config, sources,
                             (train_ix, test_ix), f"{p}@{k}")
            records.append({**record, "folder": os.path.join(folder_of(p, k), run.folder)})
        cut_rows, _, _ = study.summarize_runs(here, prepared[p][0], num_samples=num_samples,
                                              seed=seed)
        rows += study.accuracy_rows(cut_rows, f"{p}@{k}")
    inflation = control_rows(workdir, runs, controlled, k, num_samples=num_samples,
                             seed=seed)
    subject_rows, _, _ = study.summarize_runs(os.path.join(workdir, "subject"), runs,
                                              num_samples=num_samples, seed=seed)
    return {"persons": k, "protocols": controlled, "sizes": sizes, "rows": rows,
            "subject_rows": study.accuracy_rows(subject_rows, "subject"),
            "inflation": inflation, "runs": records}


def control_rows(workdir: str, runs, controlled, k: int, *, num_samples: int,
                 seed: int) -> list[dict]:
    """Per method, task and controlled protocol: accuracy under ``<p>@K`` minus that under
    subject, paired over the union of their test persons (`bootstrap.difference_test`),
    with Holm's correction over all of them (`bootstrap.with_holm`)."""
    out = []
    for (method, _), group in study.by_method(runs).items():
        for task in group[0].tasks:
            theirs = study.correct_by_seed(os.path.join(workdir, "subject"), group, task)
            for p in controlled:
                ours = study.correct_by_seed(os.path.join(workdir, folder_of(p, k)), group,
                                             task)
                if ours is None or theirs is None:
                    continue
                d = bootstrap.difference_test(ours, theirs, num_samples=num_samples,
                                              seed=seed)
                out.append({"method": method, "task": task, "versus": f"{p}@{k}", **d})
    bootstrap.with_holm(out)
    return out


def run_cut(folder: str, config, sources, indices, name: str) -> dict:
    """One run of the control in ``folder`` unless it holds results.json: the neural
    trainer (`train.fit_and_test`) or `classical_on` on ``sources[0][indices[0]]``,
    tested on ``sources[1][indices[1]]``. Returns {folder, status, seconds}."""
    record = {"folder": folder, "description": study.describe(config)}
    if os.path.exists(os.path.join(folder, "results.json")):
        return {**record, "status": "skipped", "seconds": None}
    logging.info("leak control: running %s (%s)", folder, name)
    t0 = time.perf_counter()
    (train_source, test_source), (train_ix, test_ix) = sources, indices
    if study.is_neural(config):
        from fgmask_jax import train

        train.fit_and_test(config, folder, train_source, train_ix, test_source, test_ix,
                           test_name=f"test persons of {name}")
    else:
        classical_on(config, folder, train_source, train_ix, test_source, test_ix)
    return {**record, "status": "ran", "seconds": round(time.perf_counter() - t0, 1)}


def classical_on(config, folder: str, train_source, train_ix, test_source,
                 test_ix) -> dict:
    """A classical method (`baselines.run`'s features and classifiers) trained on
    ``train_source[train_ix]`` and tested on ``test_source[test_ix]``; writes config.json,
    predictions.npz and results.json in ``folder`` as `baselines.run.run_and_evaluate`
    does for a whole split. Returns {task: summary}.

    `baselines.run` reads whole splits only; this is its feature-and-classifier step on
    given indices (no report.md).
    """
    from fgmask_jax.baselines import classifiers
    from fgmask_jax.baselines import run as run_lib
    from fgmask_jax.data import labels as labels_lib
    from fgmask_jax.data import pipeline
    from fgmask_jax.evaluation import metrics as metrics_lib
    from fgmask_jax.evaluation import writers

    os.makedirs(folder, exist_ok=True)
    writers.write_config(folder, config)
    parts = []
    for source, ix in ((train_source, train_ix), (test_source, test_ix)):
        part = pipeline.load_all(source, ix, config.image_size, config.workers)
        photo_ids = pipeline.read_labels(source).get("photo_id")
        if photo_ids is not None:
            part["photo_id"] = photo_ids[ix]
        parts.append(part)
    fn = run_lib.feature_fn(config)
    train, test = parts
    train_x, test_x = run_lib.fold_features(
        config, run_lib.extract(fn, train["image"], config.batch_size),
        run_lib.extract(fn, test["image"], config.batch_size))
    predictions, results = {}, {}
    for task in config.tasks:
        fitted = classifiers.fit_classifier(
            config.classifier, train_x, train[task], train["subject_id"],
            protocol=config.protocol, grid=tuple(config.grid), num_folds=config.cv_folds,
            seed=config.split_seed, photo_ids=train.get("photo_id"))
        predictions[task] = fitted.model.predict(test_x)
        results[task] = metrics_lib.summarize(test[task], predictions[task],
                                              len(labels_lib.TASKS[task]))
    writers.write_predictions(os.path.join(folder, "predictions.npz"), {
        "index": test["index"], "subject_id": test["subject_id"],
        **{f"label_{t}": test[t] for t in config.tasks},
        **{f"pred_{t}": predictions[t] for t in config.tasks}}, config.tasks)
    writers.write_json(os.path.join(folder, "results.json"), {"test": results})
    return results


def section(control: dict, titles: dict[str, str]) -> list[str]:
    """leak.md's section on the control: accuracy under each cut protocol beside subject's,
    and what is left of the inflation, with Holm's decisions."""

    def pct(r):
        return tables.seeded(r, tables.pct)

    def sign(r):
        return tables.interval(r, tables.sign) + (" ‡" if r and r["excludes_0_holm"] else "")

    k, cut = control["persons"], [f"{p}@{control['persons']}" for p in control["protocols"]]
    acc = {(r["method"], r["task"], r["protocol"]): r for r in control["rows"]}
    acc.update({(r["method"], r["task"], "subject"): r for r in control["subject_rows"]})
    up = {(r["method"], r["task"], r["versus"]): r for r in control["inflation"]}
    sizes = "; ".join(f"{p}@{k}: {s['train_images']:,} training images, {s['test_images']:,} "
                      f"test images of {s['test_persons']} persons"
                      for p, s in control["sizes"].items())
    lines = ["", f"## Control: {', '.join(control['protocols'])} trained on {k} persons, as "
             "many as subject", "",
             f"The subject protocol trains on the {k} persons of its training split; the "
             "others on nearly all. Here "
             + " and ".join(control["protocols"]) + f" ran again with their training split "
             f"cut to {k} persons drawn at random (split_seed) and tested on those persons' "
             "test images only, so every test person was still seen in training: what is "
             "left of the inflation over subject is not the number of training persons. "
             f"{sizes}"
             + (f"; {control['seconds'] / 60:.1f} min" if control.get("seconds") is not None
                else "") + ".", "",
             "| method | task | " + " | ".join(cut) + " | subject | "
             + " | ".join(f"{c} − subject" for c in cut) + " |",
             "|---|---|" + "---:|" * (2 * len(cut) + 1)]
    tasks = list(dict.fromkeys(r["task"] for r in control["rows"]))
    for m in (m for m in titles if any(r["method"] == m for r in control["rows"])):
        for t in tasks:
            cells = [pct(acc.get((m, t, c))) for c in (*cut, "subject")]
            cells += [sign(up.get((m, t, c))) for c in cut]
            lines.append(f"| {titles[m]} | {t} | " + " | ".join(cells) + " |")
    lines += ["", "‡: still excludes 0 after Holm's correction. "
              + tables.holm_sentence(control["inflation"], "differences")]
    return lines
