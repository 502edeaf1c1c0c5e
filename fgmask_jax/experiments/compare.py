"""Two finished studies side by side, run for run: what a change of setting (dropping
``--runlocal``, another ResNet, a ``--neural_override``) does to each method, on the same
test persons.

  python -m fgmask_jax.study --workdir=BIG --compare_with=SMALL

Per method and task that both studies ran: the accuracy in each (the mean over its seeds)
and the difference, this study's minus the other's, with its interval from
`bootstrap.difference_test` (persons resampled once for both sides and each side's seeds
within them; a seed s of one setting and of the other are different models, so the seeds
are not paired) and Holm's decisions over all the differences. Both studies must have
tested the same images (one data set, protocol and ``split_seed``); a method whose runs
did not is refused.
"""

from __future__ import annotations

import os
import re

from fgmask_jax import errors
from fgmask_jax.evaluation import bootstrap, tables, writers
from fgmask_jax.experiments import scores
from fgmask_jax.experiments import study as study_lib

# A run's folder in a study: <method>[/<task>][.seed<s>] (`study.Run.folder`).
_FOLDER = re.compile(r"^(?P<method>\w+?)(?:/(?P<task>\w+?))?(?:\.seed(?P<seed>\d+))?$")


def finished_runs(workdir: str) -> tuple[dict[tuple[str, str | None], list[str]], dict]:
    """({(method, task or None): [folders of its finished runs, in seed order]}, study.json)
    of a study's folder; a run is finished when its folder holds results.json.

    Raises:
      errors.UserError: the folder holds no study.json (it is not a study's folder).
    """
    path = os.path.join(workdir, "study.json")
    if not os.path.exists(path):
        raise errors.UserError(f"{workdir} holds no study.json: give the --workdir of a "
                               "finished `python -m fgmask_jax.study`")
    record = writers.read_json(path)
    groups: dict[tuple[str, str | None], list[tuple[int, str]]] = {}
    for folder in record.get("runs", {}):
        m = _FOLDER.match(folder)
        if (m and m["task"] in (None, *study_lib.TASKS)
                and os.path.exists(os.path.join(workdir, folder, "results.json"))):
            groups.setdefault((m["method"], m["task"]), []).append((int(m["seed"] or 0), folder))
    return {key: [f for _, f in sorted(runs)] for key, runs in groups.items()}, record


def compare_studies(workdir: str, other: str, *, num_samples: int = 1000,
                    seed: int = 0) -> dict:
    """Compares the runs ``workdir`` and ``other`` both finished, method by method; writes
    ``workdir/compare.md`` and ``compare.json``.

    Returns:
      {"rows": [{method, task, ours, theirs, seeds, value, low, high, p, excludes_0,
      p_holm, excludes_0_holm}], "unpaired": ["<method>, <task>" lacking a run's
      predictions], "markdown": compare.md's text}; accuracies and differences are
      fractions.

    Raises:
      errors.UserError: a folder that is no study's, no method finished in both, or a
        method whose runs in the two studies tested other images (`errors.DataError`).
    """
    ours, our_record = finished_runs(workdir)
    theirs, their_record = finished_runs(other)
    shared = [key for key in ours if key in theirs]
    if not shared:
        raise errors.UserError(
            f"no method finished in both {workdir} ({_listed(ours)}) and {other} "
            f"({_listed(theirs)}): run the same --methods in both")
    way_out = ("compare studies of one data set, protocol and split_seed (the same test "
               "images)")
    rows, unpaired = [], []
    for method, task in sorted(shared, key=lambda k: (study_lib.METHODS.index(k[0])
                                                      if k[0] in study_lib.METHODS else 99, k)):
        for t in (task,) if task else study_lib.TASKS:
            a_folders = [os.path.join(workdir, f) for f in ours[method, task]]
            b_folders = [os.path.join(other, f) for f in theirs[method, task]]
            a = scores.correct_by_seed(workdir, ours[method, task], t)
            b = scores.correct_by_seed(other, theirs[method, task], t)
            if a is None or b is None:  # a run without per-image predictions
                unpaired.append(f"{study_lib.TITLES.get(method, method)}, {t}")
                continue
            firsts = [scores.load_predictions(f[0], (t,)) for f in (a_folders, b_folders)]
            scores.check_same_images([a_folders[0], b_folders[0]], firsts, (t,), way_out)
            d = bootstrap.difference_test(a, b, num_samples=num_samples, seed=seed)
            rows.append({"method": method, "task": t, "ours": float(a[0].mean()),
                         "theirs": float(b[0].mean()), "seeds": [len(a[0]), len(b[0])],
                         **d})
    bootstrap.with_holm(rows)
    text = markdown(workdir, other, rows, our_record, their_record, num_samples)
    if unpaired:
        text += ("\nNot compared, for want of a run's per-image predictions (predictions.npz):"
                 f" {'; '.join(unpaired)}.\n")
    with open(os.path.join(workdir, "compare.md"), "w") as f:
        f.write(text)
    writers.write_json(os.path.join(workdir, "compare.json"),
                       {"this": workdir, "other": other, "rows": rows, "unpaired": unpaired,
                        "num_samples": num_samples, "seed": seed})
    return {"rows": rows, "unpaired": unpaired, "markdown": text}


def _listed(groups) -> str:
    return ", ".join(sorted({m for m, _ in groups})) or "none"


def markdown(workdir: str, other: str, rows, our_record: dict, their_record: dict,
             num_samples: int) -> str:
    """compare.md: the two studies, what each method was in each, then one row per method
    and task."""
    titles = study_lib.TITLES

    def described(record: dict, method: str) -> str:
        return next((r.get("description", "") for f, r in record.get("runs", {}).items()
                     if _FOLDER.match(f) and _FOLDER.match(f)["method"] == method), "")

    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = [f"# {os.path.basename(os.path.normpath(workdir))} − "
             f"{os.path.basename(os.path.normpath(other))}: accuracy difference (points)", "",
             f"- this study: `{workdir}`", f"- the other: `{other}`",
             "- each difference: this study's accuracy minus the other's, on the same test "
             f"images, with a 95% interval from {num_samples} bootstrap samples of persons "
             "(the same persons for both sides) and of each side's training seeds within "
             "them (the seeds of two settings are different models, so not paired)",
             *[f"- {titles.get(m, m)}: here {described(our_record, m) or '?'}; in the other "
               f"{described(their_record, m) or '?'}" for m in methods], "",
             "| method | task | this study (%) | the other (%) | seeds | difference [95%] | "
             "excludes 0 (after Holm) |", "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        holm = ("yes (yes)" if r["excludes_0_holm"] else "yes (no)" if r["excludes_0"]
                else "no")
        lines.append(
            f"| {titles.get(r['method'], r['method'])} | {r['task']} | {tables.pct(r['ours'])} "
            f"| {tables.pct(r['theirs'])} | {'/'.join(map(str, r['seeds']))} | "
            f"{tables.sign(r['value'])} [{tables.sign(r['low'])}, {tables.sign(r['high'])}] | "
            f"{holm} |")
    name = lambda d: f"{titles.get(d['method'], d['method'])}, {d['task']}"  # noqa: E731
    return "\n".join(lines + ["", tables.holm_sentence(rows, "differences", name), ""])
