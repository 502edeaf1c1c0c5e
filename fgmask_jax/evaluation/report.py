"""The evaluation report: ``report.md`` and confusion-matrix PNGs in the workdir."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

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


# --- the section's markdown -------------------------------------------------------------


def _share(row: Mapping[str, float], pixels: bool = False) -> str:
    if not np.isfinite(row["value"]):
        return "-"
    cell = f"{row['value']:.1%} [{100 * row['low']:.1f}, {100 * row['high']:.1f}]"
    return cell + (f" ({row['pixels']:.1%})" if pixels else "")


def _points(row: Mapping[str, float]) -> str:
    if not np.isfinite(row["value"]):
        return "-"
    return (f"{100 * row['value']:+.1f} [{100 * row['low']:+.1f}, "
            f"{100 * row['high']:+.1f}]")


def _share_table(table: dict, regions: Sequence[str]) -> list[str]:
    lines = ["| task | images | all-zero | " + " | ".join(
        f"share {r} [95% CI] (pixels)" for r in regions) + " |",
        "|---|---:|---:|" + "---:|" * len(regions)]
    for task, t in table.items():
        lines.append(f"| {task} | {t['images']} | {t['dropped']} | " + " | ".join(
            _share(t["regions"][r], pixels=True) for r in regions) + " |")
    return lines


def saliency_section(numbers: dict, figure: str, split: str = "test") -> str:
    """The report's markdown section from `controlled_shares`' numbers; ``figure`` is the
    file name of the mean maps' figure beside report.md."""
    regions = numbers["regions"]
    parts = [
        f"## Where the model looks ({split})", "",
        f"Grad-CAM of each task head (the predicted class) at `{numbers['layer']}` over "
        f"{numbers['images']} {split} images of {numbers['persons']} persons, drawn at "
        "random (`config.split_seed`). The figure: each head's mean absolute map (each "
        "image's map normalised to sum 1) over the mean image.", "",
        f"![{split} saliency]({figure})", "",
        "Share of each image's absolute attribution inside each region, mean over the "
        "images [95% interval from a bootstrap of persons]; in brackets after it the "
        "region's share of the pixels of the same images, what a map spread evenly would "
        "give. An all-zero map has no share: its image is left out of every number of its "
        "task in this section (shares, pixel shares, pairs, comparisons) and counted under "
        "\"all-zero\".", "", *_share_table(numbers["grad_cam"], regions), ""]
    parts += _twin_part(numbers["twins"], regions)
    if "controls" in numbers:
        controls = numbers["controls"]
        parts += [
            "### Controls on a subsample", "",
            f"The two checks below run on {controls['images']} of the images "
            f"({controls['persons']} persons), drawn by `config.split_seed` (integrated "
            "gradients cost a backward pass per path step and task), and compare on those "
            "images only.", ""]
        parts += _randomized_part(numbers["randomized"], regions)
        parts += _ig_part(numbers["integrated_gradients"], regions)
    seconds = numbers.get("seconds", {})
    parts += [f"Seconds: {', '.join(f'{k} {v:.1f}' for k, v in seconds.items())}. "
              "Numbers also in saliency.json.", ""]
    return "\n".join(parts)


def _twin_part(twins: dict, regions: Sequence[str]) -> list[str]:
    head = ["### Control: the unmasked twins", ""]
    if "absent" in twins:
        return head + [
            f"No control by unmasked twins: {twins['absent']} A smooth map centred on the "
            "face puts more than its pixel share on any central region, mask or not, so the "
            "shares above cannot tell the mask's pull from the face's centre.", ""]
    lines = head + [
        "The same model's Grad-CAM on each image's unmasked twin (the photo before its mask "
        "was drawn; `photo_id` links them), its shares taken in the masked image's regions. "
        "The difference (with the mask - twin, per pair, points; paired bootstrap of "
        "persons) is what the mask itself adds to a region's share: an interval above 0 "
        "on the mask is a pull the face's centre does not explain. Pairs: images with a "
        "twin and two non-zero maps.", "",
        "| task | region | pairs | with the mask | unmasked twin | difference (points) |",
        "|---|---|---:|---:|---:|---:|"]
    for task, t in twins.items():
        for r in regions:
            row = t["regions"][r]
            lines.append(f"| {task} | {r} | {t['pairs']} | {_share(row['masked'])} | "
                         f"{_share(row['twin'])} | {_points(row['difference'])} |")
    without = {t: v["without_twin"] for t, v in twins.items() if v["without_twin"]}
    dropped = {t: v["dropped"] for t, v in twins.items() if v["dropped"]}
    if without or dropped:
        lines += ["", f"Images without a twin: {max(without.values(), default=0)}; pairs "
                  "left out for an all-zero map: "
                  + (", ".join(f"{t} {k}" for t, k in dropped.items()) or "none") + "."]
    return lines + [""]


def _randomized_part(randomized: dict, regions: Sequence[str]) -> list[str]:
    trained = randomized["trained"]
    lines = [
        "#### Randomised top layers", "",
        f"Grad-CAM of a copy of the model whose {', '.join(randomized['modules'])} are "
        f"re-initialised (seed {randomized['seed']}; Adebayo et al. 2018's model "
        "randomisation). If a method reads what the model learnt, its maps change: shares "
        "move and each image's map correlates little with the trained one's (Spearman rank "
        "correlation over the pixels, mean [95% CI]). Maps that stay put would come from "
        "the image and the architecture, not from the training.", "",
        "| task | all-zero (trained / randomised) | " + " | ".join(
            f"share {r}: trained / randomised" for r in regions) + " | rank correlation |",
        "|---|---:|" + "---:|" * len(regions) + "---:|"]
    for task, t in randomized["grad_cam"].items():
        rho = randomized["rank_correlation"][task]
        rho_cell = (f"{rho['value']:.2f} [{rho['low']:.2f}, {rho['high']:.2f}]"
                    if np.isfinite(rho["value"]) else "-")
        lines.append(
            f"| {task} | {trained[task]['dropped']} / {t['dropped']} | " + " | ".join(
                f"{_share(trained[task]['regions'][r])} / {_share(t['regions'][r])}"
                for r in regions) + f" | {rho_cell} |")
    return lines + [""]


def _ig_part(ig: dict, regions: Sequence[str]) -> list[str]:
    lines = [
        "#### A second method: integrated gradients", "",
        f"Integrated gradients ({ig['steps']} steps of the path from a {ig['baseline']} "
        "image, midpoint rule, at the input's full resolution) beside Grad-CAM on the same "
        "images. Agree: the two intervals overlap and put the region on the same side of "
        "its pixel share (above, within or below). An image with an all-zero map from "
        "either method is left out of both.", "",
        "| task | region | Grad-CAM | integrated gradients | pixels | agree? |",
        "|---|---|---:|---:|---:|---|"]
    for task, t in ig["shares"].items():
        for r in regions:
            a = ig["grad_cam_same_images"][task]["regions"][r]
            b, verdict = t["regions"][r], ig["agreement"][task][r]
            how = ("overlap" if verdict["overlap"] else "disjoint") + "; " + (
                verdict["sides"][0] if verdict["sides"][0] == verdict["sides"][1]
                else " / ".join(verdict["sides"]))
            pixels = f"{b['pixels']:.1%}" if np.isfinite(b["pixels"]) else "-"
            lines.append(f"| {task} | {r} | {_share(a)} | {_share(b)} | {pixels} | "
                         f"{'yes' if verdict['agree'] else 'no'} ({how}) |")
    dropped = {t: v["dropped"] for t, v in ig["shares"].items() if v["dropped"]}
    if dropped:
        lines += ["", "Images left out for an all-zero map (either method): "
                  + ", ".join(f"{t} {k}" for t, k in dropped.items()) + "."]
    return lines + [""]
