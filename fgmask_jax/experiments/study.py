"""The study's eight methods, each trained through the functions ``fgmask_jax.main`` calls,
and compared with confidence intervals by person.

    out = run_study(workdir, data="synthetic", protocol="study", runlocal=True)

`plan` names the runs (one per method, one per task for the single-task methods),
`make_config` (`configs`) resolves each run's config, `run_study` runs the runs whose folder
holds no ``results.json`` yet and writes ``study.md``, ``study.csv``, ``study.png`` and
``study.json`` (`evaluation.tables`); `summarize_run` (`scores`) reads one finished run
back, with intervals from a bootstrap over persons when its per-image predictions are there.
"""

from __future__ import annotations

import dataclasses
import os
import time

from absl import logging

from fgmask_jax import config_lib, errors, workdir_lock
from fgmask_jax.data import labels as labels_lib
from fgmask_jax.evaluation import bootstrap, tables
from fgmask_jax.experiments import method as method_lib
from fgmask_jax.experiments.configs import (  # noqa: F401 - the study's API
    apply_overrides,
    describe,
    make_config,
    parse_overrides,
)
from fgmask_jax.experiments.method import is_neural
from fgmask_jax.experiments.scores import (  # noqa: F401 - the study's API
    correct_by_seed,
    load_predictions,
    summarize_run,
)

CONFIGS_DIR = config_lib.CONFIGS_DIR
TASKS = tuple(labels_lib.TASKS)
METHODS = ("lbp", "tiny_image", "vgg_face", "eigenface", "single_task_cnn",
           "single_task_resnet", "multitask_cnn", "multitask_resnet")
TITLES = {"lbp": "LBP", "tiny_image": "Tiny Image", "vgg_face": "VGG-Face",
          "eigenface": "Eigenface", "single_task_cnn": "single-task CNN",
          "single_task_resnet": "single-task ResNet", "multitask_cnn": "multi-task CNN",
          "multitask_resnet": "multi-task ResNet"}
CLASSICAL = ("lbp", "tiny_image", "eigenface")  # and vgg_face when given weights
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
# The tables' words (`evaluation.tables`): methods in METHODS order. Every dataset and
# protocol of the registry needs its words, or a report would fail after the runs.
WORDING = tables.Wording(titles={m: TITLES[m] for m in METHODS}, data=DATA_TEXT,
                         protocols=PROTOCOL_TEXT)
assert set(DATA_TEXT) == set(config_lib.DATASETS), "DATA_TEXT: a dataset without words"
assert set(PROTOCOL_TEXT) == set(config_lib.PROTOCOLS), "PROTOCOL_TEXT: a protocol without words"

# --runlocal passes every config its runlocal variant and adds nothing of its own: the
# variant itself (config_lib._runlocal, baselines.classical_config) shrinks the runs:
# ResNet-18 and the CNN at 64 px for 8 epochs of batch 32 (about 3 and 0.5 minutes each
# on two CPU cores), VGG-16 (134M parameters, most in fc6) at 32 px for 2 epochs, the
# classical methods on 64 px images with a smaller search, and 5 folds under lopo.
RUNLOCAL_TEXT = ("every config's runlocal variant: the networks at 64 px for 8 epochs of "
                 "batch 32 (ResNet-18 unless --resnet; VGG-16 at 32 px for 2 epochs), the "
                 "classical methods on 64 px images with a smaller search of their "
                 "classifier, and 5 folds of persons under --protocol=lopo")
# Why a method of METHODS is missing from a study that did not run it.
LEFT_OUT = "not run: not in --methods"


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of the study: a method (and its task, for single-task methods)."""

    method: str
    task: str | None  # None: every task in one run
    spec: str  # configs/<file>.py:<variants>, as --config= takes it
    overrides: tuple[tuple[str, object], ...] = ()  # set on its config (none by default)
    seed: int = 0  # config.seed of a neural run: another model on the same splits

    @property
    def folder(self) -> str:
        base = os.path.join(self.method, self.task) if self.task else self.method
        return f"{base}.seed{self.seed}" if self.seed else base

    @property
    def tasks(self) -> tuple[str, ...]:
        return (self.task,) if self.task else TASKS


def _check_plan(data: str, protocol: str, methods) -> None:
    """Raises `errors.ConfigError` for data, a protocol or methods the study has not."""
    if data not in config_lib.DATASETS:
        raise errors.ConfigError(
            f"data={data!r} is not one of: {', '.join(config_lib.DATASETS)}")
    if protocol not in config_lib.PROTOCOLS:
        raise errors.ConfigError(
            f"protocol={protocol!r} is not one of: {', '.join(config_lib.PROTOCOLS)}")
    if protocol == "photo" and data == "synthetic":
        raise errors.ConfigError(
            "protocol=photo needs data=synthetic_paired, fgnet_mask or fgnet_paired (the "
            "data with several masked copies of one photo); in data='synthetic' each image "
            "is its own photo, so photo would repeat protocol=study")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise errors.ConfigError(
            f"methods {unknown or '(none)'}: choose from {', '.join(METHODS)}")


def plan(data: str, protocol: str, *, runlocal: bool = False, methods=METHODS,
         resnet: str = "", pretrained_resnet: str = "",
         pretrained_vgg_face: str = "", seeds: int = 1) -> list[Run]:
    """The runs of the study: each neural run once per training seed 0..``seeds``-1
    (seed 0 in ``<method>[/<task>]``, seed s in ``<method>[/<task>].seed<s>``: the same
    splits, another initialisation and batch order); the classical methods, deterministic
    given the split, once.

    Args:
      data: fgnet_mask | synthetic | synthetic_paired | fgnet_paired.
      protocol: study | subject | photo (synthetic_paired, fgnet_mask, fgnet_paired) | lopo.
      runlocal: pass the runlocal variant to every config (`RUNLOCAL_TEXT`); the study
        changes nothing else.
      methods: a subset of METHODS, run in METHODS order.
      resnet: the ResNet of the ResNet methods; "" -> resnet18 under runlocal, else
        resnet152 (the study's).
      pretrained_resnet: a torchvision ResNet file (of ``resnet``'s depth) that the
        ResNet methods fine-tune from, as the study did; "" -> trained from scratch.
      pretrained_vgg_face: a local VGG-Face .safetensors file: VGG-Face is then the
        classical fc7-features method, as in the study; "" -> VGG-16 trained end to end.
      seeds: training seeds of each neural run (at least 1).

    Raises:
      errors.ConfigError: an unknown data, protocol, method or model (the message lists
        the valid), or fewer than one seed.
    """
    _check_plan(data, protocol, methods)
    if seeds < 1:
        raise errors.ConfigError(f"seeds={seeds}: train each neural method at least once")
    resnet = resnet or ("resnet18" if runlocal else "resnet152")
    if resnet not in config_lib.MODELS:
        raise errors.ConfigError(
            f"resnet={resnet!r} is not one of: {', '.join(config_lib.MODELS)}")
    common = f"data={data},protocol={protocol}" + (",runlocal" if runlocal else "")

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
                runs += [Run(method, None, cfg("vgg_face", "model=vgg16"), seed=s)
                         for s in range(seeds)]
        else:
            kind, model = method.rsplit("_", 1)
            model = f"{resnet},pretrained={pretrained_resnet}" if model == "resnet" and \
                pretrained_resnet else (resnet if model == "resnet" else "cnn")
            if kind == "single_task":
                runs += [Run(method, t, cfg("single_task", f"task={t},model={model}"), seed=s)
                         for t in TASKS for s in range(seeds)]
            else:
                runs += [Run(method, None, cfg("multitask", f"model={model}"), seed=s)
                         for s in range(seeds)]
    return runs


def by_method(runs) -> dict[tuple[str, str | None], list[Run]]:
    """The runs of each (method, task) pair: one per training seed, in seed order."""
    groups: dict[tuple[str, str | None], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.method, run.task), []).append(run)
    return groups


# --- reading a run --------------------------------------------------------------------


# The comparisons the study makes: (method, method it is set against, what it asks).
COMPARISONS = (
    ("multitask_cnn", "single_task_cnn", "multi-task vs single-task (CNN)"),
    ("multitask_resnet", "single_task_resnet", "multi-task vs single-task (ResNet)"),
    ("multitask_resnet", "multitask_cnn", "ResNet vs CNN (multi-task)"),
)


def paired_rows(workdir: str, runs, rows, *, num_samples: int, seed: int) -> list[dict]:
    """The study's comparisons (`COMPARISONS`, and per task the best neural method against
    the best classical one by accuracy): accuracy differences on the same test persons
    (and seeds), each with its paired interval, bootstrap p-value and Holm's decision over
    all of them (`bootstrap.with_holm`). Pairs whose runs are missing or kept no predictions are
    left out."""
    groups = by_method(runs)
    accuracy = {(r["method"], r["task"]): r["value"] for r in rows if r["metric"] == "accuracy"}
    out = []
    for task in TASKS:
        pairs = list(COMPARISONS)
        ran = [m for m in METHODS if (m, task) in accuracy]
        neural = [m for m in ran if all(map(is_neural_method, _runs_of(groups, m, task)))]
        classical = [m for m in ran if m not in neural]
        if neural and classical:
            best = [max(ms, key=lambda m: accuracy[m, task]) for ms in (neural, classical)]
            pairs.append((*best, "best neural vs best classical"))
        for a, b, what in pairs:
            sides = [_runs_of(groups, m, task) for m in (a, b)]
            if not all(sides):
                continue
            correct = [correct_by_seed(workdir, side, task) for side in sides]
            if any(c is None for c in correct):
                continue
            d = bootstrap.difference_test(*correct, num_samples=num_samples, seed=seed)
            out.append({"comparison": what, "task": task, "method": a, "versus": b, **d,
                        "seeds": [len(s) for s in sides]})
    bootstrap.with_holm(out)
    return out


def _runs_of(groups, method: str, task: str) -> list[Run]:
    """The seeds' runs that predicted ``task`` for ``method``: its single-task runs of that
    task, or its multi-task runs."""
    return groups.get((method, task)) or groups.get((method, None)) or []


def is_neural_method(run: Run) -> bool:
    """Whether a run trains a network (the classical methods and VGG-Face's features do
    not)."""
    return run.method not in CLASSICAL and "weights=" not in run.spec


# --- the study ------------------------------------------------------------------------


def run_study(workdir: str, *, data: str = "synthetic", protocol: str = "study",
              runlocal: bool = False, methods=METHODS, resnet: str = "",
              pretrained_resnet: str = "", pretrained_vgg_face: str = "",
              dataset: str = "", data_dir: str = "",
              manual_dir: str = "", neural_overrides=None, lopo_folds: int = 0,
              num_samples: int = 1000, seed: int = 0, seeds: int = 1,
              left_out: str = LEFT_OUT) -> dict:
    """Runs the missing runs of the study in ``workdir`` and writes study.md/csv/png/json.

    Args (see `plan` and `make_config` for the others):
      workdir: the study's folder; each run in ``workdir/<method>[/<task>][.seed<s>]``.
      num_samples, seed: of the person bootstrap.
      seeds: training seeds of each neural method (`plan`).
      left_out: why the methods of METHODS not in ``methods`` did not run, in a line of
        study.md under the accuracy table, so that none goes missing silently.

    Returns:
      {"rows": [{method, task, metric, value, low, high, sd, n, persons, seeds}],
      "paired": [{comparison, task, method, versus, value, low, high, p, excludes_0,
      p_holm, excludes_0_holm, seeds}], "runs": [{folder, status ('ran' | 'skipped'),
      seconds, config, description}], "left_out": {method: why}, "notes": [str],
      "seconds": wall time of this call}.

    Raises:
      errors.UserError: data, a protocol, a method or an override the study has not
        (`errors.ConfigError`), data that cannot be built, a finished run whose files
        disagree (`errors.DataError`), or another live run holding ``workdir``
        (`errors.WorkdirLockedError`; the runs in its subfolders take no lock of their own).
    """
    from fgmask_jax.evaluation import writers

    began = time.perf_counter()
    runs, configs = prepare(data, protocol, runlocal=runlocal, methods=methods, resnet=resnet,
                            pretrained_resnet=pretrained_resnet,
                            pretrained_vgg_face=pretrained_vgg_face, dataset=dataset,
                            data_dir=data_dir, manual_dir=manual_dir,
                            neural_overrides=neural_overrides, lopo_folds=lopo_folds,
                            seeds=seeds)
    build_missing_data(workdir, runs, configs)
    # Held from here: the data is there (data that cannot be built leaves no workdir).
    with workdir_lock.held(workdir):
        json_path = os.path.join(workdir, "study.json")
        previous = writers.read_json(json_path).get("runs", {})
        os.makedirs(workdir, exist_ok=True)
        records = {}
        for run, config in zip(runs, configs, strict=True):
            records[run.folder] = run_once(workdir, run, config, previous.get(run.folder, {}))
            writers.write_json(json_path, {"runs": {**previous, **records}})
        rows, floor, notes = summarize_runs(workdir, runs, num_samples=num_samples, seed=seed)
        paired = paired_rows(workdir, runs, rows, num_samples=num_samples, seed=seed)
        seconds = time.perf_counter() - began
        setting = {"data": data, "dataset": configs[0].dataset if configs else "",
                   "protocol": protocol, "runlocal": runlocal, "num_samples": num_samples,
                   "seeds": seeds,
                   "changes": changes_made(runs, configs, runlocal, neural_overrides),
                   "titles": titles_of(runs, configs)}
        ran = [records[r.folder] for r in runs]
        tables.write_csv(os.path.join(workdir, "study.csv"), rows, floor)
        missing = {m: left_out for m in METHODS if m not in methods}
        report = os.path.join(workdir, "study.md")
        tables.write_markdown(report, rows, floor, setting, ran, notes, WORDING, paired,
                              missing)
        tables.write_plot(os.path.join(workdir, "study.png"), rows, floor, setting, WORDING)
        writers.write_json(json_path, {"runs": {**previous, **records}, "setting": setting,
                                       "paired": paired, "left_out": missing,
                                       "last_call_seconds": round(seconds, 1)})
    return {"rows": rows, "floor": floor, "paired": paired, "runs": ran, "notes": notes,
            "left_out": missing, "seconds": seconds}


def prepare(data: str, protocol: str, *, runlocal: bool = False, methods=METHODS,
            resnet: str = "", pretrained_resnet: str = "", pretrained_vgg_face: str = "",
            dataset: str = "", data_dir: str = "", manual_dir: str = "",
            neural_overrides=None, lopo_folds: int = 0,
            seeds: int = 1) -> tuple[list[Run], list]:
    """(the runs of `plan`, their configs of `make_config`), with every argument checked.

    Raises:
      errors.ConfigError: as `plan` and `make_config` raise it, or a pretrained file that
        is not there (`check_weight_files`).
    """
    check_weight_files(methods, pretrained_resnet, pretrained_vgg_face)
    runs = plan(data, protocol, runlocal=runlocal, methods=methods, resnet=resnet,
                pretrained_resnet=pretrained_resnet, pretrained_vgg_face=pretrained_vgg_face,
                seeds=seeds)
    configs = [make_config(r, dataset=dataset, data_dir=data_dir, manual_dir=manual_dir,
                           neural_overrides=neural_overrides, lopo_folds=lopo_folds)
               for r in runs]
    return runs, configs


def check_weight_files(methods, pretrained_resnet: str, pretrained_vgg_face: str) -> None:
    """Raises `errors.ConfigError` for a pretrained file given to a method that runs but not
    there: no weights are downloaded, and a study would otherwise stop at that method after
    the others have run."""
    for path, needs, what in (
            (pretrained_resnet, ("single_task_resnet", "multitask_resnet"), "the ResNets"),
            (pretrained_vgg_face, ("vgg_face",), "VGG-Face")):
        if path and any(m in methods for m in needs) and not os.path.isfile(path):
            raise errors.ConfigError(
                f"{path}: no such weights file for {what}; weights are only read from local "
                "files (docs/pretrained.md)"
                + ("; without --pretrained_vgg_face, VGG-Face is VGG-16 trained end to end"
                   if what == "VGG-Face" else ""))


def missing_data(workdir: str, runs, configs) -> list[tuple[str, str, str | None]]:
    """(dataset, data dir, manual dir) of each dataset that the runs still to do read,
    each once."""
    from fgmask_jax.data import pipeline

    return list(dict.fromkeys(
        (c.dataset, pipeline.data_dir(c), c.manual_dir or None)
        for r, c in zip(runs, configs, strict=True)
        if not os.path.exists(os.path.join(workdir, r.folder, "results.json"))))


def build_missing_data(workdir: str, runs, configs) -> None:
    """Builds the data of the runs still to do, before the workdir is made: data that
    cannot be built stops the study with nothing written."""
    from fgmask_jax.data import build

    for key in missing_data(workdir, runs, configs):
        build.build_or_explain(*key)


def run_once(workdir: str, run: Run, config, previous: dict) -> dict:
    """Runs ``run`` unless its folder holds results.json; returns its record for
    study.json: {folder, config, overrides, description, status, seconds}.

    ``previous``: its record from an earlier call (for a skipped run's time and words).
    """
    folder = os.path.join(workdir, run.folder)
    record = {"folder": run.folder, "config": run.spec.replace(CONFIGS_DIR + os.sep,
                                                                "configs/"),
              "overrides": dict(run.overrides), "description": describe(config)}
    if os.path.exists(os.path.join(folder, "results.json")):
        logging.info("study: %s already holds results.json; not run again", folder)
        record.update(status="skipped", seconds=previous.get("seconds"),
                      description=previous.get("description", record["description"]))
        return record
    logging.info("study: running %s (%s)", run.folder, record["description"])
    t0 = time.perf_counter()
    method_lib.train_and_test(config, folder)
    record.update(status="ran", seconds=round(time.perf_counter() - t0, 1))
    logging.info("study: %s took %.0fs", run.folder, record["seconds"])
    return record


def accuracy_rows(rows, protocol: str) -> list[dict]:
    """The accuracy rows of `summarize_runs`'s ``rows``, each with its ``protocol``."""
    return [{"protocol": protocol, **{k: r[k] for k in (
        "method", "task", "value", "low", "high", "n", "persons", "seeds", "sd")}}
        for r in rows if r["metric"] == "accuracy"]


def summarize_runs(workdir: str, runs, *, num_samples: int, seed: int):
    """(rows, floor, notes): one row per method x task x metric (over the method's training
    seeds), the majority-class rate of each task, and a note for each run without
    intervals."""
    rows, floor, notes = [], {}, []
    for (method, task), seeds in by_method(runs).items():
        s = summarize_run([os.path.join(workdir, r.folder) for r in seeds], seeds[0].tasks,
                          num_samples=num_samples, seed=seed)
        if s["note"]:
            notes.append(f"{TITLES[method]} (`{seeds[0].folder}`): {s['note']}")
        for task, r in s["tasks"].items():
            floor.setdefault(task, r["majority_rate"])
            for m in bootstrap.METRICS:
                rows.append({"method": method, "task": task, "metric": m, **r[m],
                             "n": r["n"], "persons": r["persons"], "seeds": r["seeds"]})
    return rows, floor, notes


def changes_made(runs, configs, runlocal: bool, neural_overrides) -> list[str]:
    """How the study changed the configs, in words."""
    changes = []
    if any(r.method == "vgg_face" and is_neural(c) for r, c in zip(runs, configs, strict=True)):
        vgg = next(c for r, c in zip(runs, configs, strict=True) if r.method == "vgg_face")
        changes.append(f"VGG-Face ran as {describe(vgg)}"
                       + ("; its runlocal variant shrinks it more than the other networks "
                          "(32 px, 2 epochs), so that it fits 30 minutes on two CPU cores"
                          if runlocal else ""))
    if neural_overrides:
        items = neural_overrides.items() if isinstance(neural_overrides, dict) \
            else neural_overrides
        changes.append("set on every neural run: "
                       + ", ".join(f"{k}={v}" for k, v in items))
    return changes


def titles_of(runs, configs) -> dict[str, str]:
    """{method: its title}, marked '(pretrained)' where its trunk started from weights."""
    return {r.method: TITLES[r.method] + (" (pretrained)" if c.get("pretrained")
                                          or c.get("init_weights") else "")
            for r, c in zip(runs, configs, strict=True)}
