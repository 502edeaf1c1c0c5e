"""The experiments' tables: the study's (study.csv, study.md, study.png) and the copy leak's
(leak.csv, leak.md); the mask gap's are `experiments.mask_gap_report`.

Rows are plain dicts: ``{method, task, metric, value, low, high, n, persons}`` for the
study, with ``protocol`` for the leak; values,
``low`` and ``high`` are fractions, ``low``/``high`` nan where a run has no interval.
How methods, data and protocols are named in words is the experiments' to say: they
pass it as a `Wording`.
"""

from __future__ import annotations

import csv
import dataclasses
import math

import numpy as np

from fgmask_jax.data import labels as labels_lib

TASKS = tuple(labels_lib.TASKS)


@dataclasses.dataclass(frozen=True)
class Wording:
    """The words of the tables."""

    titles: dict[str, str]  # method -> its title; the tables list methods in this order
    data: dict[str, tuple[str, str]]  # --data -> (what it is, what the numbers do not say)
    protocols: dict[str, str]  # protocol -> what it holds out


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def sign(x: float) -> str:
    return f"{100 * x:+.1f}"


def _num(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.6f}"


def bounds(r: dict, fmt) -> str:
    """'value [low, high]'."""
    return f"{fmt(r['value'])} [{fmt(r['low'])}, {fmt(r['high'])}]"


def interval(r: dict | None, fmt) -> str:
    """'value [low, high]', or 'value (no interval)' for a run without one, or 'not run'."""
    if r is None:
        return "not run"
    if math.isnan(r["low"]):
        return fmt(r["value"]) + " (no interval)"
    return bounds(r, fmt)


def seeded(r: dict | None, fmt) -> str:
    """`interval`, then ± the seeds' standard deviation where several seeds made ``r``."""
    if r is not None and r.get("seeds", 1) > 1 and not math.isnan(r.get("sd", math.nan)):
        return f"{interval(r, fmt)} ± {fmt(r['sd'])}"
    return interval(r, fmt)


def _ordered(rows, words: Wording) -> tuple[list[str], list[str]]:
    methods = [m for m in words.titles if any(r["method"] == m for r in rows)]
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    return methods, tasks


def _cell(rows, method, task, metric, fmt) -> str:
    found = next((r for r in rows if (r["method"], r["task"], r["metric"])
                  == (method, task, metric)), None)
    return seeded(found, fmt)


def holm_sentence(differences, what: str, name=lambda d: "") -> str:
    """How many of ``differences`` (`bootstrap.with_holm`'s) exclude 0, how many would by
    chance alone, and which still do after Holm's correction; ``name`` names one."""
    differences = [d for d in differences if not math.isnan(d["p"])]  # with an interval
    m = len(differences)
    raw = sum(d["excludes_0"] for d in differences)
    kept = [name(d) for d in differences if d["excludes_0_holm"]]
    which = f": {'; '.join(kept)}" if kept and all(kept) else ""

    def excludes(n: int) -> str:
        return "excludes" if n == 1 else "exclude"

    return (f"{raw} of these {m} {what} {excludes(raw)} 0; with 95% intervals about "
            f"{m / 20:.1f} would by chance alone if no difference were real. "
            f"After Holm's step-down correction over all {m} {what} (two-sided bootstrap "
            f"p-values, family-wise error 5%), {len(kept)} still {excludes(len(kept))} "
            f"0{which}.")


def _paired_section(paired, titles: dict[str, str]) -> list[str]:
    """study.md's paired comparisons: accuracy differences on the same test persons, and
    how to read many of them at once."""
    if not paired:
        return []
    lines = ["", "## Paired comparisons: accuracy difference (points) [95% interval]", "",
             "On the same test persons (and training seeds): each interval comes from "
             "resampling persons once for both methods, so what the two share cancels.", "",
             "| comparison | task | methods | difference | excludes 0 |",
             "|---|---|---|---:|---|"]
    for d in paired:
        lines.append(f"| {d['comparison']} | {d['task']} | {titles.get(d['method'], d['method'])}"
                     f" − {titles.get(d['versus'], d['versus'])} | "
                     f"{sign(d['value'])} [{sign(d['low'])}, {sign(d['high'])}] | "
                     f"{'yes' if not d['low'] <= 0 <= d['high'] else 'no'} |")
    name = lambda d: (f"{titles.get(d['method'], d['method'])} − "  # noqa: E731
                      f"{titles.get(d['versus'], d['versus'])}, {d['task']}")
    return lines + ["", holm_sentence(paired, "comparisons", name)]


# --- the study ------------------------------------------------------------------------


def write_csv(path: str, rows, floor: dict) -> None:
    """One row per method x task x metric: value (the mean over training seeds), low, high
    (blank: no interval), n, persons, seeds, sd (the seeds' standard deviation; blank for
    one seed).

    The majority-class rate is the rows of method ``majority_class`` (accuracy only).
    """
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "task", "metric", "value", "low", "high", "n", "persons",
                    "seeds", "sd"])
        for r in rows:
            span = ["", ""] if math.isnan(r["low"]) else [f"{r['low']:.6f}",
                                                           f"{r['high']:.6f}"]
            seeds = r.get("seeds", 1)
            w.writerow([r["method"], r["task"], r["metric"], f"{r['value']:.6f}", *span,
                        r["n"], "" if r["persons"] is None else r["persons"], seeds,
                        _num(r["sd"]) if seeds > 1 else ""])
        for task, rate in floor.items():
            w.writerow(["majority_class", task, "accuracy", f"{rate:.6f}", "", "", "", "", "",
                        ""])


def write_markdown(path: str, rows, floor: dict, setting: dict, runs, notes,
                   words: Wording, paired=(), missing=None) -> None:
    """study.md: the accuracy table with intervals (and a line for each method of
    ``missing``, {method: why it did not run}), the paired comparisons, the other metrics,
    what ran, notes."""
    methods, tasks = _ordered(rows, words)
    titles = {m: setting.get("titles", {}).get(m, words.titles[m]) for m in methods}
    kind, caveat = words.data[setting["data"]]
    which = ("The eight methods" if len(methods) == 8 else
             f"{len(methods)} of the eight methods" if len(methods) > 1 else titles[methods[0]])
    lines = [
        f"# {which} on {setting['dataset']}, protocol={setting['protocol']}", "",
        f"- data: **{kind}** (`{setting['dataset']}`)" + (f": {caveat}" if caveat else ""),
        f"- protocol: {words.protocols[setting['protocol']]}",
        f"- intervals: 95% percentile intervals from {setting['num_samples']} bootstrap "
        "samples of persons (all images of a drawn person, twice if drawn twice)",
    ]
    if setting.get("seeds", 1) > 1:
        lines.append(
            f"- training seeds: each neural method trained {setting['seeds']} times on the "
            "same splits (config.seed 0.."
            f"{setting['seeds'] - 1}); its value is their mean, its interval also resamples "
            "the seeds (a two-level bootstrap), and ± is their standard deviation. The "
            "classical methods are deterministic given the split and ran once")
    if setting["runlocal"]:
        lines.append("- runlocal: every config ran its runlocal variant (a shrunk run for a "
                     "laptop CPU; each run's size is under 'What ran')")
    lines += [f"- {c}" for c in setting.get("changes", ())]
    lines += ["", "## Accuracy (%) [95% interval by person]", "",
              "| method | " + " | ".join(tasks) + " |",
              "|---|" + "---:|" * len(tasks)]
    for m in methods:
        lines.append(f"| {titles[m]} | "
                     + " | ".join(_cell(rows, m, t, "accuracy", pct) for t in tasks) + " |")
    lines.append("| *majority class (floor)* | "
                 + " | ".join(pct(floor[t]) for t in tasks) + " |")
    if missing:
        lines += ["", f"Not in this table ({len(missing)} of the eight methods):", "",
                  *[f"- {words.titles[m]}: {why}" for m, why in missing.items()]]
    lines += _paired_section(paired, titles)
    lines += ["", "## Balanced accuracy (%) and macro-F1 [95% intervals]", "",
              "| method | " + " | ".join(f"{t} bal. acc. | {t} macro-F1" for t in tasks) + " |",
              "|---|" + "---:|---:|" * len(tasks)]
    f3 = lambda x: f"{x:.3f}"  # noqa: E731
    for m in methods:
        cells = [c for t in tasks for c in (_cell(rows, m, t, "balanced_accuracy", pct),
                                            _cell(rows, m, t, "macro_f1", f3))]
        lines.append(f"| {titles[m]} | " + " | ".join(cells) + " |")
    lines += _study_runs(rows, tasks, runs)
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    lines += ["", "![accuracy by method and task](study.png)", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def _study_runs(rows, tasks, runs) -> list[str]:
    """study.md's test sizes and its 'What ran' table, with the runs' total time."""
    first = {t: next(r for r in rows if r["task"] == t) for t in tasks}
    n_line = ", ".join(
        f"{t}: {r['n']} images" + (f" of {r['persons']} persons" if r["persons"] else "")
        for t, r in first.items())
    lines = ["", f"Test examples: {n_line}. The majority-class rate is the accuracy of "
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
    return lines


def write_plot(path: str, rows, floor: dict, setting: dict, words: Wording) -> None:
    """study.png: accuracy bars grouped by task, one bar per method, interval error bars,
    the majority-class rate as a dashed line over each group."""
    # A Figure of its own, not pyplot: no GUI backend is chosen or needed to save a PNG.
    import matplotlib
    from matplotlib.figure import Figure

    methods, tasks = _ordered(rows, words)
    acc = {(r["method"], r["task"]): r for r in rows if r["metric"] == "accuracy"}
    width = 0.8 / max(len(methods), 1)
    fig = Figure(figsize=(2.4 * len(tasks) + 3, 4.5))
    ax = fig.subplots()
    colors = matplotlib.colormaps["tab10"]
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
               label=setting.get("titles", {}).get(m, words.titles[m]), color=colors(i % 10))
    for j, t in enumerate(tasks):
        ax.hlines(floor[t], j - 0.45, j + 0.45, colors="black", linestyles="dashed",
                  label="majority class" if j == 0 else None)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy (95% interval by person)")
    kind = words.data[setting["data"]][0]
    ax.set_title(f"{kind} ({setting['dataset']}), protocol={setting['protocol']}")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# --- several protocols side by side: the copy leak ------------------------------------


def write_leak_csv(path: str, rows, inflation) -> None:
    """Accuracy rows (kind ``accuracy``, one per method x task x protocol) and inflation
    rows (kind ``inflation``, protocol ``study-<other>``): value, low, high as fractions."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "method", "task", "protocol", "value", "low", "high", "n",
                    "persons", "seeds", "sd"])
        for r in rows:
            seeds = r.get("seeds", 1)
            w.writerow(["accuracy", r["method"], r["task"], r["protocol"], _num(r["value"]),
                        _num(r["low"]), _num(r["high"]), r["n"],
                        "" if r["persons"] is None else r["persons"], seeds,
                        _num(r["sd"]) if seeds > 1 else ""])
        for r in inflation:
            w.writerow(["inflation", r["method"], r["task"], f"study-{r['versus']}",
                        _num(r["value"]), _num(r["low"]), _num(r["high"]), "", "", "", ""])


def write_leak_markdown(path: str, rows, inflation, setting: dict, words: Wording,
                        section=()) -> None:
    """leak.md: accuracy per protocol side by side, the study protocol's inflation (with
    `bootstrap.with_holm`'s decisions) and ``section`` (lines, e.g. a control's) before
    what ran."""
    protocols = setting["protocols"]
    others = [p for p in protocols if p != "study"]
    methods, tasks = _ordered(rows, words)
    acc = {(r["method"], r["task"], r["protocol"]): r for r in rows}
    up = {(r["method"], r["task"], r["versus"]): r for r in inflation}
    lines = _leak_setting(setting, len(methods), words)
    lines += ["", "## Accuracy (%) [95% interval by person] and the study protocol's "
              "inflation (points)", "",
              "| method | task | " + " | ".join(protocols) + " | "
              + " | ".join(f"study − {p}" for p in others) + " |",
              "|---|---|" + "---:|" * (len(protocols) + len(others))]
    for m in methods:
        for t in tasks:
            cells = [seeded(acc.get((m, t, p)), pct) for p in protocols]
            cells += [interval(up.get((m, t, p)), sign) for p in others]
            lines.append(f"| {words.titles[m]} | {t} | " + " | ".join(cells) + " |")
    floors = setting.get("floors", {})
    for t in tasks:  # each protocol's test set has its own class mix
        cells = [pct(floors[p][t]) if t in floors.get(p, {}) else "" for p in protocols]
        lines.append(f"| *majority class (floor)* | {t} | " + " | ".join(cells) + " |"
                     + " |" * len(others))
    name = lambda d: f"{words.titles[d['method']]} {d['task']} study − {d['versus']}"  # noqa: E731
    lines += ["", "Many intervals at once: " + holm_sentence(inflation, "inflations", name)]
    balanced = {(r["method"], r["task"], r["versus"]): r["value"]
                for r in setting.get("balanced_inflation", ())}
    lines += ["", "## Mean inflation over tasks (points)", "",
              "Balanced accuracy (the mean recall over classes, no interval) is blind to the "
              "class mix, which differs between the protocols' test sets: where its inflation "
              "is much smaller than accuracy's, part of the gap is the floor moving.", "",
              "| method | " + " | ".join(f"study − {p}" for p in others) + " | "
              + " | ".join(f"study − {p}, balanced acc." for p in others) + " |",
              "|---|" + "---:|" * (2 * len(others))]
    for m in methods:
        means = []
        for p in others:
            v = [up[m, t, p]["value"] for t in tasks if (m, t, p) in up]
            means.append(sign(float(np.mean(v))) if v else "not run")
        for p in others:
            v = [balanced[m, t, p] for t in tasks if (m, t, p) in balanced]
            means.append(sign(float(np.mean(v))) if v else "not run")
        lines.append(f"| {words.titles[m]} | " + " | ".join(means) + " |")
    lines += list(section)
    lines += ["", "## What ran", "", "| run | what |", "|---|---|"]
    lines += [f"| {folder} | {text} |" for folder, text in setting["descriptions"].items()]
    lines += ["", "Each protocol's own report: "
              + ", ".join(f"[{p}/study.md]({p}/study.md)" for p in protocols) + ".", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def _leak_setting(setting: dict, num_methods: int, words: Wording) -> list[str]:
    """leak.md's title and the list of what was compared, how, and how long it took."""
    protocols = setting["protocols"]
    kind, caveat = words.data[setting["data"]]
    lines = [f"# The copy leak: {num_methods} methods on {setting['dataset']} under "
             + ", ".join(protocols), "",
             f"- data: `{setting['dataset']}` ({kind}" + (f": {caveat})" if caveat else ")")]
    lines += [f"- protocol {p}: {words.protocols[p]}" for p in protocols]
    if setting.get("leak"):
        lk = setting["leak"]
        lines.append(f"- under protocol study, {lk['with_copy_in_train']} of the "
                     f"{lk['test_images']} test images ({lk['test_photos']} photos) have "
                     "another masked copy of their photo in the training split")
    lines += [
        f"- intervals: 95% percentile intervals from {setting['num_samples']} bootstrap "
        "samples of persons; an inflation's interval resamples the persons of both test "
        "sets together (`bootstrap.difference_test`)",
        *([f"- training seeds: each network trained {seeds} times on the same splits "
           f"(config.seed 0..{seeds - 1}); its cell is the mean [interval over persons and "
           "seeds] ± the seeds' standard deviation; the classical methods ran once"]
          if (seeds := setting.get("seeds", 1)) > 1 else []),
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
    return lines
