"""mask_gap.md: per method, task x training set with both tests, the gap and the cost of
the mask as differences paired by photo, and Holm's correction over all of them.

Rows are `mask_gap.score`'s: accuracies with ``value``, ``low``, ``high`` (fractions) and
differences that add ``p``, ``excludes_0`` and ``excludes_0_holm``.
"""

from __future__ import annotations

from fgmask_jax.evaluation import tables


def _yes(x: bool) -> str:
    return "yes" if x else "no"


def _sized(s: dict) -> str:
    return f"{s['images']:,} images of {s['photos']:,} photos, {s['persons']} persons"


def write_markdown(path: str, rows, gaps, costs, setting: dict, runs, words: tables.Wording,
                   trainings: dict[str, str], shortening: dict) -> None:
    """mask_gap.md.

    ``trainings``: training set -> its name in words; ``shortening``: what --runlocal
    changed in the configs (``{key: value}``).
    """
    lines = setting_lines(rows, gaps + costs, setting, runs, words, shortening)
    floor = {}
    for r in rows:
        floor.setdefault((r["task"], r["test"]), r["majority_rate"])
    for m in dict.fromkeys(r["method"] for r in rows):
        lines += ["", f"## {words.titles[m]}", "",
                  "| task | trained on | masked test | unmasked test | gap (unmasked − masked) "
                  "| excludes 0 | after Holm |",
                  "|---|---|---:|---:|---:|---|---|"]
        acc = {(r["task"], r["train"], r["test"]): r for r in rows if r["method"] == m}
        for g in (g for g in gaps if g["method"] == m):
            lines.append(f"| {g['task']} | {trainings[g['train']]} | "
                         f"{tables.bounds(acc[g['task'], g['train'], 'masked'], tables.pct)} | "
                         f"{tables.bounds(acc[g['task'], g['train'], 'unmasked'], tables.pct)} | "
                         f"{tables.bounds(g, tables.sign)} | {_yes(g['excludes_0'])} | "
                         f"{_yes(g['excludes_0_holm'])} |")
        mine = [c for c in costs if c["method"] == m]
        if mine:
            lines += ["", "Cost of the mask, trained and tested alike (points): trained and "
                      "tested on the unmasked twins minus trained and tested masked.", "",
                      "| task | masked model trained on | cost | excludes 0 | after Holm |",
                      "|---|---|---:|---|---|"]
            lines += [f"| {c['task']} | {trainings[c['train']]} | "
                      f"{tables.bounds(c, tables.sign)} | {_yes(c['excludes_0'])} | "
                      f"{_yes(c['excludes_0_holm'])} |"
                      for c in mine]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    lines += ["", "Majority-class rate (floor), each photo once: " + ", ".join(
        f"{t} {tables.pct(floor[t, 'masked'])} (masked test), {tables.pct(floor[t, 'unmasked'])} "
        "(unmasked)" for t in tasks) + ".", "", "## What ran", "",
        "| run | what | steps | a check every | checks | status | seconds |",
        "|---|---|---:|---:|---:|---|---:|"]
    for r in runs:
        secs = "" if r.get("seconds") is None else f"{r['seconds']:.0f}"
        every = r.get("eval_every")
        lines.append(f"| {r['folder']} | {r['description']} | {r['steps']} | "
                     f"{every or 'epoch of its own set'} | {r.get('checks') or ''} | "
                     f"{r['status']} | {secs} |")
    lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def setting_lines(rows, differences, setting: dict, runs, words: tables.Wording,
                  shortening: dict) -> list[str]:
    """mask_gap.md's title and the list of the data, test and training sets, schedule,
    weighting, intervals and how many differences exclude 0."""
    sizes, names = setting["sizes"], setting["splits"]
    kind, caveat = words.data[setting["data"]]
    lines = [f"# What the mask costs: {setting['dataset']}, protocol={setting['protocol']}",
             "",
             f"- data: `{setting['dataset']}` ({kind}: {caveat})",
             f"- protocol {setting['protocol']}: " + words.protocols[setting["protocol"]],
             f"- masked test: `{names['test']}`, {_sized(sizes['test'])}; unmasked test: "
             f"`{names['unmasked_test']}`, {_sized(sizes['unmasked_test'])} (the twins "
             "of the same photos)",
             f"- trained on `{names['train']}` masked, all copies ({_sized(sizes['masked'])})"
             + (f"; masked, one copy a photo drawn at random ({_sized(sizes['masked_one'])})"
                if "masked_one" in {r["train"] for r in rows} else "")
             + f"; unmasked twins `{names['unmasked_train']}` ({_sized(sizes['unmasked'])})",
             schedule_line(runs, setting.get("eval_every_set", False)),
             "- accuracy: each test photo counts once, as the share of its masked copies "
             "answered right (the unmasked test has one image a photo), so a photo with four "
             "copies weighs what one with three does",
             f"- intervals: 95% percentile intervals from {setting['num_samples']} bootstrap "
             "samples of test persons, each drawn person with all their photos",
             "- gap: accuracy on the unmasked twins minus that on the masked copies of the same "
             "photos, for one model, in points; cost: a model trained and tested on unmasked "
             "faces minus one trained and tested on masked faces. Both are paired by photo (the "
             "mean over photos of each photo's difference) and resampled by person",
             multiple_line(differences),
             (f"- training seeds: every model trained {setting['seeds']} times (config.seed "
              f"0..{setting['seeds'] - 1}); accuracies, gaps and costs are their means, and "
              "the intervals resample the seeds too (a two-level bootstrap; a gap draws "
              "one model's seed for both of its tests)"
              if setting.get("seeds", 1) > 1 else
              "- one training run of each model: retraining alone can move a number by a few "
              "points (`--seeds=N` trains N and folds that into the intervals)")]
    if setting["runlocal"]:
        lines.append("- runlocal: the runlocal configs (a shrunk run for a laptop CPU), "
                     "shortened for the mask gap: " + ", ".join(
                         f"{k}={v:g}" for k, v in shortening.items())
                     + " (of the all-copies set; see 'What ran')")
    if setting.get("command"):
        lines.append(f"- command: `{setting['command']}`")
    lines.append(f"- wall time: {setting['seconds'] / 60:.1f} min (0 for finished runs "
                 "reused)")
    return lines


def schedule_line(runs, asked: bool = False) -> str:
    """How the training sets were made comparable: the same steps, checks and warmup
    (``asked``: the checks' interval was set by ``--neural_override``)."""
    every = sorted({r.get("eval_every") for r in runs}, key=str)
    older = [r["folder"] for r in runs if r.get("eval_every") is None]
    line = ("- schedule: every run of a method trains the same number of steps (those of the "
            "masked, all-copies run) and is checked on its own validation subset (photo- or "
            "person-disjoint, as the protocol) every "
            + " or ".join(str(e) for e in every if e) + " steps ("
            + ("as --neural_override set it" if asked else "one epoch of the all-copies set")
            + "): the same images seen between checks and the same number of checks for the "
            "three training sets, so early stopping's patience (counted in checks) spans "
            "the same training for each; the warmup, in steps, is the all-copies run's too")
    if older:
        line += (f". Trained by an earlier version, checked once per epoch of its own set: "
                 f"{', '.join(older)} (delete its folder to train it again)")
    return line


def multiple_line(differences) -> str:
    """How many of the differences exclude 0, how many would by chance, and after Holm."""
    return ("- many intervals: " + tables.holm_sentence(differences, "gaps and costs")
            + " The tables mark each: 'excludes 0' (its 95% interval) and 'after Holm'")
