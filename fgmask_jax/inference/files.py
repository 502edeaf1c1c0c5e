"""Predicting many files: finding them, decoding them in threads while the model runs,
and writing one CSV or JSON-lines row per image (per face with face detection)."""

from __future__ import annotations

import collections
import concurrent.futures
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
from fgmask_jax.inference.predictor import Predictor


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
                  workers: int | None = None, progress: Callable[[int], Any] | None = None
                  ) -> Iterator[dict]:
    """One row per file (per face found with ``faces``), in order:
    {"file", "error" (None or the reason), "predictions" ({task: ...}, or None on error)}
    and with ``faces`` also "face" (0, 1, ... largest first) and "box" (`Box`).

    Files are decoded in ``workers`` threads while the model runs on the batch before.
    ``progress(n)`` is called after each n files.
    """
    size = predictor.image_size

    def load(path):
        try:
            if faces:
                found = load_faces(path, size)
                if not found:
                    return path, [], "no face found"
                return path, found, None
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
        probs = jax.device_get(out)
        for i, row in enumerate(image_rows):
            row["predictions"] = predictor.describe(probs, i)
        return done_rows

    image_rows: list[dict] = []
    for path, found, error in _ordered_map(load, files, workers, window):
        if error is not None:
            row = {"file": path, "error": error, "predictions": None}
            if faces:
                row.update(face=None, box=None)
            rows.append(row)
        for k, (box, image) in enumerate(found):
            row = {"file": path, "error": None, "predictions": None}
            if faces:
                row.update(face=k, box=box)
            rows.append(row)
            image_rows.append(row)
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
    globs: their matches, sorted; anything else: that file, even if missing, so that it is
    reported). Returns (paths, number of files skipped in folders for their suffix)."""
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
        else:
            paths.append(os.path.abspath(spec))
    return paths, skipped


def csv_columns(tasks: dict[str, Sequence[str]], faces: bool) -> list[str]:
    """file, [face, box_x, box_y, box_w, box_h,] then per task its label and p_<task>_<class>
    for every class, then error."""
    cols = ["file"] + (["face", "box_x", "box_y", "box_w", "box_h"] if faces else [])
    for task, classes in tasks.items():
        cols += [task] + [f"p_{task}_{c}" for c in classes]
    return cols + ["error"]


def csv_row(row: dict, tasks: dict[str, Sequence[str]], faces: bool) -> dict:
    """A `predict_files` row as `csv_columns`' values (empty where there is none)."""
    out = {"file": row["file"], "error": row["error"] or ""}
    if faces:
        box = row.get("box")
        out["face"] = "" if row.get("face") is None else row["face"]
        for key, value in zip(("box_x", "box_y", "box_w", "box_h"),
                              dataclasses.astuple(box) if box else ("",) * 4, strict=True):
            out[key] = value
    for task, classes in tasks.items():
        pred = (row["predictions"] or {}).get(task)
        out[task] = pred["label"] if pred else ""
        for c in classes:
            out[f"p_{task}_{c}"] = f"{pred['probabilities'][c]:.6f}" if pred else ""
    return out


def json_row(row: dict) -> dict:
    """A `predict_files` row as JSON values (the box as {x, y, width, height})."""
    out = dict(row)
    if out.get("box") is not None:
        out["box"] = dataclasses.asdict(out["box"])
    return out


def predict_to_file(workdir: str, images: Sequence[str], out: str | None = None, *,
                    batch_size: int = 32, faces: str = "none", fold: int | None = None,
                    stderr=None) -> int:
    """The predict command: predicts ``images`` (folders, globs, files) with the run in
    ``workdir``, writes ``out`` (.csv or .jsonl; CSV on stdout when None).

    Returns the exit status (0 all predicted, 1 some not). Raises `errors.UserError`
    for a bad argument, `errors.DataError` when no image files are found, and
    `errors.RunNotFoundError` when ``workdir`` holds no usable run.
    """
    stderr = stderr or sys.stderr
    if faces not in ("none", "detect"):
        raise errors.UserError(f"--faces={faces}: use none or detect")
    if batch_size < 1:
        raise errors.UserError(f"--batch_size={batch_size}: must be >= 1")
    out = paths.absolute(out)
    if out and not out.lower().endswith((".csv", ".jsonl")):
        raise errors.UserError(f"--out={out}: name a .csv or a .jsonl file")
    files, skipped = find_images(images)
    if not files:
        raise errors.DataError(f"--images={','.join(images)}: no image files found "
                               f"(suffixes {' '.join(labels_lib.IMAGE_SUFFIXES)})")
    if faces == "detect":
        try:
            faces_lib.cascade()
        except ImportError as e:  # an optional extra: its install line, not a traceback
            raise errors.UserError(str(e)) from None
    predictor = Predictor.from_workdir(workdir, fold=fold, batch_size=batch_size)
    print(f"predict: {len(files)} images with {predictor.description}"
          + (f"; {skipped} other files in the folders skipped" if skipped else ""), file=stderr)

    detect = faces == "detect"
    start = time.perf_counter()
    failed, n_faces = _write_rows(predictor, files, out, detect, stderr)
    seconds = time.perf_counter() - start
    for path, reason in failed:
        print(f"predict: not predicted: {path}: {reason}", file=stderr)
    done = len(files) - len({p for p, _ in failed})
    what = f" ({n_faces} faces)" if detect else ""
    print(f"predict: {done} of {len(files)} images predicted{what} in {seconds:.1f}s, "
          f"{len(files) / max(seconds, 1e-9):.1f} images/s"
          + (f"; written to {out}" if out else ""), file=stderr)
    return 1 if failed else 0


def _write_rows(predictor: Predictor, files: Sequence[str], out: str | None, detect: bool,
                stderr) -> tuple[list[tuple[str, str]], int]:
    """Predicts ``files`` into ``out`` (JSON lines for .jsonl, else CSV; stdout when None),
    with a progress bar on ``stderr``. Returns ([(file, reason) not predicted], rows predicted)."""
    from tqdm import tqdm

    jsonl = bool(out) and out.lower().endswith(".jsonl")
    sink = open(out, "w", newline="") if out else sys.stdout  # noqa: SIM115
    failed, n_faces = [], 0
    try:
        if not jsonl:
            writer = csv.DictWriter(sink, csv_columns(predictor.tasks, detect))
            writer.writeheader()
        with tqdm(total=len(files), unit="img", file=stderr, desc="predict") as bar:
            for row in predict_files(predictor, files, faces=detect, progress=bar.update):
                if row["error"]:
                    failed.append((row["file"], row["error"]))
                else:
                    n_faces += 1
                if jsonl:
                    sink.write(json.dumps(json_row(row)) + "\n")
                else:
                    writer.writerow(csv_row(row, predictor.tasks, detect))
    finally:
        if out:
            sink.close()
    return failed, n_faces
