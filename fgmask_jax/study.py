r"""The study's eight methods in one command, compared with confidence intervals by person.

  python -m fgmask_jax.study --data=synthetic --protocol=study --workdir=DIR --runlocal
  python -m fgmask_jax.study --data=fgnet_mask --protocol=subject --workdir=DIR
  python -m fgmask_jax.study --data=synthetic --protocol=lopo --workdir=DIR --runlocal \
      --methods=lbp,tiny_image,eigenface,multitask_cnn
  python -m fgmask_jax.study --data=synthetic_paired --protocol=study,photo,subject \
      --workdir=DIR --runlocal

Runs LBP, Tiny Image, VGG-Face, Eigenface, the single-task CNN and ResNet (one run
per task), and the multi-task CNN and ResNet, each through the functions
``fgmask_jax.main`` calls, in ``DIR/<method>`` (``DIR/<method>/<task>`` for the
single-task ones). A method whose folder already holds ``results.json`` is not run
again. Then it writes:

- ``DIR/study.md``: accuracy per method and task with its 95% interval from a
  bootstrap over persons (`evaluation.bootstrap`), balanced accuracy and macro-F1,
  and the majority-class rate as the floor;
- ``DIR/study.csv``: one row per method x task x metric (value, low, high);
- ``DIR/study.png``: accuracies as grouped bars with the intervals as error bars;
- ``DIR/study.json``: what each run was and how long it took.

Intervals need each run's per-image predictions (``predictions.npz`` in its folder:
``subject_id``, ``label_<task>``, ``pred_<task>``); a run without them gets its
point values from ``results.json`` and no interval, and study.md says so.
Under ``--protocol=lopo`` (leave persons out) each method trains one model per fold
of persons (every method the same folds; ``--lopo_folds``); the neural methods
then take that many times longer.

Several protocols (``--protocol=study,photo,subject``) run the study once per
protocol in ``DIR/<protocol>`` and compare them in ``DIR/leak.md`` (and
``leak.csv``, ``leak.json``): per method and task the accuracy under each protocol
and the points by which the study's random image split inflates it over the
others (`run_comparison`). On ``synthetic_paired`` (about 3.4 masked copies of
each photo) that measures the copy leak of the study's protocol.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import time

import ml_collections
import numpy as np
from absl import flags, logging

from fgmask_jax import cli, config_lib
from fgmask_jax.data import labels as labels_lib
from fgmask_jax.evaluation import bootstrap

CONFIGS_DIR = config_lib.CONFIGS_DIR
TASKS = tuple(labels_lib.TASKS)
METHODS = ("lbp", "tiny_image", "vgg_face", "eigenface", "single_task_cnn",
           "single_task_resnet", "multitask_cnn", "multitask_resnet")
TITLES = {"lbp": "LBP", "tiny_image": "Tiny Image", "vgg_face": "VGG-Face",
          "eigenface": "Eigenface", "single_task_cnn": "single-task CNN",
          "single_task_resnet": "single-task ResNet", "multitask_cnn": "multi-task CNN",
          "multitask_resnet": "multi-task ResNet"}
CLASSICAL = ("lbp", "tiny_image", "eigenface")  # and vgg_face when given weights
PROTOCOLS = ("study", "subject", "photo", "lopo")
PROTOCOL_TEXT = {
    "study": "the study's random 75/25 image split (persons on both sides)",
    "subject": "a subject-disjoint 75/25 split (no person in train and test)",
    "photo": "75/25 of source photos: no masked copy of a test photo is trained on",
    "lopo": "leave persons out (folds of persons; every image predicted once by a model "
            "that never saw its person)"}
_DRAWN = ("procedurally drawn faces, not photographs; these numbers say nothing about real "
          "masked faces")
# --data -> (what it is, what the numbers do not say), in the reports' words.
DATA_TEXT = {
    "fgnet_mask": ("FGNET-MASK", ""),
    "synthetic": ("synthetic data", _DRAWN),
    "synthetic_paired": ("synthetic data", _DRAWN),
    "fgnet_paired": ("FG-NET with drawn masks", "FG-NET's photos with masks drawn from their "
                     "landmarks by fgmask_jax.masks, not FGNET-MASK's own masked images"),
}
# Several protocols at once (the copy leak) under --runlocal without --methods: the
# classical methods that fit in a minute or two and the two multi-task networks, so
# that three protocols finish in about 30 minutes on two CPU cores.
LEAK_RUNLOCAL_METHODS = ("lbp", "tiny_image", "eigenface", "multitask_cnn",
                         "multitask_resnet")
METRIC_TITLES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy",
                 "macro_f1": "macro-F1"}

# --runlocal: the neural runs keep their runlocal configs (ResNet-18 and the CNN at 64 px,
# 8 epochs: about 3 and 0.5 minutes each on two CPU cores). VGG-16 (134M parameters,
# most in fc6; about 1.2 s a step of 32 images even at 32 px) would take over half an
# hour at 64 px for 8 epochs, so the study runs it at 32 px for two epochs.
RUNLOCAL_NEURAL: dict = {}
RUNLOCAL_VGG = {"num_epochs": 2.0, "image_size": 32}


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of the study: a method (and its task, for single-task methods)."""

    method: str
    task: str | None  # None: every task in one run
    spec: str  # configs/<file>.py:<variants>, as --config= takes it
    overrides: tuple[tuple[str, object], ...] = ()  # the study's shortening (runlocal)

    @property
    def folder(self) -> str:
        return os.path.join(self.method, self.task) if self.task else self.method

    @property
    def tasks(self) -> tuple[str, ...]:
        return (self.task,) if self.task else TASKS


def plan(data: str, protocol: str, *, runlocal: bool = False, methods=METHODS,
         resnet: str = "", pretrained_resnet: str = "",
         pretrained_vgg_face: str = "") -> list[Run]:
    """The runs of the study.

    Args:
      data: fgnet_mask | synthetic | synthetic_paired | fgnet_paired.
      protocol: study | subject | photo (synthetic_paired, fgnet_mask, fgnet_paired) | lopo.
      runlocal: pass the runlocal variant to every config, and shorten the neural
        runs by RUNLOCAL_NEURAL (VGG-16: RUNLOCAL_VGG).
      methods: a subset of METHODS, run in METHODS order.
      resnet: the ResNet of the ResNet methods; "" -> resnet18 under runlocal, else
        resnet152 (the study's).
      pretrained_resnet: a torchvision ResNet file (of ``resnet``'s depth) that the
        ResNet methods fine-tune from, as the study did; "" -> trained from scratch.
      pretrained_vgg_face: a local VGG-Face .safetensors file: VGG-Face is then the
        classical fc7-features method, as in the study; "" -> VGG-16 trained end to end.

    Raises:
      ValueError: an unknown data, protocol, method or model (the message lists the valid).
    """
    if data not in config_lib.DATASETS:
        raise ValueError(f"data={data!r} is not one of: {', '.join(config_lib.DATASETS)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r} is not one of: {', '.join(PROTOCOLS)}")
    if protocol == "photo" and data == "synthetic":
        raise ValueError("protocol=photo needs data=synthetic_paired, fgnet_mask or "
                         "fgnet_paired (the data with several masked copies of one photo); "
                         "in data='synthetic' each image is its own photo, so photo would "
                         "repeat protocol=study")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods {unknown or '(none)'}: choose from {', '.join(METHODS)}")
    resnet = resnet or ("resnet18" if runlocal else "resnet152")
    if resnet not in config_lib.MODELS:
        raise ValueError(f"resnet={resnet!r} is not one of: {', '.join(config_lib.MODELS)}")
    common = f"data={data},protocol={protocol}" + (",runlocal" if runlocal else "")
    neural_short = tuple(RUNLOCAL_NEURAL.items()) if runlocal else ()

    def cfg(name: str, extra: str = "") -> str:
        return os.path.join(CONFIGS_DIR, f"{name}.py") + ":" + ",".join(
            filter(None, (extra, common)))

    runs = []
    for method in (m for m in METHODS if m in methods):
        if method in CLASSICAL:
            runs.append(Run(method, None, cfg(method)))
        elif method == "vgg_face":
            if pretrained_vgg_face:
                runs.append(Run(method, None, cfg("vgg_face", f"weights={pretrained_vgg_face}")))
            else:
                # model=vgg16 spelled out, so that no runlocal default can swap the model.
                runs.append(Run(method, None, cfg("vgg_face", "model=vgg16"),
                                tuple(RUNLOCAL_VGG.items()) if runlocal else ()))
        else:
            kind, model = method.rsplit("_", 1)
            model = f"{resnet},pretrained={pretrained_resnet}" if model == "resnet" and \
                pretrained_resnet else (resnet if model == "resnet" else "cnn")
            if kind == "single_task":
                runs += [Run(method, t, cfg("single_task", f"task={t},model={model}"),
                             neural_short) for t in TASKS]
            else:
                runs.append(Run(method, None, cfg("multitask", f"model={model}"), neural_short))
    return runs


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> None:
    """Sets ``key=value`` pairs (dotted keys; values converted to the field's type).

    Raises:
      ValueError: a key the config does not have (the message lists the valid keys).
    """
    items = overrides.items() if isinstance(overrides, dict) else overrides
    keys = config_lib.leaf_keys(config)
    for key, value in items:
        if key not in keys:
            raise ValueError(f"config has no key {key!r}; valid keys: {', '.join(keys)}")
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        old = node[leaf]
        kind = type(old) if old is not None else node.get_ref(leaf).get_type()  # None: auto
        if isinstance(value, str) and kind is not str:
            if kind is bool:
                value = value.lower() in ("1", "true", "yes")
            elif kind in (int, float):
                value = kind(value)  # int("2.5") fails: no silent rounding
        elif isinstance(old, float) and isinstance(value, int):
            value = float(value)
        node[leaf] = value


def make_config(run: Run, *, dataset: str = "", data_dir: str = "", manual_dir: str = "",
                neural_overrides=None, lopo_folds: int = 0) -> ml_collections.ConfigDict:
    """The resolved config of one run: its config file, the study's shortening, the options.

    ``dataset`` (e.g. ``synthetic_masked_faces/small``) replaces the config's dataset;
    ``neural_overrides`` ({key: value}) applies to the neural runs after the study's own;
    ``lopo_folds``: under protocol=lopo, the folds of persons of every run, so that all
    methods are tested on the same folds; 0 -> the neural configs' default (10, or 5
    under runlocal), where a classical config alone would take one fold per person.
    """
    config = config_lib.load(run.spec)
    apply_overrides(config, run.overrides)
    if config.protocol == "lopo":
        config.lopo_folds = lopo_folds or config_lib.neural_config(
            "runlocal" if config.runlocal else "", tasks=TASKS).lopo_folds
    if is_neural(config) and neural_overrides:
        apply_overrides(config, neural_overrides)
    if dataset:
        config.dataset = dataset
    if data_dir:
        config.data_dir = data_dir
    if manual_dir:
        config.manual_dir = manual_dir
    return config


def is_neural(config) -> bool:
    from fgmask_jax import baselines

    return config.get("method") not in baselines.METHODS


def describe(config) -> str:
    """What ran, in words: 'VGG-16 trained end to end at 32 px, 1 epoch' and the like."""
    if not is_neural(config):
        from fgmask_jax.baselines import run as run_lib

        text = run_lib._describe(config)  # noqa: SLF001 (the report's own wording)
        return f"{text}; images at {config.image_size} px" + _folds(config)
    length = (f"{config.num_train_steps} steps" if config.num_train_steps
              else f"{config.num_epochs:g} epochs")
    model = "VGG-16 trained end to end (no VGG-Face weights)" if config.model == "vgg16" \
        else config.model
    return (f"{model} at {config.image_size} px, {length} of batch {config.batch_size}"
            + _folds(config))


def _folds(config) -> str:
    if config.protocol != "lopo":
        return ""
    return ("; one fold per person" if not config.lopo_folds
            else f"; {config.lopo_folds} folds of persons")


# --- reading a run --------------------------------------------------------------------


def load_predictions(folder: str, tasks) -> dict[str, np.ndarray] | None:
    """predictions.npz of a run: {subject_id, label_<task>, pred_<task>: int[N]}, or None.

    Raises:
      ValueError: the file lacks an array a task needs, or arrays differ in length.
    """
    path = os.path.join(folder, "predictions.npz")
    if not os.path.exists(path):
        return None
    with np.load(path) as f:
        arrays = {k: np.asarray(f[k]) for k in f.files}
    needed = ["subject_id", *(f"{p}_{t}" for t in tasks for p in ("label", "pred"))]
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)} (it has {', '.join(arrays)})")
    lengths = {len(arrays[k]) for k in needed}
    if len(lengths) != 1:
        raise ValueError(f"{path}: arrays of different lengths {sorted(lengths)}")
    return arrays


def summarize_run(folder: str, tasks, *, num_samples: int = 1000, seed: int = 0) -> dict:
    """{task: {metric: {value, low, high}, n, persons, majority_rate}} and a note.

    Point values come from the per-image predictions when present (and must equal
    those of ``results.json``), intervals from `bootstrap.person_bootstrap`; without
    predictions, values come from results.json and low/high are nan.

    Returns:
      {"tasks": {task: ...}, "intervals": bool, "note": str or None}.
    """
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)["test"]
    predictions = load_predictions(folder, tasks)
    out, note = {}, None
    for task in tasks:
        r = results[task]
        if predictions is None:
            out[task] = {m: {"value": r[m], "low": math.nan, "high": math.nan}
                         for m in bootstrap.METRICS}
            out[task].update(n=r["n"], persons=None, majority_rate=r["majority_rate"])
            continue
        b = bootstrap.person_bootstrap(
            predictions[f"label_{task}"], predictions[f"pred_{task}"],
            predictions["subject_id"], len(labels_lib.TASKS[task]),
            num_samples=num_samples, seed=seed)
        for m in bootstrap.METRICS:
            if not math.isclose(b[m]["value"], r[m], abs_tol=1e-9):
                raise ValueError(
                    f"{folder}: predictions.npz gives {task} {m} {b[m]['value']:.6f} but "
                    f"results.json {r[m]:.6f}: the two come from different runs; delete the "
                    "folder to run the method again")
        out[task] = {m: b[m] for m in bootstrap.METRICS}
        out[task].update(n=b["n"], persons=b["persons"], majority_rate=b["majority_rate"])
    if predictions is None:
        note = ("no per-image predictions (predictions.npz) in its folder: no interval; "
                "values from its results.json")
    return {"tasks": out, "intervals": predictions is not None, "note": note}


# --- the study ------------------------------------------------------------------------


def run_study(workdir: str, *, data: str = "synthetic", protocol: str = "study",
              runlocal: bool = False, methods=METHODS, resnet: str = "",
              pretrained_resnet: str = "", pretrained_vgg_face: str = "",
              dataset: str = "", data_dir: str = "",
              manual_dir: str = "", neural_overrides=None, lopo_folds: int = 0,
              num_samples: int = 1000, seed: int = 0) -> dict:
    """Runs the missing runs of the study in ``workdir`` and writes study.md/csv/png/json.

    Args (see `plan` and `make_config` for the others):
      workdir: the study's folder; each run in ``workdir/<method>[/<task>]``.
      num_samples, seed: of the person bootstrap.

    Returns:
      {"rows": [{method, task, metric, value, low, high, n, persons}], "runs":
      [{folder, status ('ran' | 'skipped'), seconds, config, description}],
      "notes": [str], "seconds": wall time of this call}.
    """
    from fgmask_jax import build_data, train
    from fgmask_jax.baselines import run as run_lib
    from fgmask_jax.data import pipeline

    t_study = time.perf_counter()
    runs = plan(data, protocol, runlocal=runlocal, methods=methods, resnet=resnet,
                pretrained_resnet=pretrained_resnet, pretrained_vgg_face=pretrained_vgg_face)
    notes = []
    previous = _read_json(os.path.join(workdir, "study.json")).get("runs", {})
    configs = [make_config(r, dataset=dataset, data_dir=data_dir, manual_dir=manual_dir,
                           neural_overrides=neural_overrides, lopo_folds=lopo_folds)
               for r in runs]
    # The data of the runs still to do, built before the workdir is made: data that
    # cannot be built stops the study with nothing written.
    for key in dict.fromkeys(
            (c.dataset, pipeline.data_dir(c), c.manual_dir or None)
            for r, c in zip(runs, configs, strict=True)
            if not os.path.exists(os.path.join(workdir, r.folder, "results.json"))):
        build_data.build_or_explain(*key)
    os.makedirs(workdir, exist_ok=True)
    records = {}
    for run, config in zip(runs, configs, strict=True):
        folder = os.path.join(workdir, run.folder)
        record = {"folder": run.folder, "config": run.spec.replace(CONFIGS_DIR + os.sep,
                                                                    "configs/"),
                  "overrides": dict(run.overrides), "description": describe(config)}
        if os.path.exists(os.path.join(folder, "results.json")):
            logging.info("study: %s already holds results.json; not run again", folder)
            old = previous.get(run.folder, {})
            record.update(status="skipped", seconds=old.get("seconds"),
                          description=old.get("description", record["description"]))
        else:
            logging.info("study: running %s (%s)", run.folder, record["description"])
            t0 = time.perf_counter()
            if is_neural(config):
                train.train_and_evaluate(config, folder)
            else:
                run_lib.run_and_evaluate(config, folder)
            record.update(status="ran", seconds=round(time.perf_counter() - t0, 1))
            logging.info("study: %s took %.0fs", run.folder, record["seconds"])
        records[run.folder] = record
        _write_json(os.path.join(workdir, "study.json"),
                    {"runs": {**previous, **records}})

    rows, floor = [], {}
    for run in runs:
        s = summarize_run(os.path.join(workdir, run.folder), run.tasks,
                          num_samples=num_samples, seed=seed)
        if s["note"]:
            notes.append(f"{TITLES[run.method]} (`{run.folder}`): {s['note']}")
        for task, r in s["tasks"].items():
            floor.setdefault(task, r["majority_rate"])
            for m in bootstrap.METRICS:
                rows.append({"method": run.method, "task": task, "metric": m, **r[m],
                             "n": r["n"], "persons": r["persons"]})
    seconds = time.perf_counter() - t_study
    changes = []  # how the study changed the configs, in words
    if runlocal and RUNLOCAL_NEURAL:
        changes.append("neural runs shortened for the study: "
                       + ", ".join(f"{k}={v:g}" for k, v in RUNLOCAL_NEURAL.items()))
    if any(r.method == "vgg_face" and is_neural(c) for r, c in zip(runs, configs, strict=True)):
        vgg = next(c for r, c in zip(runs, configs, strict=True) if r.method == "vgg_face")
        changes.append(f"VGG-Face ran as {describe(vgg)}"
                       + ("; shortened for the study so that it fits 30 minutes on two CPU "
                          "cores" if runlocal else ""))
    if neural_overrides:
        items = neural_overrides.items() if isinstance(neural_overrides, dict) \
            else neural_overrides
        changes.append("set on every neural run: "
                       + ", ".join(f"{k}={v}" for k, v in items))
    titles = {r.method: TITLES[r.method] + (" (pretrained)" if c.get("pretrained")
                                            or c.get("init_weights") else "")
              for r, c in zip(runs, configs, strict=True)}
    setting = {"data": data, "dataset": configs[0].dataset if configs else "",
               "protocol": protocol, "runlocal": runlocal, "num_samples": num_samples,
               "changes": changes, "titles": titles}
    ran = [records[r.folder] for r in runs]
    write_csv(os.path.join(workdir, "study.csv"), rows, floor)
    write_markdown(os.path.join(workdir, "study.md"), rows, floor, setting, ran, notes)
    write_plot(os.path.join(workdir, "study.png"), rows, floor, setting)
    _write_json(os.path.join(workdir, "study.json"),
                {"runs": {**previous, **records}, "setting": setting,
                 "last_call_seconds": round(seconds, 1)})
    return {"rows": rows, "runs": ran, "notes": notes, "seconds": seconds}


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, value) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".tmp", path)


# --- outputs --------------------------------------------------------------------------


def _ordered(rows) -> tuple[list[str], list[str]]:
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    return methods, tasks


def _cell(rows, method, task, metric, fmt) -> str:
    for r in rows:
        if (r["method"], r["task"], r["metric"]) == (method, task, metric):
            if math.isnan(r["low"]):
                return fmt(r["value"]) + " (no interval)"
            return f"{fmt(r['value'])} [{fmt(r['low'])}, {fmt(r['high'])}]"
    return "not run"


def write_csv(path: str, rows, floor: dict) -> None:
    """One row per method x task x metric: value, low, high (blank: no interval), n, persons.

    The majority-class rate is the rows of method ``majority_class`` (accuracy only).
    """
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "task", "metric", "value", "low", "high", "n", "persons"])
        for r in rows:
            interval = ["", ""] if math.isnan(r["low"]) else [f"{r['low']:.6f}",
                                                               f"{r['high']:.6f}"]
            w.writerow([r["method"], r["task"], r["metric"], f"{r['value']:.6f}", *interval,
                        r["n"], "" if r["persons"] is None else r["persons"]])
        for task, rate in floor.items():
            w.writerow(["majority_class", task, "accuracy", f"{rate:.6f}", "", "", "", ""])


def write_markdown(path: str, rows, floor: dict, setting: dict, runs, notes) -> None:
    """study.md: the accuracy table with intervals, the other metrics, what ran, notes."""
    methods, tasks = _ordered(rows)
    titles = setting.get("titles", {})
    kind, caveat = DATA_TEXT[setting["data"]]
    protocol = PROTOCOL_TEXT[setting["protocol"]]
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    lines = [
        f"# The eight methods on {setting['dataset']}, protocol={setting['protocol']}", "",
        f"- data: **{kind}** (`{setting['dataset']}`)" + (f": {caveat}" if caveat else ""),
        f"- protocol: {protocol}",
        f"- intervals: 95% percentile intervals from {setting['num_samples']} bootstrap "
        "samples of persons (all images of a drawn person, twice if drawn twice)",
    ]
    if setting["runlocal"]:
        lines.append("- runlocal: every config ran its runlocal variant (a shrunk run for a "
                     "laptop CPU; each run's size is under 'What ran')")
    lines += [f"- {c}" for c in setting.get("changes", ())]
    lines += ["", "## Accuracy (%) [95% interval by person]", "",
              "| method | " + " | ".join(tasks) + " |",
              "|---|" + "---:|" * len(tasks)]
    for m in methods:
        lines.append(f"| {titles.get(m, TITLES[m])} | "
                     + " | ".join(_cell(rows, m, t, "accuracy", pct) for t in tasks) + " |")
    lines.append("| *majority class (floor)* | "
                 + " | ".join(pct(floor[t]) for t in tasks) + " |")
    lines += ["", "## Balanced accuracy (%) and macro-F1 [95% intervals]", "",
              "| method | " + " | ".join(f"{t} bal. acc. | {t} macro-F1" for t in tasks) + " |",
              "|---|" + "---:|---:|" * len(tasks)]
    f3 = lambda x: f"{x:.3f}"  # noqa: E731
    for m in methods:
        cells = [c for t in tasks for c in (_cell(rows, m, t, "balanced_accuracy", pct),
                                            _cell(rows, m, t, "macro_f1", f3))]
        lines.append(f"| {titles.get(m, TITLES[m])} | " + " | ".join(cells) + " |")
    first = {t: next(r for r in rows if r["task"] == t) for t in tasks}
    n_line = ", ".join(
        f"{t}: {r['n']} images" + (f" of {r['persons']} persons" if r["persons"] else "")
        for t, r in first.items())
    lines += ["", f"Test examples: {n_line}. The majority-class rate is the accuracy of "
              "always answering the most frequent class of the test labels.", "",
              "## What ran", "", "| run | config | what | status | seconds |",
              "|---|---|---|---|---:|"]
    for r in runs:
        secs = "" if r.get("seconds") is None else f"{r['seconds']:.0f}"
        lines.append(f"| {r['folder']} | `{r['config']}` | {r['description']} | "
                     f"{r['status']} | {secs} |")
    timed = [r["seconds"] for r in runs if r.get("seconds") is not None]
    if timed:
        lines += ["", f"The runs took {sum(timed) / 60:.1f} minutes in all"
                  + ("" if len(timed) == len(runs) else f" ({len(timed)} of {len(runs)} "
                     "timed)") + "."]
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    lines += ["", "![accuracy by method and task](study.png)", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def write_plot(path: str, rows, floor: dict, setting: dict) -> None:
    """study.png: accuracy bars grouped by task, one bar per method, interval error bars,
    the majority-class rate as a dashed line over each group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods, tasks = _ordered(rows)
    acc = {(r["method"], r["task"]): r for r in rows if r["metric"] == "accuracy"}
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(2.4 * len(tasks) + 3, 4.5))
    colors = plt.get_cmap("tab10")
    for i, m in enumerate(methods):
        xs, ys, err = [], [], [[], []]
        for j, t in enumerate(tasks):
            r = acc.get((m, t))
            if r is None:
                continue
            xs.append(j - 0.4 + (i + 0.5) * width)
            ys.append(r["value"])
            has = not math.isnan(r["low"])
            err[0].append(r["value"] - r["low"] if has else 0.0)
            err[1].append(r["high"] - r["value"] if has else 0.0)
        ax.bar(xs, ys, width, yerr=np.maximum(np.asarray(err), 0.0), capsize=2,
               label=setting.get("titles", {}).get(m, TITLES[m]), color=colors(i % 10))
    for j, t in enumerate(tasks):
        ax.hlines(floor[t], j - 0.45, j + 0.45, colors="black", linestyles="dashed",
                  label="majority class" if j == 0 else None)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy (95% interval by person)")
    kind = DATA_TEXT[setting["data"]][0]
    ax.set_title(f"{kind} ({setting['dataset']}), protocol={setting['protocol']}")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- several protocols side by side: the copy leak ------------------------------------


def paired_difference(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], *,
                      num_samples: int = 1000, seed: int = 0,
                      confidence: float = 0.95) -> dict:
    """Accuracy of ``a`` minus that of ``b``, with a percentile interval from a bootstrap
    over the persons of both.

    ``a``, ``b``: (correct bool[N], subject_ids int[N]) of two sets of predictions, on the
    same persons or on overlapping ones. Each sample draws persons with replacement from
    the union of the two sets' persons and counts a drawn person's images in both sets
    (in neither where the person is absent), so a person who is in both varies both
    accuracies together: on the same persons this is the paired bootstrap of the
    difference, and it is never narrower than the differences' spread allows.

    Returns:
      {"value", "low", "high"} (fractions; value = accuracy(a) - accuracy(b)).
    """
    (ca, sa), (cb, sb) = ((np.asarray(c, bool), np.asarray(s)) for c, s in (a, b))
    if not len(ca) or not len(cb):
        raise ValueError("a difference of accuracies needs predictions on both sides")
    persons = np.union1d(sa, sb)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(persons), np.full(len(persons), 1.0 / len(persons)),
                             size=num_samples).T  # int64[P, S]

    def sampled(correct, subject):
        ix = np.searchsorted(persons, subject)
        right = np.bincount(ix, correct, minlength=len(persons))
        total = np.bincount(ix, minlength=len(persons))
        with np.errstate(invalid="ignore", divide="ignore"):
            return (right @ counts) / (total @ counts)  # nan: no image of this side drawn

    diffs = sampled(ca, sa) - sampled(cb, sb)
    tails = 100 * np.array([(1 - confidence) / 2, (1 + confidence) / 2])
    low, high = np.nanpercentile(diffs, tails)
    return {"value": float(ca.mean() - cb.mean()), "low": float(low), "high": float(high)}


def correct_of(folder: str, task: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(correct bool[N], subject_ids int[N]) of a run's test predictions, or None."""
    p = load_predictions(folder, (task,))
    if p is None:
        return None
    return p[f"label_{task}"] == p[f"pred_{task}"], p["subject_id"]


def leaked_copies(dataset: str, data_dir: str) -> dict | None:
    """How many test images of the study split have another copy of their photo in its
    training split: {"test_images", "with_copy_in_train", "test_photos"}, or None when
    the dataset records no photo ids."""
    from fgmask_jax.data import pipeline

    ids = []
    for split in pipeline.split_names("study"):
        labels = pipeline.read_labels(pipeline.open_split(dataset, split, data_dir))
        if "photo_id" not in labels:
            return None
        ids.append(labels["photo_id"])
    train, test = ids
    leaked = np.isin(test, train)
    return {"test_images": int(len(test)), "with_copy_in_train": int(leaked.sum()),
            "test_photos": int(len(np.unique(test)))}


def run_comparison(workdir: str, protocols, *, data: str = "synthetic_paired",
                   runlocal: bool = False, methods=None, num_samples: int = 1000,
                   seed: int = 0, command: str = "", **study_kwargs) -> dict:
    """The study under several protocols, side by side: how much the study's protocol
    inflates each method (the copy leak).

    Runs `run_study` in ``workdir/<protocol>`` for each protocol (finished runs are
    reused), then writes ``workdir/leak.md``, ``leak.csv`` and ``leak.json``: per method
    and task the accuracy [95% person-bootstrap interval] under each protocol, and the
    points by which protocol ``study`` exceeds each other one, with an interval from
    `paired_difference`.

    Args:
      protocols: two or more of PROTOCOLS, ``study`` among them.
      methods: None -> LEAK_RUNLOCAL_METHODS under ``runlocal``, else all of METHODS.
      command: the command line, for the outputs.
      study_kwargs: passed on to `run_study` (resnet, dataset, data_dir, ...).

    Returns:
      {"rows": [{method, task, protocol, value, low, high, n, persons}], "inflation":
      [{method, task, versus, value, low, high}], "seconds": {protocol: s}, "leak": ...}.

    Raises:
      ValueError: fewer than two protocols, a repeated one, or none of them ``study``.
    """
    protocols = tuple(protocols)
    if len(protocols) < 2 or len(set(protocols)) != len(protocols) or "study" not in protocols:
        raise ValueError(f"protocols {','.join(protocols) or '(none)'}: give two or more "
                         "different ones, study among them (e.g. study,photo,subject)")
    for p in protocols:
        if p not in PROTOCOLS:
            raise ValueError(f"protocol={p!r} is not one of: {', '.join(PROTOCOLS)}")
    shortened = methods is None and runlocal
    methods = tuple(methods or (LEAK_RUNLOCAL_METHODS if runlocal else METHODS))
    for p in protocols:  # every argument checked before anything runs
        plan(data, p, runlocal=runlocal, methods=methods,
             resnet=study_kwargs.get("resnet", ""))
    others = [p for p in protocols if p != "study"]
    studies, seconds = {}, {}
    for p in protocols:
        t0 = time.perf_counter()
        studies[p] = run_study(os.path.join(workdir, p), data=data, protocol=p,
                               runlocal=runlocal, methods=methods, num_samples=num_samples,
                               seed=seed, **study_kwargs)
        seconds[p] = round(time.perf_counter() - t0, 1)
    folders = {(r.method, t): r.folder for r in plan(data, "study", runlocal=runlocal,
                                                     methods=methods) for t in r.tasks}
    rows, inflation = [], []
    for p, out in studies.items():
        rows += [{"protocol": p, **{k: r[k] for k in ("method", "task", "value", "low",
                                                       "high", "n", "persons")}}
                 for r in out["rows"] if r["metric"] == "accuracy"]
    value = {(r["method"], r["task"], r["protocol"]): r for r in rows}
    for (method, task), folder in folders.items():
        if (method, task, "study") not in value:
            continue
        ours = correct_of(os.path.join(workdir, "study", folder), task)
        for p in others:
            theirs = correct_of(os.path.join(workdir, p, folder), task)
            point = value[method, task, "study"]["value"] - value[method, task, p]["value"]
            d = (paired_difference(ours, theirs, num_samples=num_samples, seed=seed)
                 if ours is not None and theirs is not None
                 else {"low": math.nan, "high": math.nan})
            inflation.append({"method": method, "task": task, "versus": p, "value": point,
                              "low": d["low"], "high": d["high"]})
    configs = [make_config(r, **{k: v for k, v in study_kwargs.items()
                                 if k in ("dataset", "data_dir")})
               for r in plan(data, "study", runlocal=runlocal, methods=methods)]
    dataset = configs[0].dataset
    from fgmask_jax.data import pipeline

    leak = leaked_copies(dataset, pipeline.data_dir(configs[0]))
    setting = {"data": data, "dataset": dataset, "protocols": list(protocols),
               "runlocal": runlocal, "methods": list(methods), "shortened": shortened,
               "num_samples": num_samples, "command": command, "seconds": seconds,
               "descriptions": {r["folder"]: r["description"]
                                for r in studies["study"]["runs"]},
               "leak": leak}
    write_leak_csv(os.path.join(workdir, "leak.csv"), rows, inflation)
    write_leak_markdown(os.path.join(workdir, "leak.md"), rows, inflation, setting)
    _write_json(os.path.join(workdir, "leak.json"),
                {"setting": setting, "rows": rows, "inflation": inflation})
    return {"rows": rows, "inflation": inflation, "seconds": seconds, "leak": leak,
            "studies": studies}


def write_leak_csv(path: str, rows, inflation) -> None:
    """Accuracy rows (kind ``accuracy``, one per method x task x protocol) and inflation
    rows (kind ``inflation``, protocol ``study-<other>``): value, low, high as fractions."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "method", "task", "protocol", "value", "low", "high", "n",
                    "persons"])
        num = lambda x: "" if math.isnan(x) else f"{x:.6f}"  # noqa: E731
        for r in rows:
            w.writerow(["accuracy", r["method"], r["task"], r["protocol"], num(r["value"]),
                        num(r["low"]), num(r["high"]), r["n"],
                        "" if r["persons"] is None else r["persons"]])
        for r in inflation:
            w.writerow(["inflation", r["method"], r["task"], f"study-{r['versus']}",
                        num(r["value"]), num(r["low"]), num(r["high"]), "", ""])


def write_leak_markdown(path: str, rows, inflation, setting: dict) -> None:
    """leak.md: accuracy per protocol side by side and the study protocol's inflation."""
    protocols = setting["protocols"]
    others = [p for p in protocols if p != "study"]
    methods, tasks = _ordered(rows)
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    sign = lambda x: f"{100 * x:+.1f}"  # noqa: E731
    acc = {(r["method"], r["task"], r["protocol"]): r for r in rows}
    up = {(r["method"], r["task"], r["versus"]): r for r in inflation}

    def cell(r, fmt):
        if r is None:
            return "not run"
        if math.isnan(r["low"]):
            return fmt(r["value"]) + " (no interval)"
        return f"{fmt(r['value'])} [{fmt(r['low'])}, {fmt(r['high'])}]"

    kind, caveat = DATA_TEXT[setting["data"]]
    lines = [f"# The copy leak: {len(methods)} methods on {setting['dataset']} under "
             + ", ".join(protocols), "",
             f"- data: `{setting['dataset']}` ({kind}" + (f": {caveat})" if caveat else ")")]
    lines += [f"- protocol {p}: {PROTOCOL_TEXT[p]}" for p in protocols]
    if setting.get("leak"):
        lk = setting["leak"]
        lines.append(f"- under protocol study, {lk['with_copy_in_train']} of the "
                     f"{lk['test_images']} test images ({lk['test_photos']} photos) have "
                     "another masked copy of their photo in the training split")
    lines += [
        f"- intervals: 95% percentile intervals from {setting['num_samples']} bootstrap "
        "samples of persons; an inflation's interval resamples the persons of both test "
        "sets together (`study.paired_difference`)",
        "- inflation: accuracy under protocol study minus that under the other protocol, "
        "in points; above 0, the study's protocol flatters the method"]
    if setting["runlocal"]:
        lines.append("- runlocal: every config ran its runlocal variant (each run's size is "
                     "under 'What ran')"
                     + (f"; shortened to the methods {', '.join(setting['methods'])} so that "
                        f"the {len(protocols)} protocols fit about 30 minutes on two CPU "
                        "cores" if setting.get("shortened") else ""))
    if setting.get("command"):
        lines.append(f"- command: `{setting['command']}`")
    secs = setting["seconds"]
    lines.append("- wall time: " + ", ".join(f"{p} {secs[p] / 60:.1f} min" for p in protocols)
                 + f"; {sum(secs.values()) / 60:.1f} min in all (0 for finished runs reused)")
    lines += ["", "## Accuracy (%) [95% interval by person] and the study protocol's "
              "inflation (points)", "",
              "| method | task | " + " | ".join(protocols) + " | "
              + " | ".join(f"study − {p}" for p in others) + " |",
              "|---|---|" + "---:|" * (len(protocols) + len(others))]
    for m in methods:
        for t in tasks:
            cells = [cell(acc.get((m, t, p)), pct) for p in protocols]
            cells += [cell(up.get((m, t, p)), sign) for p in others]
            lines.append(f"| {TITLES[m]} | {t} | " + " | ".join(cells) + " |")
    lines += ["", "## Mean inflation over tasks (points)", "",
              "| method | " + " | ".join(f"study − {p}" for p in others) + " |",
              "|---|" + "---:|" * len(others)]
    for m in methods:
        means = []
        for p in others:
            v = [up[m, t, p]["value"] for t in tasks if (m, t, p) in up]
            means.append(sign(float(np.mean(v))) if v else "not run")
        lines.append(f"| {TITLES[m]} | " + " | ".join(means) + " |")
    lines += ["", "## What ran", "", "| run | what |", "|---|---|"]
    lines += [f"| {folder} | {text} |" for folder, text in setting["descriptions"].items()]
    lines += ["", "Each protocol's own report: "
              + ", ".join(f"[{p}/study.md]({p}/study.md)" for p in protocols) + ".", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


# --- the command ----------------------------------------------------------------------

def define_flags() -> None:
    """The command's flags (defined only when run as a command: importing this module
    leaves absl's global flags alone)."""
    flags.DEFINE_enum("data", "synthetic", list(config_lib.DATASETS),
                      "Which data: FGNET-MASK, the synthetic set (synthetic_paired: masked "
                      "copies of each photo and its unmasked twin), or FG-NET with drawn "
                      "masked copies of each photo (fgnet_paired).")
    flags.DEFINE_list("protocol", ["study"],
                      "study: the study's random image split; subject: subject-disjoint; "
                      "photo: photo-disjoint (synthetic_paired, fgnet_mask, fgnet_paired); "
                      "lopo: leave persons out (one model per fold of persons). Several, "
                      "comma-separated and study among them (e.g. study,photo,subject): each "
                      "runs in WORKDIR/<protocol> and leak.md/csv/json compare them side by side.")
    flags.DEFINE_string("workdir", None,
                        "The study's folder; each run in WORKDIR/<method>[/<task>] "
                        "(WORKDIR/<protocol>/<method>[/<task>] with several protocols).")
    flags.DEFINE_bool("runlocal", False, "Pass the runlocal variant to every config and shorten "
                      "the neural runs, so the whole study fits a laptop CPU.")
    flags.DEFINE_list("methods", list(METHODS), f"A subset of: {', '.join(METHODS)}. "
                      "Not given, with several protocols and --runlocal: "
                      f"{','.join(LEAK_RUNLOCAL_METHODS)}.")
    flags.DEFINE_string("data_dir", "", "TFDS data dir ('' -> $TFDS_DATA_DIR or "
                        "~/tensorflow_datasets); a missing dataset is built there.")
    flags.DEFINE_string("manual_dir", "", "fgnet_mask and fgnet_paired: the folder of their "
                        "archives ('' -> DATA_DIR/downloads/manual).")
    flags.DEFINE_string("resnet", "", "ResNet of the ResNet methods ('' -> resnet18 under "
                        "--runlocal, else resnet152).")
    flags.DEFINE_string("pretrained_resnet", "",
                        "A torchvision ResNet file (.safetensors, or .pth with torch) of "
                        "--resnet's depth: the ResNet methods fine-tune from it, as the study "
                        "did; their rows say 'pretrained'.")
    flags.DEFINE_string("pretrained_vgg_face", "",
                        "A local VGG-Face .safetensors file: VGG-Face is then fc7 features + a "
                        "linear classifier, as in the study; without it VGG-16 is trained end "
                        "to end.")
    flags.DEFINE_multi_string("neural_override", [], "KEY=VALUE set on every neural config "
                              "(after --runlocal's shortening), e.g. num_epochs=2.")
    flags.DEFINE_integer("lopo_folds", 0, "--protocol=lopo: folds of persons, the same for "
                         "every method (0: 10, or 5 under --runlocal).")
    flags.DEFINE_integer("num_samples", 1000, "Bootstrap samples of persons.")
    flags.DEFINE_integer("seed", 0, "Seed of the bootstrap.")


def parse_overrides(items) -> list[tuple[str, str]]:
    """``--neural_override`` values ``KEY=VALUE`` as (key, value) pairs.

    Raises:
      cli.UserError: an item without ``=``.
    """
    overrides = []
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise cli.UserError(f"--neural_override={item!r}: use KEY=VALUE")
        overrides.append((key.strip(), value))
    return overrides


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    overrides = parse_overrides(f.neural_override)
    workdir = cli.absolute(f.workdir)
    common = dict(runlocal=f.runlocal, resnet=f.resnet,
                  pretrained_resnet=cli.absolute(f.pretrained_resnet),
                  pretrained_vgg_face=cli.absolute(f.pretrained_vgg_face),
                  data_dir=cli.absolute(f.data_dir), manual_dir=cli.absolute(f.manual_dir),
                  neural_overrides=overrides, lopo_folds=f.lopo_folds,
                  num_samples=f.num_samples, seed=f.seed)
    try:
        if len(f.protocol) > 1:
            methods = tuple(f.methods) if f["methods"].present else None
            command = "python -m fgmask_jax.study " + " ".join(
                a for a in sys.argv[1:] if not a.startswith("--workdir"))
            out = run_comparison(workdir, f.protocol, data=f.data, methods=methods,
                                 command=command + " --workdir=DIR", **common)
            total = sum(out["seconds"].values())
            print(f"study: {len(f.protocol)} protocols in {total:.0f}s; see "
                  f"{os.path.join(workdir, 'leak.md')}")
            return
        out = run_study(workdir, data=f.data, protocol=f.protocol[0] if f.protocol else "",
                        methods=tuple(f.methods), **common)
    except ValueError as e:
        raise cli.UserError(str(e)) from None
    print(f"study: {len(out['runs'])} runs ({sum(r['status'] == 'ran' for r in out['runs'])} "
          f"ran now) in {out['seconds']:.0f}s; see {os.path.join(workdir, 'study.md')}")


if __name__ == "__main__":
    define_flags()
    flags.mark_flags_as_required(["workdir"])
    cli.run(main, prog="fgmask_jax.study")
