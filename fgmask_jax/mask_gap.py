r"""What the mask costs: train on masked or unmasked faces, test on both versions of the
same test photos.

  python -m fgmask_jax.mask_gap --workdir=DIR --runlocal
  python -m fgmask_jax.mask_gap --workdir=DIR --protocol=subject \
      --methods=multitask_cnn,multitask_resnet,single_task_cnn

Needs data whose masked images and unmasked twins of one photo are both known: the
synthetic ``paired`` set (``--data=synthetic_paired``, the default), or FG-NET's photos
with masked copies of each (``--data=fgnet_paired``: FG-NET and FGNET-MASK's archive in
the manual dir; see docs/beyond_the_study.md). For each neural method it trains one
model on each training set of the protocol's training photos:

- ``masked``: every masked copy (``<protocol>_train``, about 3.4 copies a photo);
- ``masked_one``: one masked copy per photo, drawn at random (seed 0): as many images
  of the same photos as the unmasked set (``--one_copy``, on by default);
- ``unmasked``: the unmasked twin of each photo (``unmasked_<protocol>_train``);

every model for the same number of steps (the ``masked`` run's), each early-stopped on
its own photo- (or person-) disjoint validation subset. Each model is then tested on
the masked copies of the protocol's test photos (``<protocol>_test``) and on their
unmasked twins (``unmasked_<protocol>_test``). A run whose folder holds results.json
and both test files is not run again.

Writes in ``DIR``: ``mask_gap.md`` (per method and task, accuracy [95% interval by
person] for each training set x test set, and the gap: unmasked test minus masked
test, with an interval from a paired bootstrap over the test persons, who are the same
in both test sets) and ``mask_gap.json`` (the same, with sizes and timings). Each run's
folder ``DIR/<method>[/<task>]/<training set>`` holds its usual report and
``test_masked.npz`` / ``test_unmasked.npz`` (``subject_id``, ``label_<task>``,
``pred_<task>``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

import numpy as np
from absl import flags, logging

from fgmask_jax import cli, config_lib, study
from fgmask_jax.evaluation import bootstrap

METHODS = ("multitask_cnn", "multitask_resnet", "single_task_cnn", "single_task_resnet")
DEFAULT_METHODS = ("multitask_cnn", "multitask_resnet")
PROTOCOLS = ("photo", "subject")
DATA = ("synthetic_paired", "fgnet_paired")  # the data with unmasked twins
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
         data: str = "synthetic_paired") -> list[Cell]:
    """The cells of the mask gap: every run of ``methods`` on every training set.

    Raises:
      ValueError: an unknown protocol or method, or data without unmasked twins.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r} is not one of: {', '.join(PROTOCOLS)}")
    if data not in DATA:
        raise ValueError(f"data={data!r}: the mask gap needs unmasked twins of the masked "
                         f"photos; only {' and '.join(DATA)} have them (fgnet_paired is "
                         "FG-NET with masked copies: see docs/beyond_the_study.md)")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods {unknown or '(none)'}: choose from {', '.join(METHODS)}")
    trainings = TRAININGS if one_copy else ("masked", "unmasked")
    runs = study.plan(data, protocol, runlocal=runlocal, methods=tuple(methods),
                      resnet=resnet)
    return [Cell(r, t) for r in runs for t in trainings]


def step_budget(config, labels: dict[str, np.ndarray]) -> int:
    """The steps of a run of ``config`` on the training set ``labels`` (its fit part)."""
    from fgmask_jax import train

    if config.num_train_steps:
        return int(config.num_train_steps)
    fit, _ = train.fit_val_indices(labels, config)
    return int(math.ceil(config.num_epochs * max(len(fit) // config.batch_size, 1)))


def predict_split(folder: str, source, config) -> dict[str, np.ndarray]:
    """The run in ``folder`` on every image of ``source``: {subject_id, label_<task>,
    pred_<task>}."""
    from fgmask_jax import predict
    from fgmask_jax.data import pipeline

    data = pipeline.load_all(source, np.arange(len(source)), config.image_size)
    predictor = predict.Predictor.from_workdir(folder, batch_size=config.batch_size)
    probs = predictor.probabilities(data["image"])
    out = {"subject_id": data["subject_id"].astype(np.int64)}
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
                 seed: int = 0, command: str = "") -> dict:
    """Trains the missing cells, tests each on both test sets, writes mask_gap.md/json.

    Args:
      workdir: each run in ``workdir/<method>[/<task>]/<training set>``.
      protocol: photo | subject: which photos are training and test photos.
      one_copy: also train on one masked copy per photo (``masked_one``).
      dataset, data_dir, manual_dir, neural_overrides: as `study.make_config` takes them.
      num_samples, seed: of the person bootstrap.
      command: the command line, for the outputs.

    Returns:
      {"cells": [{method, task, train, test, value, low, high, n, persons}], "gaps":
      [{method, task, train, value, low, high}], "runs": [{folder, status, seconds,
      steps}], "sizes": {...}, "seconds": wall time}.
    """
    from fgmask_jax import build_data, train
    from fgmask_jax.data import labels as labels_lib
    from fgmask_jax.data import pipeline
    from fgmask_jax.evaluation import writers

    began = time.perf_counter()
    cells = plan(protocol, methods=methods, runlocal=runlocal, resnet=resnet,
                 one_copy=one_copy, data=data)
    overrides = [*(RUNLOCAL_OVERRIDES.items() if runlocal else ()),
                 *(neural_overrides.items() if isinstance(neural_overrides, dict)
                   else neural_overrides or ())]
    configs = {c.run: study.make_config(c.run, dataset=dataset, data_dir=data_dir,
                                        manual_dir=manual_dir, neural_overrides=overrides)
               for c in cells}
    first = next(iter(configs.values()))
    build_data.build_or_explain(first.dataset, pipeline.data_dir(first),
                                first.manual_dir or None)
    names = splits_of(protocol)
    sources = {k: pipeline.open_split(first.dataset, v, pipeline.data_dir(first))
               for k, v in names.items()}
    labels = {k: pipeline.read_labels(s) for k, s in sources.items()}
    train_sets = {"masked": ("train", np.arange(len(sources["train"]))),
                  "masked_one": ("train", one_copy_per_photo(labels["train"]["photo_id"],
                                                             seed)),
                  "unmasked": ("unmasked_train", np.arange(len(sources["unmasked_train"])))}
    sizes = {t: {"images": int(len(ix)),
                 "photos": int(len(np.unique(labels[src]["photo_id"][ix]))),
                 "persons": int(len(np.unique(labels[src]["subject_id"][ix])))}
             for t, (src, ix) in train_sets.items()}
    for t in ("test", "unmasked_test"):
        sizes[t] = {"images": len(sources[t]),
                    "photos": int(len(np.unique(labels[t]["photo_id"]))),
                    "persons": int(len(np.unique(labels[t]["subject_id"])))}
    os.makedirs(workdir, exist_ok=True)
    previous = study._read_json(os.path.join(workdir, "mask_gap.json")).get("runs", {})  # noqa: SLF001
    records = {}
    for cell in cells:
        config = configs[cell.run].copy_and_resolve_references()
        src, ix = train_sets[cell.training]
        # Every training set gets the steps of the masked one: the same number of images
        # seen, so the smaller sets are not also trained less.
        config.num_train_steps = step_budget(
            configs[cell.run], {k: v[train_sets["masked"][1]] for k, v in labels["train"].items()})
        folder = os.path.join(workdir, cell.folder)
        files = {t: os.path.join(folder, f"test_{t}.npz") for t in TESTS}
        record = {"folder": cell.folder, "steps": config.num_train_steps,
                  "description": study.describe(config)}
        if all(os.path.exists(p) for p in (*files.values(), os.path.join(folder,
                                                                          "results.json"))):
            logging.info("mask_gap: %s is finished; not run again", folder)
            record.update(status="skipped",
                          seconds=previous.get(cell.folder, {}).get("seconds"))
        else:
            t0 = time.perf_counter()
            if not os.path.exists(os.path.join(folder, "results.json")):
                logging.info("mask_gap: training %s (%s)", cell.folder, record["description"])
                train.fit_and_test(config, folder, sources[src], ix, sources["test"],
                                   np.arange(len(sources["test"])),
                                   test_name=f"masked {names['test']} split")
            for t, split in (("masked", "test"), ("unmasked", "unmasked_test")):
                p = predict_split(folder, sources[split], config)
                writers.write_predictions(files[t], p["subject_id"],
                                          {k: p[f"label_{k}"] for k in config.tasks},
                                          {k: p[f"pred_{k}"] for k in config.tasks})
            record.update(status="ran", seconds=round(time.perf_counter() - t0, 1))
        records[cell.folder] = record
        study._write_json(os.path.join(workdir, "mask_gap.json"),  # noqa: SLF001
                          {"runs": {**previous, **records}})

    rows, gaps, costs = [], [], []
    for run in dict.fromkeys(c.run for c in cells):
        trainings = [c.training for c in cells if c.run == run]
        preds = {(tr, te): _load(os.path.join(workdir, run.folder, tr, f"test_{te}.npz"))
                 for tr in trainings for te in TESTS}
        for task in run.tasks:
            k = len(labels_lib.TASKS[task])
            correct = {key: (p[f"label_{task}"] == p[f"pred_{task}"], p["subject_id"])
                       for key, p in preds.items()}
            for (tr, te), p in preds.items():
                b = bootstrap.person_bootstrap(p[f"label_{task}"], p[f"pred_{task}"],
                                               p["subject_id"], k, num_samples=num_samples,
                                               seed=seed)
                rows.append({"method": run.method, "task": task, "train": tr, "test": te,
                             **b["accuracy"], "n": b["n"], "persons": b["persons"],
                             "majority_rate": b["majority_rate"]})
            for tr in trainings:
                d = study.paired_difference(correct[tr, "unmasked"], correct[tr, "masked"],
                                            num_samples=num_samples, seed=seed)
                gaps.append({"method": run.method, "task": task, "train": tr, **d})
            for tr in (t for t in trainings if t != "unmasked"):
                # Trained and tested alike: unmasked on unmasked minus masked on masked.
                d = study.paired_difference(correct["unmasked", "unmasked"],
                                            correct[tr, "masked"],
                                            num_samples=num_samples, seed=seed)
                costs.append({"method": run.method, "task": task, "train": tr, **d})
    seconds = time.perf_counter() - began
    runs = [records[c.folder] for c in cells]
    setting = {"data": data, "dataset": first.dataset, "protocol": protocol,
               "splits": names, "runlocal": runlocal, "methods": list(methods),
               "num_samples": num_samples, "command": command, "sizes": sizes,
               "seconds": round(seconds, 1)}
    write_markdown(os.path.join(workdir, "mask_gap.md"), rows, gaps, costs, setting, runs)
    study._write_json(os.path.join(workdir, "mask_gap.json"),  # noqa: SLF001
                      {"runs": {**previous, **records}, "setting": setting, "cells": rows,
                       "gaps": gaps, "costs": costs})
    return {"cells": rows, "gaps": gaps, "costs": costs, "runs": runs, "sizes": sizes,
            "seconds": seconds}


def write_markdown(path: str, rows, gaps, costs, setting: dict, runs) -> None:
    """mask_gap.md: per method, a table of task x training set with both tests and the gap."""
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    sign = lambda x: f"{100 * x:+.1f}"  # noqa: E731

    def cell(r, fmt):
        return f"{fmt(r['value'])} [{fmt(r['low'])}, {fmt(r['high'])}]"

    sizes, names = setting["sizes"], setting["splits"]
    kind, caveat = study.DATA_TEXT[setting["data"]]
    describe = lambda s: (f"{s['images']:,} images of {s['photos']:,} photos, "  # noqa: E731
                          f"{s['persons']} persons")
    lines = [f"# What the mask costs: {setting['dataset']}, protocol={setting['protocol']}",
             "",
             f"- data: `{setting['dataset']}` ({kind}: {caveat})",
             f"- protocol {setting['protocol']}: " + study.PROTOCOL_TEXT[setting["protocol"]],
             f"- masked test: `{names['test']}`, {describe(sizes['test'])}; unmasked test: "
             f"`{names['unmasked_test']}`, {describe(sizes['unmasked_test'])} (the twins "
             "of the same photos)",
             f"- trained on `{names['train']}` masked, all copies ({describe(sizes['masked'])})"
             + (f"; masked, one copy a photo drawn at random ({describe(sizes['masked_one'])})"
                if "masked_one" in {r["train"] for r in rows} else "")
             + f"; unmasked twins `{names['unmasked_train']}` ({describe(sizes['unmasked'])})",
             "- every run of a method trains the same number of steps (those of the masked, "
             "all-copies run), each early-stopped on its own validation subset carved from "
             "its training set (photo- or person-disjoint, as the protocol)",
             f"- intervals: 95% percentile intervals from {setting['num_samples']} bootstrap "
             "samples of test persons; a gap's interval is a paired bootstrap (both test sets "
             "hold the same persons and photos)",
             "- gap: accuracy on the unmasked test minus that on the masked test, in points, "
             "for one model; cost: a model trained and tested on unmasked faces minus one "
             "trained and tested on masked faces"]
    if setting["runlocal"]:
        lines.append("- runlocal: the runlocal configs (a shrunk run for a laptop CPU), "
                     "shortened for the mask gap: " + ", ".join(
                         f"{k}={v:g}" for k, v in RUNLOCAL_OVERRIDES.items())
                     + " (of the all-copies set; see 'What ran')")
    if setting.get("command"):
        lines.append(f"- command: `{setting['command']}`")
    lines.append(f"- wall time: {setting['seconds'] / 60:.1f} min (0 for finished runs "
                 "reused)")
    floor = {}
    for r in rows:
        floor.setdefault((r["task"], r["test"]), r["majority_rate"])
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for m in methods:
        lines += ["", f"## {study.TITLES[m]}", "",
                  "| task | trained on | masked test | unmasked test | gap (unmasked − masked) |",
                  "|---|---|---:|---:|---:|"]
        acc = {(r["task"], r["train"], r["test"]): r for r in rows if r["method"] == m}
        for g in (g for g in gaps if g["method"] == m):
            lines.append(f"| {g['task']} | {TRAINING_TEXT[g['train']]} | "
                         f"{cell(acc[g['task'], g['train'], 'masked'], pct)} | "
                         f"{cell(acc[g['task'], g['train'], 'unmasked'], pct)} | "
                         f"{cell(g, sign)} |")
        mine = [c for c in costs if c["method"] == m]
        if mine:
            lines += ["", "Cost of the mask, trained and tested alike (points): "
                      + "; ".join(f"{c['task']} {cell(c, sign)} "
                                  f"(vs {TRAINING_TEXT[c['train']]})" for c in mine) + "."]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    lines += ["", "Majority-class rate (floor): " + ", ".join(
        f"{t} {pct(floor[t, 'masked'])} (masked test), {pct(floor[t, 'unmasked'])} "
        "(unmasked)" for t in tasks) + ".", "", "## What ran", "",
        "| run | what | steps | status | seconds |", "|---|---|---:|---|---:|"]
    for r in runs:
        secs = "" if r.get("seconds") is None else f"{r['seconds']:.0f}"
        lines.append(f"| {r['folder']} | {r['description']} | {r['steps']} | {r['status']} "
                     f"| {secs} |")
    lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


# --- the command ----------------------------------------------------------------------


def define_flags() -> None:
    """The command's flags (defined only when run as a command)."""
    flags.DEFINE_string("workdir", None, "The folder; each run in "
                        "WORKDIR/<method>[/<task>]/<training set>.")
    flags.DEFINE_enum("protocol", "photo", list(PROTOCOLS),
                      "Which photos are tested: photo: 75/25 of source photos; subject: "
                      "75/25 of persons.")
    flags.DEFINE_list("methods", list(DEFAULT_METHODS), f"A subset of: {', '.join(METHODS)}.")
    flags.DEFINE_enum("data", "synthetic_paired", list(DATA),
                      "Data with unmasked twins of the masked photos: the synthetic paired "
                      "set, or FG-NET's photos with masked copies of each.")
    flags.DEFINE_bool("runlocal", False, "The runlocal configs (ResNet-18 and the CNN at 64 "
                      "px), 5 epochs of the all-copies set: about 30 minutes on two CPU "
                      "cores.")
    flags.DEFINE_bool("one_copy", True, "Also train on one masked copy per photo: as many "
                      "images of the same photos as the unmasked set.")
    flags.DEFINE_string("resnet", "", "ResNet of the ResNet methods ('' -> resnet18 under "
                        "--runlocal, else resnet152).")
    flags.DEFINE_string("data_dir", "", "TFDS data dir ('' -> $TFDS_DATA_DIR or "
                        "~/tensorflow_datasets); a missing dataset is built there.")
    flags.DEFINE_string("manual_dir", "", "fgnet_paired only: the folder of FGNET.zip and "
                        "FGNET-MASK_dataset.zip ('' -> DATA_DIR/downloads/manual).")
    flags.DEFINE_multi_string("neural_override", [], "KEY=VALUE set on every run, e.g. "
                              "num_epochs=2 (the steps of every training set follow it).")
    flags.DEFINE_integer("num_samples", 1000, "Bootstrap samples of persons.")
    flags.DEFINE_integer("seed", 0, "Seed of the bootstrap and of the one-copy draw.")


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    overrides = study.parse_overrides(f.neural_override)
    workdir = cli.absolute(f.workdir)
    command = "python -m fgmask_jax.mask_gap " + " ".join(
        a for a in sys.argv[1:] if not a.startswith("--workdir")) + " --workdir=DIR"
    try:
        out = run_mask_gap(workdir, protocol=f.protocol, methods=tuple(f.methods),
                           runlocal=f.runlocal, resnet=f.resnet, one_copy=f.one_copy,
                           data=f.data, data_dir=cli.absolute(f.data_dir),
                           manual_dir=cli.absolute(f.manual_dir), neural_overrides=overrides,
                           num_samples=f.num_samples, seed=f.seed, command=command)
    except (ValueError, config_lib.ConfigError) as e:
        raise cli.UserError(str(e)) from None
    print(f"mask_gap: {len(out['runs'])} runs "
          f"({sum(r['status'] == 'ran' for r in out['runs'])} ran now) in "
          f"{out['seconds']:.0f}s; see {os.path.join(workdir, 'mask_gap.md')}")


if __name__ == "__main__":
    define_flags()
    flags.mark_flags_as_required(["workdir"])
    cli.run(main, prog="fgmask_jax.mask_gap")
