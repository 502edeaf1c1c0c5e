"""The study under several protocols side by side: the copy leak.

    out = run_comparison(workdir, ("study", "photo", "subject"), data="synthetic_paired")

Each protocol's study runs in ``workdir/<protocol>`` (`study.run_study`); then, per
method and task, the accuracy under each protocol and the points by which the study's
random image split inflates it over the others, with an interval from a paired
bootstrap over persons (`bootstrap.difference_test`). On ``synthetic_paired`` (about
3.4 masked copies of each photo) that measures the copy leak of the study's protocol:
test images whose photo was trained on under another mask.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from fgmask_jax import config_lib, errors, workdir_lock
from fgmask_jax.evaluation import bootstrap, tables
from fgmask_jax.experiments import leak_control, study

# Several protocols at once under --runlocal without --methods: the classical methods
# that fit in a minute or two and the two multi-task networks, so that three protocols
# finish in about 30 minutes on two CPU cores.
RUNLOCAL_METHODS = ("lbp", "tiny_image", "eigenface", "multitask_cnn", "multitask_resnet")
SHORTENED = ("not run: left out under --runlocal with several protocols, so that they fit "
             "about 30 minutes on two CPU cores; --methods adds it")


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


def check_protocols(protocols: tuple[str, ...], persons_control: bool = False) -> None:
    """Raises `errors.ConfigError` unless ``protocols`` are two or more different known
    ones, ``study`` among them (and ``subject``, for ``persons_control``)."""
    if persons_control and "subject" not in protocols:
        raise errors.ConfigError(
            f"protocols {','.join(protocols)}: the persons control cuts the other protocols "
            "to the subject protocol's training persons; add subject (e.g. "
            "study,photo,subject)")
    if len(protocols) < 2 or len(set(protocols)) != len(protocols) or "study" not in protocols:
        raise errors.ConfigError(
            f"protocols {','.join(protocols) or '(none)'}: give two or more different ones, "
            "study among them (e.g. study,photo,subject)")
    for p in protocols:
        if p not in config_lib.PROTOCOLS:
            raise errors.ConfigError(
                f"protocol={p!r} is not one of: {', '.join(config_lib.PROTOCOLS)}")


def run_comparison(workdir: str, protocols, *, data: str = "synthetic_paired",
                   runlocal: bool = False, methods=None, num_samples: int = 1000,
                   seed: int = 0, command: str = "", persons_control: bool = False,
                   **study_kwargs) -> dict:
    """The study under several protocols, side by side: how much the study's protocol
    inflates each method (the copy leak).

    Runs `study.run_study` in ``workdir/<protocol>`` for each protocol (finished runs are
    reused), then writes ``workdir/leak.md``, ``leak.csv`` and ``leak.json``: per method
    and task the accuracy [95% person-bootstrap interval] under each protocol, and the
    points by which protocol ``study`` exceeds each other one, with an interval and a
    p-value from `bootstrap.difference_test` and Holm's correction over all of them.

    Args:
      protocols: two or more of config_lib.PROTOCOLS, ``study`` among them.
      methods: None -> RUNLOCAL_METHODS under ``runlocal``, else all of study.METHODS.
      command: the command line, for the outputs.
      persons_control: also run ``study`` and ``photo`` with their training persons cut
        to the subject protocol's count (`leak_control`; needs ``subject``): every method
        trains once or twice more.
      study_kwargs: passed on to `study.run_study` (resnet, dataset, data_dir, ...).

    Returns:
      {"rows": [{method, task, protocol, value, low, high, n, persons}], "inflation":
      [{method, task, versus, value, low, high, p, excludes_0, p_holm, excludes_0_holm}],
      "seconds": {protocol: s}, "leak": ..., "control": `leak_control.run_control`'s or
      None}.

    Raises:
      errors.ConfigError: fewer than two protocols, a repeated one, none of them
        ``study``, or a protocol, data, method or override that `study.prepare` refuses;
        checked before anything runs.
      errors.DataError: data that cannot be built (no folder is made).
      errors.WorkdirLockedError: another live run holds ``workdir`` or one of its
        protocols' folders.
    """
    protocols = tuple(protocols)
    check_protocols(protocols, persons_control)
    shortened = methods is None and runlocal
    methods = tuple(methods or (RUNLOCAL_METHODS if runlocal else study.METHODS))
    # Every argument checked, then the data built, before anything is written: data that
    # cannot be built leaves no workdir behind.
    prepared = {p: study.prepare(data, p, runlocal=runlocal, methods=methods, **study_kwargs)
                for p in protocols}
    build_missing_data(workdir, prepared)
    # The whole comparison holds the top workdir; each protocol's study holds its own
    # folder too (another file), so that no study runs there at the same time.
    with workdir_lock.held(workdir):
        studies, seconds = {}, {}
        for p in protocols:
            t0 = time.perf_counter()
            studies[p] = study.run_study(
                os.path.join(workdir, p), data=data, protocol=p, runlocal=runlocal,
                methods=methods, num_samples=num_samples, seed=seed,
                left_out=SHORTENED if shortened else study.LEFT_OUT, **study_kwargs)
            seconds[p] = round(time.perf_counter() - t0, 1)
        control = None
        if persons_control:
            t0 = time.perf_counter()
            control = leak_control.run_control(workdir, prepared, num_samples=num_samples,
                                               seed=seed)
            control["seconds"] = seconds["control"] = round(time.perf_counter() - t0, 1)
        rows = accuracy_rows(studies)
        runs = study.plan(data, "study", runlocal=runlocal, methods=methods,
                          seeds=study_kwargs.get("seeds", 1))
        inflation = inflation_rows(workdir, runs, rows, protocols, num_samples=num_samples,
                                   seed=seed)
        dataset, leak = copies_in_study_split(runs, study_kwargs)
        setting = {"data": data, "dataset": dataset, "protocols": list(protocols),
                   "runlocal": runlocal, "methods": list(methods), "shortened": shortened,
                   "seeds": study_kwargs.get("seeds", 1),
                   "num_samples": num_samples, "command": command, "seconds": seconds,
                   "floors": {p: out["floor"] for p, out in studies.items()},
                   "balanced_inflation": balanced_inflation(studies, protocols),
                   "descriptions": {r["folder"]: r["description"]
                                    for r in studies["study"]["runs"]},
                   "leak": leak}
        write_comparison(workdir, rows, inflation, setting, control)
    return {"rows": rows, "inflation": inflation, "seconds": seconds, "leak": leak,
            "studies": studies, "control": control}


def build_missing_data(workdir: str, prepared: dict) -> None:
    """Builds, once each, the datasets that the runs still to do of every protocol read
    (``prepared``: {protocol: `study.prepare`'s (runs, configs)})."""
    from fgmask_jax.data import build

    keys = dict.fromkeys(key for p, (runs, configs) in prepared.items()
                         for key in study.missing_data(os.path.join(workdir, p), runs, configs))
    for key in keys:
        build.build_or_explain(*key)


def write_comparison(workdir: str, rows, inflation, setting: dict,
                     control: dict | None = None) -> None:
    """leak.csv, leak.md and leak.json in ``workdir``; leak.md adds Holm's decisions under
    its main table and, with ``control`` (`leak_control.run_control`'s), its section."""
    from fgmask_jax.evaluation import writers

    tables.write_leak_csv(os.path.join(workdir, "leak.csv"), rows, inflation)
    path = os.path.join(workdir, "leak.md")
    # The setting's seconds hold the control's time too: leak.md's line names protocols.
    tables.write_leak_markdown(path, rows, inflation, {
        **setting, "seconds": {p: v for p, v in setting["seconds"].items()
                               if p in setting["protocols"]}}, study.WORDING,
        leak_control.section(control, study.TITLES) if control else ())
    writers.write_json(os.path.join(workdir, "leak.json"),
                       {"setting": setting, "rows": rows, "inflation": inflation,
                        "control": control})


def accuracy_rows(studies: dict[str, dict]) -> list[dict]:
    """The accuracy rows of each protocol's study, with their protocol."""
    return [r for p, out in studies.items() for r in study.accuracy_rows(out["rows"], p)]


def inflation_rows(workdir: str, runs, rows, protocols, *, num_samples: int,
                   seed: int) -> list[dict]:
    """Per method, task and other protocol: accuracy under ``study`` minus that under the
    other one, with a paired interval and p-value where both runs kept their predictions
    (else nan), and Holm's decision over all of them (`bootstrap.with_holm`).
    """
    seeds = {(method, t): group for (method, _), group in study.by_method(runs).items()
             for t in group[0].tasks}
    value = {(r["method"], r["task"], r["protocol"]): r for r in rows}
    inflation = []
    for (method, task), group in seeds.items():
        if (method, task, "study") not in value:
            continue
        ours = study.correct_by_seed(os.path.join(workdir, "study"), group, task)
        for p in (p for p in protocols if p != "study"):
            theirs = study.correct_by_seed(os.path.join(workdir, p), group, task)
            point = value[method, task, "study"]["value"] - value[method, task, p]["value"]
            d = (bootstrap.difference_test(ours, theirs, num_samples=num_samples, seed=seed)
                 if ours is not None and theirs is not None
                 else {"low": math.nan, "high": math.nan, "p": math.nan})
            inflation.append({"method": method, "task": task, "versus": p, "value": point,
                              "low": d["low"], "high": d["high"], "p": d["p"]})
    bootstrap.with_holm(inflation)
    return inflation


def balanced_inflation(studies: dict[str, dict], protocols) -> list[dict]:
    """Per method, task and other protocol: balanced accuracy under ``study`` minus that
    under the other one (points as fractions; no interval). Beside the accuracy's
    inflation it shows how much of it is the class mix of each protocol's test set."""
    value = {(r["method"], r["task"], p): r["value"] for p, out in studies.items()
             for r in out["rows"] if r["metric"] == "balanced_accuracy"}
    return [{"method": m, "task": t, "versus": p, "value": v - value[m, t, p]}
            for (m, t, q), v in value.items() if q == "study"
            for p in protocols if p != "study" and (m, t, p) in value]


def copies_in_study_split(runs, study_kwargs: dict) -> tuple[str, dict | None]:
    """(the dataset of the runs, `leaked_copies` of its study split)."""
    from fgmask_jax.data import pipeline

    configs = [study.make_config(r, **{k: v for k, v in study_kwargs.items()
                                       if k in ("dataset", "data_dir")})
               for r in runs]
    return configs[0].dataset, leaked_copies(configs[0].dataset,
                                             pipeline.data_dir(configs[0]))


def run_protocols(workdir: str, protocols, *, data: str, methods=None, command: str = "",
                  **study_kwargs) -> str:
    """The study under one protocol (`study.run_study`) or several side by side
    (`run_comparison`); returns a line that says what ran and where its report is.

    ``methods``: None -> study.METHODS under one protocol, `run_comparison`'s default
    under several; ``command`` (the command line) goes in the comparison's outputs;
    ``persons_control`` (in ``study_kwargs``) needs several protocols.
    """
    protocols = tuple(protocols)
    persons_control = study_kwargs.pop("persons_control", False)
    if len(protocols) > 1:
        out = run_comparison(workdir, protocols, data=data, methods=methods, command=command,
                             persons_control=persons_control, **study_kwargs)
        total = sum(out["seconds"].values())
        return (f"study: {len(protocols)} protocols in {total:.0f}s; see "
                f"{os.path.join(workdir, 'leak.md')}")
    if persons_control:
        raise errors.ConfigError("--persons_control compares protocols: give several, "
                                 "e.g. --protocol=study,photo,subject")
    out = study.run_study(workdir, data=data, protocol=protocols[0] if protocols else "",
                          methods=study.METHODS if methods is None else methods,
                          **study_kwargs)
    return (f"study: {len(out['runs'])} runs ({sum(r['status'] == 'ran' for r in out['runs'])} "
            f"ran now) in {out['seconds']:.0f}s; see {os.path.join(workdir, 'study.md')}")
