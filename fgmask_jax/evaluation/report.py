"""The evaluation report: ``report.md`` and confusion-matrix PNGs in the workdir."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402

from fgmask_jax.data import labels as labels_lib  # noqa: E402


def plot_confusion(cm: np.ndarray, class_names, title: str, path: str) -> None:
    """Writes a row-normalised confusion matrix (counts annotated) to ``path``."""
    cm = np.asarray(cm)
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2, 1.1 * len(class_names) + 1.5))
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
    plt.close(fig)


def format_table(results: dict[str, dict]) -> str:
    """Markdown table of per-task summaries (see metrics.summarize) of one split."""
    lines = [
        "| task | n | accuracy | majority rate | balanced accuracy | macro-F1 | loss |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for task, r in results.items():
        loss = r.get("loss", float("nan"))
        lines.append(
            f"| {task} | {r['n']} | {r['accuracy']:.1%} | {r['majority_rate']:.1%} | "
            f"{r['balanced_accuracy']:.1%} | {r['macro_f1']:.3f} | {loss:.3f} |"
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
    with epath.Path(path).open("w") as f:
        f.write("\n".join(parts))
    return path
