"""The evaluation report: ``report.md`` and confusion-matrix PNGs in the workdir."""

from __future__ import annotations

import os

import numpy as np
from etils import epath
from matplotlib.figure import Figure

from fgmask_jax.data import labels as labels_lib
from fgmask_jax.evaluation import writers


def plot_confusion(cm: np.ndarray, class_names, title: str, path: str) -> None:
    """Writes a row-normalised confusion matrix (counts annotated) to ``path``."""
    cm = np.asarray(cm)
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(1.2 * len(class_names) + 2, 1.1 * len(class_names) + 1.5))
    ax = fig.subplots()
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{rates[i, j]:.0%}", ha="center", va="center",
                    color="white" if rates[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    with epath.Path(path).open("wb") as f:
        fig.savefig(f, format="png", dpi=100)


def format_table(results: dict[str, dict]) -> str:
    """Markdown table of per-task summaries (see metrics.summarize) of one split; the loss
    column only for results that have one (the classical methods' have none)."""
    with_loss = any("loss" in r for r in results.values())
    lines = [
        "| task | n | accuracy | majority rate | balanced accuracy | macro-F1 |"
        + (" loss |" if with_loss else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if with_loss else ""),
    ]
    for task, r in results.items():
        loss = (f" {r['loss']:.3f} |" if "loss" in r else " - |") if with_loss else ""
        lines.append(
            f"| {task} | {r['n']} | {r['accuracy']:.1%} | {r['majority_rate']:.1%} | "
            f"{r['balanced_accuracy']:.1%} | {r['macro_f1']:.3f} |{loss}"
        )
    return "\n".join(lines)


def write_report(workdir: str, title: str, sections: dict[str, dict[str, dict]],
                 notes: list[str] = ()) -> str:
    """Writes ``report.md`` and ``confusion_<split>_<task>.png``; returns the report path.

    sections: split name -> task -> summary (metrics.summarize, plus 'loss').
    """
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", "", *[f"- {n}" for n in notes], ""]
    for split, results in sections.items():
        parts += [f"## {split}", "", format_table(results), ""]
        for task, r in results.items():
            name = f"confusion_{split}_{task}.png"
            plot_confusion(r["confusion"], labels_lib.TASKS[task], f"{split}: {task}",
                           os.path.join(workdir, name))
            parts.append(f"![{split} {task}]({name})")
        parts.append("")
    path = os.path.join(workdir, "report.md")
    writers.write_text(path, "\n".join(parts))
    return path


# --- beyond accuracy: calibration, saliency, subgroups ---------------------------------
# Each `*_section` writes its PNG (if any) into the workdir and returns markdown;
# `append_sections` adds them to a report.md that `write_report` wrote.


def _save(fig, path: str) -> None:
    with epath.Path(path).open("wb") as f:
        fig.savefig(f, format="png", dpi=100)


def _temperature(r: dict, digits: int = 3) -> str:
    """A task's fitted T, "(bound)" where the fit stopped at the edge of the allowed range;
    for pooled folds (``fold_temperatures``), the range of the folds' own."""
    if "temperature" in r:
        return f"{r['temperature']:.{digits}f}" + (" (bound)" if r.get("at_bound") else "")
    folds = r["fold_temperatures"]
    return f"{min(folds):.{digits}f} to {max(folds):.{digits}f} ({len(folds)} folds)"


def _with_interval(r: dict, key: str) -> str:
    """'value [low, high]' of a calibration entry (the value alone without an interval)."""
    bounds = r.get(f"{key}_interval")
    return f"{r[key]:.3f}" + (f" [{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else "")


def plot_reliability(results: dict[str, dict], path: str, title: str = "") -> None:
    """Reliability diagrams, one panel per task, before and after temperature scaling.

    results: `calibration.calibrate_tasks` output ({task: {"reliability",
    "reliability_scaled", "ece", "ece_scaled", "temperature", ...}}; pooled folds give
    "fold_temperatures" instead of "temperature"). Each panel plots accuracy against mean
    confidence per filled bin (marker area ~ bin count) and the diagonal of perfect
    calibration; the legend gives each ECE with its interval where there is one.
    """
    tasks = list(results)
    fig = Figure(figsize=(3.6 * len(tasks), 3.8), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        r = results[task]
        scaled = (f"T = {r['temperature']:.2f}" if "temperature" in r
                  else "T of each fold")
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
        for key, ece, label, color in (
                ("reliability", "ece", "T = 1", "tab:red"),
                ("reliability_scaled", "ece_scaled", scaled, "tab:blue")):
            bins = r[key]
            filled = bins["count"] > 0
            size = 200 * bins["count"][filled] / max(bins["count"].sum(), 1)
            ax.plot(bins["confidence"][filled], bins["accuracy"][filled], color=color, lw=1)
            ax.scatter(bins["confidence"][filled], bins["accuracy"][filled], s=size + 8,
                       color=color, label=f"{label}: ECE {_with_interval(r, ece)}")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_xlabel("confidence (top probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(task)
        ax.legend(loc="upper left", fontsize=7)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def format_calibration(results: dict[str, dict]) -> str:
    """Markdown table of `calibration.calibrate_tasks` output (or pooled folds')."""
    lines = ["| task | n | temperature | ECE | ECE scaled | NLL | NLL scaled |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for task, r in results.items():
        lines.append(f"| {task} | {r['n']} | {_temperature(r)} | {_with_interval(r, 'ece')} | "
                     f"{_with_interval(r, 'ece_scaled')} | {_with_interval(r, 'nll')} | "
                     f"{_with_interval(r, 'nll_scaled')} |")
    return "\n".join(lines)


def calibration_section(workdir: str, results: dict[str, dict], split: str = "test",
                        fitted_on: str = "the validation subset") -> str:
    """Writes ``reliability_<split>.png``; returns the markdown section.

    fitted_on: where the temperature came from, in words ("the temperature half of the
    validation persons (...)").
    """
    name = f"reliability_{split.replace(' ', '_')}.png"
    plot_reliability(results, os.path.join(workdir, name), f"{split}: reliability")
    num_bins = len(next(iter(results.values()))["reliability"]["count"]) if results else 0
    return "\n".join([
        f"## Calibration ({split})", "",
        f"Expected calibration error (top label, {num_bins} equal-width bins) and NLL at "
        "T = 1 and after dividing the logits by a temperature T (minimum NLL) fitted on "
        f"{fitted_on}. Temperature scaling does not change any prediction or accuracy. "
        "\"(bound)\": the NLL was still falling at the edge of the allowed range. Intervals: "
        "95%, by person; a bootstrap sample's ECE is biased upward, so an ECE's interval "
        "may sit above its value: read it as the spread.", "",
        format_calibration(results), "", f"![{split} reliability]({name})", ""])


def format_calibration_by_group(results: dict[str, dict[str, dict]]) -> str:
    """Markdown, one table per group variable, from `calibration.calibration_by_group`:
    rows are the group's values; per task, ECE [interval] at T = 1 and after T."""
    parts = []
    for group, rows in results.items():
        tasks = list(dict.fromkeys(t for row in rows.values() for t in row["tasks"]))
        parts += [f"### by {group}", "",
                  f"| {group} | n | persons | "
                  + " | ".join(f"{t} ECE | {t} ECE scaled" for t in tasks) + " |",
                  "|---|---:|---:|" + "---:|---:|" * len(tasks)]
        for value, row in rows.items():
            cells = [f"{_with_interval(row['tasks'][t], 'ece')} | "
                     f"{_with_interval(row['tasks'][t], 'ece_scaled')}" for t in tasks]
            parts.append(f"| {value} | {row['n']} | {row['persons']} | "
                         + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts)


def calibration_group_section(results: dict[str, dict[str, dict]],
                              skipped: dict[str, str] | None = None,
                              split: str = "test") -> str:
    """The markdown section of `calibration.calibration_by_group` output; ``skipped``:
    {group variable: why it has no table}."""
    notes = [f"No table by {group}: {why}." for group, why in (skipped or {}).items()]
    return "\n".join([
        f"## Calibration by subgroup ({split})", "",
        "ECE [95% interval by the subgroup's persons] at T = 1 and after the same "
        "temperature as above. A subgroup of few persons has a wide interval; the ECE of "
        "a small subgroup is biased upward (few images per bin).", "",
        *([" ".join(notes), ""] if notes else []),
        format_calibration_by_group(results)])


def plot_mean_saliency(mean_image: np.ndarray, maps: dict[str, np.ndarray], path: str,
                       title: str = "") -> None:
    """The mean image, then each task's mean attribution map over it.

    mean_image: float[H, W, 3] in [0, 1] (or uint8); maps: {task: float[H, W]} (for
    example `saliency.mean_map`), each drawn on its own colour scale.
    """
    image = np.asarray(mean_image, np.float64)
    if image.max() > 1.0:
        image = image / 255.0
    gray = image.mean(-1)
    tasks = list(maps)
    fig = Figure(figsize=(2.8 * (len(tasks) + 1), 3.2), layout="constrained")
    axes = fig.subplots(1, len(tasks) + 1, squeeze=False)
    axes[0, 0].imshow(np.clip(image, 0, 1))
    axes[0, 0].set_title("mean image")
    for ax, task in zip(axes[0, 1:], tasks, strict=True):
        m = np.asarray(maps[task], np.float64)
        ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
        ax.imshow(m, cmap="inferno", alpha=0.6, vmin=0, vmax=max(float(m.max()), 1e-12))
        ax.set_title(task)
    for ax in axes[0]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    _save(fig, path)


def format_subgroups(results: dict[str, dict[str, dict]]) -> str:
    """Markdown, one table per group variable, from `subgroups.subgroup_accuracy` output:
    rows are the group's values; per task, accuracy [interval] and the majority rate."""
    parts = []
    for group, rows in results.items():
        tasks = list(dict.fromkeys(t for row in rows.values() for t in row["tasks"]))
        parts += [f"### by {group}", "",
                  f"| {group} | n | persons | "
                  + " | ".join(f"{t} accuracy [95% CI] (majority)" for t in tasks) + " |",
                  "|---|---:|---:|" + "---:|" * len(tasks)]
        for value, row in rows.items():
            cells = []
            for t in tasks:
                s = row["tasks"][t]
                cells.append(f"{s['accuracy']:.1%} [{s['low']:.1%}, {s['high']:.1%}] "
                             f"({s['majority_rate']:.1%})")
            parts.append(f"| {value} | {row['n']} | {row['persons']} | "
                         + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts)


def subgroup_section(results: dict[str, dict[str, dict]], split: str = "test") -> str:
    """The markdown section of `subgroups.subgroup_accuracy` output."""
    return "\n".join([
        f"## Accuracy by subgroup ({split})", "",
        "Intervals: percentiles of a bootstrap over the persons inside each subgroup. "
        "Majority: the accuracy of always answering the subgroup's most frequent class "
        "(100% for a task within its own groups).", "",
        format_subgroups(results)])


def append_sections(workdir: str, sections: list[str]) -> str:
    """Appends markdown sections to ``workdir/report.md`` (after `write_report`); returns
    its path."""
    path = os.path.join(workdir, "report.md")
    with epath.Path(path).open("r") as f:
        text = f.read()
    writers.write_text(path, text.rstrip("\n") + "\n\n"
                       + "\n".join(s.rstrip("\n") + "\n" for s in sections))
    return path
