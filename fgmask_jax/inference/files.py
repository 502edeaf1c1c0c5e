"""Predicting many files: finding them, decoding them in threads while the model runs,
and writing one CSV or JSON-lines row per image (per face with face detection); the
predict command's library."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import csv
import dataclasses
import glob
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from fgmask_jax import errors, paths
from fgmask_jax.data import labels as labels_lib
from fgmask_jax.inference import faces as faces_lib
from fgmask_jax.inference.images import load_faces, load_image
from fgmask_jax.inference.predictor import OOD_KEY, Predictor

DECIMALS = 6  # of every probability and score written, CSV and JSON lines alike


def _ordered_map(fn: Callable, items: Iterable, workers: int, window: int) -> Iterator:
    """fn over items in ``workers`` threads, in order, at most ``window`` ahead."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def predict_files(predictor: Predictor, files: Sequence[str], *, faces: bool = False,
                  min_face: int = faces_lib.MIN_FACE, workers: int | None = None,
                  progress: Callable[[int], Any] | None = None) -> Iterator[dict]:
    """One row per file (per face found with ``faces``), in order: {"file", "predictions"
    ({task: {"label", "probabilities"}}, or None), "ood_score", "uncertain" (None where
    not predicted), "error" (None, or why the file or face was not predicted)}; with
    ``faces`` also "face" (0, 1, ... largest first; None for a file without one) and "box"
    (`Box`, with the detector's score). A face narrower than ``min_face`` pixels gets a
    row with its box and the reason.

    Files are decoded in ``workers`` threads while the model runs on the batch before.
    ``progress(n)`` is called after each n files.
    """
    size = predictor.image_size

    def load(path):
        try:
            if faces:
                found = load_faces(path, size, min_face)
                return path, found, None if found else "no face found"
            return path, [(None, load_image(path, size))], None
        except ValueError as e:
            return path, [], str(e)

    workers = workers or min(8, os.cpu_count() or 1)
    window = max(2 * predictor.batch_size, 2 * workers)
    rows: list[dict] = []
    images: list[np.ndarray] = []
    in_flight = None  # (rows, images' rows, device output) of the batch the model runs

    def finish(batch):
        done_rows, image_rows, out = batch
        out = jax.device_get(out)
        for i, row in enumerate(image_rows):
            result = predictor.describe(out, i)
            row["predictions"] = {t: result[t] for t in predictor.tasks}
            row.update(ood_score=result[OOD_KEY], uncertain=result["uncertain"])
        return done_rows

    def new_row(path, k=None, box=None, error=None):
        row = {"file": path}
        if faces:
            row.update(face=k, box=box)
        row.update(predictions=None, ood_score=None, uncertain=None, error=error)
        rows.append(row)
        return row

    image_rows: list[dict] = []
    for path, found, error in _ordered_map(load, files, workers, window):
        if error is not None:
            new_row(path, error=error)
        for k, (box, image) in enumerate(found):
            if image is None:
                new_row(path, k, box, f"{box.width} px wide: narrower than min_face={min_face} px")
                continue
            image_rows.append(new_row(path, k, box))
            images.append(image)
            if len(images) == predictor.batch_size:
                out = predictor.dispatch(np.stack(images))
                if in_flight is not None:
                    yield from finish(in_flight)
                in_flight, rows, image_rows, images = (rows, image_rows, out), [], [], []
        if progress is not None:
            progress(1)
    if in_flight is not None:
        yield from finish(in_flight)
    if images:
        yield from finish((rows, image_rows, predictor.dispatch(np.stack(images))))
    else:
        yield from rows


def find_images(specs: Sequence[str]) -> tuple[list[str], int]:
    """Absolute paths named by ``specs`` (folders: their image files by suffix, sorted;
    globs: their matches, sorted; anything else: that file). Returns (paths, number of
    files skipped in folders for their suffix).

    Raises `errors.DataError` naming a path (not a glob) that does not exist.
    """
    paths, skipped = [], 0
    for spec in specs:
        spec = os.path.expanduser(spec)
        if glob.has_magic(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            paths += [os.path.abspath(m) for m in matches if not os.path.isdir(m)]
        elif os.path.isdir(spec):
            for name in sorted(os.listdir(spec)):
                full = os.path.abspath(os.path.join(spec, name))
                if os.path.isdir(full):
                    continue
                if name.lower().endswith(labels_lib.IMAGE_SUFFIXES):
                    paths.append(full)
                else:
                    skipped += 1
        elif os.path.lexists(spec):
            paths.append(os.path.abspath(spec))
        else:
            raise errors.DataError(f"--images: {os.path.abspath(spec)} does not exist; "
                                   "name existing files, folders or globs")
    return paths, skipped


def csv_columns(tasks: dict[str, Sequence[str]], faces: bool) -> list[str]:
    """file, [face, box_x, box_y, box_w, box_h, face_score,] ood_score, uncertain, then per
    task its label and p_<task>_<class> for every class, then error."""
    cols = ["file"] + (["face", "box_x", "box_y", "box_w", "box_h", "face_score"] if faces else [])
    cols += [OOD_KEY, "uncertain"]
    for task, classes in tasks.items():
        cols += [task] + [f"p_{task}_{c}" for c in classes]
    return cols + ["error"]


def _text(value) -> str:
    """A CSV cell: empty for None, true/false (as in JSON), numbers as `json_row` rounds them."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.{DECIMALS}f}"
    return str(value)


def csv_row(row: dict, tasks: dict[str, Sequence[str]], faces: bool) -> dict:
    """A `predict_files` row as `csv_columns`' values (empty where there is none)."""
    out = {"file": row["file"], "error": row["error"] or ""}
    if faces:
        box = row.get("box")
        out["face"] = _text(row.get("face"))
        for key, field in (("box_x", "x"), ("box_y", "y"), ("box_w", "width"),
                           ("box_h", "height"), ("face_score", "score")):
            out[key] = _text(getattr(box, field) if box else None)
    out[OOD_KEY] = _text(row[OOD_KEY])
    out["uncertain"] = _text(row["uncertain"])
    for task, classes in tasks.items():
        pred = (row["predictions"] or {}).get(task)
        out[task] = pred["label"] if pred else ""
        for c in classes:
            out[f"p_{task}_{c}"] = _text(pred["probabilities"][c] if pred else None)
    return out


def json_row(row: dict) -> dict:
    """A `predict_files` row as JSON values: the box as {x, y, width, height, score}, floats
    rounded to `DECIMALS` places as in the CSV."""
    out = dict(row)
    if out.get("box") is not None:
        out["box"] = dataclasses.asdict(out["box"])
    if out[OOD_KEY] is not None:
        out[OOD_KEY] = round(out[OOD_KEY], DECIMALS)
    if out["predictions"] is not None:
        out["predictions"] = {
            task: {"label": p["label"],
                   "probabilities": {c: round(v, DECIMALS) for c, v in p["probabilities"].items()}}
            for task, p in out["predictions"].items()}
    return out


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def predict_to_file(workdir: str, images: Sequence[str], out: str | None = None, *,
                    batch_size: int = 32, faces: str = "none", fold: int | None = None,
                    min_face: int = faces_lib.MIN_FACE, ood_threshold: float | None = None,
                    stderr=None) -> int:
    """The predict command: predicts ``images`` (folders, globs, files) with the run in
    ``workdir``, writes ``out`` (.csv or .jsonl; CSV on stdout when None). An existing
    ``out`` is replaced only once every row is written.

    Returns the exit status (0 all predicted, 1 some not). Raises `errors.UserError`
    for a bad argument, `errors.DataError` for a path that does not exist or when no
    image files are found, and `errors.RunNotFoundError` when ``workdir`` holds no
    usable run; none of them writes anything.
    """
    stderr = stderr or sys.stderr
    if faces not in ("none", "detect"):
        raise errors.UserError(f"--faces={faces}: use none or detect")
    if batch_size < 1:
        raise errors.UserError(f"--batch_size={batch_size}: must be >= 1")
    if min_face < 0:
        raise errors.UserError(f"--min_face={min_face}: must be >= 0 (pixels)")
    out = paths.absolute(out)
    if out and not out.lower().endswith((".csv", ".jsonl")):
        raise errors.UserError(f"--out={out}: name a .csv or a .jsonl file")
    if out and not os.path.isdir(os.path.dirname(out)):
        raise errors.UserError(f"--out={out}: the folder {os.path.dirname(out)} does not "
                               "exist; create it or name another")
    files, skipped = find_images(images)
    if not files:
        raise errors.DataError(f"--images={','.join(images)}: no image files found "
                               f"(suffixes {' '.join(labels_lib.IMAGE_SUFFIXES)})")
    detect = faces == "detect"
    if detect:
        try:
            faces_lib.cascade()
        except ImportError as e:  # an optional extra: its install line, not a traceback
            raise errors.UserError(str(e)) from None
    predictor = Predictor.from_workdir(workdir, fold=fold, batch_size=batch_size)
    if ood_threshold is not None:
        predictor.ood_threshold = ood_threshold
    print(f"predict: {_count(len(files), 'image')} with {predictor.description}"
          + (f"; {_count(skipped, 'other file')} in the folders skipped" if skipped else ""),
          file=stderr)

    start = time.perf_counter()
    with _replaced_when_done(out) as sink:
        tally = _write_rows(predictor, files, sink, bool(out) and out.lower().endswith(".jsonl"),
                            detect, min_face, stderr)
    seconds = time.perf_counter() - start
    for r in tally.problems:
        if r.get("face") is not None:
            print(f"predict: skipped: {r['file']}, face {r['face']} at x={r['box'].x} "
                  f"y={r['box'].y}: {r['error']}", file=stderr)
        else:
            print(f"predict: not predicted: {r['file']}: {r['error']}", file=stderr)
    done = len(tally.files)
    n_skipped = sum(r.get("face") is not None for r in tally.problems)
    what = (f" ({_count(tally.rows, 'face')}"
            + (f", {n_skipped} more skipped as narrower than {min_face} px" if n_skipped else "")
            + ")") if detect else ""
    print(f"predict: {done} of {_count(len(files), 'image')} predicted{what} in "
          f"{seconds:.1f}s, {len(files) / max(seconds, 1e-9):.1f} images/s; "
          f"{tally.uncertain} uncertain (ood_score above {predictor.ood_threshold:g})"
          + (f"; written to {out}" if out else ""), file=stderr)
    return 0 if done == len(files) else 1


@dataclasses.dataclass
class _Tally:
    """What the rows written came to: the files with a predicted row, how many rows were
    predicted and how many of them were uncertain, and the rows not predicted."""

    files: set[str] = dataclasses.field(default_factory=set)
    rows: int = 0
    uncertain: int = 0
    problems: list[dict] = dataclasses.field(default_factory=list)


@contextlib.contextmanager
def _replaced_when_done(path: str | None) -> Iterator:
    """A text file to write ``path`` through: a temporary file beside it, renamed onto it
    when the block ends without an error, removed otherwise (`writers.write_text`'s rule,
    for a file written row by row); stdout when ``path`` is None."""
    if path is None:
        yield sys.stdout
        return
    temporary = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", newline="") as sink:
            yield sink
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _write_rows(predictor: Predictor, files: Sequence[str], sink, jsonl: bool, detect: bool,
                min_face: int, stderr) -> _Tally:
    """Predicts ``files`` into ``sink`` (JSON lines or CSV), with a progress bar on
    ``stderr``."""
    from tqdm import tqdm

    if not jsonl:
        writer = csv.DictWriter(sink, csv_columns(predictor.tasks, detect))
        writer.writeheader()
    tally = _Tally()
    with tqdm(total=len(files), unit="img", file=stderr, desc="predict") as bar:
        for row in predict_files(predictor, files, faces=detect, min_face=min_face,
                                 progress=bar.update):
            if jsonl:
                sink.write(json.dumps(json_row(row)) + "\n")
            else:
                writer.writerow(csv_row(row, predictor.tasks, detect))
            if row["error"]:
                tally.problems.append({k: v for k, v in row.items() if k != "predictions"})
            else:
                tally.files.add(row["file"])
                tally.rows += 1
                tally.uncertain += bool(row["uncertain"])
    return tally
