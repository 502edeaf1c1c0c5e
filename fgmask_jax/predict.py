r"""Predictions of a trained run on new photos: the `Predictor` and the command.

  python -m fgmask_jax.predict --workdir=RUN --images=photos/ --out=preds.csv
  python -m fgmask_jax.predict --workdir=RUN --images='shots/*.jpg,me.png' --out=preds.jsonl
  python -m fgmask_jax.predict --workdir=RUN --images=group.jpg --faces=detect

In Python::

  from fgmask_jax.predict import Predictor
  predictor = Predictor.from_workdir("RUN")        # or an `export` folder
  predictor(["a.jpg", rgb_uint8_array])
  # [{"gender": {"label": "female", "probabilities": {"male": 0.1, "female": 0.9}}, ...}, ...]

``RUN`` is a finished neural run's workdir: its ``config.json`` and the best
validation checkpoint (``best/<step>``) are read. A leave-persons-out run holds
one model per fold of persons and none of them is the run's model: pass
``fold=K`` (``--fold=K``) to use ``fold_<K>``; without it the error lists the folds.
The classical methods keep no fitted classifier: prediction is for neural runs.

Preprocessing is the training pipeline's own: files are decoded by
`pipeline.read_image`, the decoder of `pipeline.decode_image` (OpenCV: EXIF orientation
applied, grayscale to 3 channels, alpha dropped, 16-bit scaled to 8-bit), and squared
and resized by `pipeline.square_resize`, the function `decode_image` uses; arrays
(RGB) go through `square_resize` too. The result equals `decode_image` on the file's
bytes, bit for bit.

The command writes one row per image (per face with ``--faces=detect``): CSV
(``.csv``, also stdout when ``--out`` is not given) or JSON lines (``.jsonl``). An
image that cannot be predicted (unreadable, empty, truncated, not an image,
smaller than `MIN_SIDE` pixels, or with ``--faces=detect`` no face found) gets a
row with the reason in its ``error`` column and is also listed on stderr; every
other image is still predicted. Exit status: 0 if every image was predicted, 1 if
any was not, 2 for a usage error (bad flag, missing run, no images found).
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import glob
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from fgmask_jax import cli
from fgmask_jax.data import labels as labels_lib
from fgmask_jax.data import pipeline

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MIN_SIDE = 16  # pixels; a smaller image cannot show a face
EXPORT_META = "export.json"  # marks an `export` folder

# --- Face detection ---------------------------------------------------------------------
# The detector: OpenCV's LBP frontal-face cascade as scikit-image ships it (BSD-3-Clause),
# run by skimage.feature.Cascade; OpenCV 5 no longer has CascadeClassifier.
DETECT_SIDE = 400  # the detector sees the photo with its longer side at most this long
DETECT_MIN_FACE = 24  # pixels at that scale: the cascade's window
# Framing: the training images show the whole head with some background. On the
# synthetic training images the image side is 1.9 detector box widths (median) and the
# image centre 0.08 box widths above the box centre; a crop repeats that framing.
FACE_CROP_SCALE = 1.9
FACE_CROP_SHIFT = 0.08


@dataclasses.dataclass(frozen=True)
class Box:
    """A face's box in the photo's pixels (after EXIF rotation): x, y of its top left corner."""

    x: int
    y: int
    width: int
    height: int


_detectors = threading.local()


def _cascade():
    """This thread's face cascade (skimage's Cascade keeps state while it detects)."""
    if not hasattr(_detectors, "cascade"):
        try:
            from skimage import data as skimage_data
            from skimage.feature import Cascade
        except ImportError:
            raise ImportError(
                "face detection needs scikit-image: pip install 'fgmask_jax[faces]'"
            ) from None
        _detectors.cascade = Cascade(skimage_data.lbp_frontal_face_cascade_filename())
    return _detectors.cascade


def detect_faces(image: np.ndarray) -> list[Box]:
    """Frontal faces in ``image`` (uint8[H, W, 3] RGB), largest first, none overlapping much."""
    import cv2

    h, w = image.shape[:2]
    scale = min(1.0, DETECT_SIDE / max(h, w))
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        gray = cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    gh, gw = gray.shape
    if min(gh, gw) < DETECT_MIN_FACE:
        return []
    found = _cascade().detect_multi_scale(
        img=gray, scale_factor=1.1, step_ratio=1, min_size=(DETECT_MIN_FACE, DETECT_MIN_FACE),
        max_size=(gh, gw), min_neighbor_number=4, intersection_score_threshold=0.5,
    )
    boxes = sorted(((d["c"], d["r"], d["width"], d["height"]) for d in found),
                   key=lambda b: -b[2] * b[3])
    kept: list[tuple] = []
    for b in boxes:  # a box mostly inside a larger kept one is the same face
        if all(_overlap(b, k) < 0.3 * b[2] * b[3] for k in kept):
            kept.append(b)
    return [Box(round(x / scale), round(y / scale), round(bw / scale), round(bh / scale))
            for x, y, bw, bh in kept]


def _overlap(a: tuple, b: tuple) -> float:
    dx = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    dy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(dx, 0) * max(dy, 0)


def crop_face(image: np.ndarray, box: Box) -> np.ndarray:
    """The square around ``box`` framed as the training images frame a face:
    uint8[H, W, C] -> uint8[s, s, C], s = FACE_CROP_SCALE * box width (edges repeated
    where the square leaves the photo)."""
    import cv2

    side = max(1, round(FACE_CROP_SCALE * box.width))
    cx = box.x + box.width / 2
    cy = box.y + box.height / 2 - FACE_CROP_SHIFT * box.width
    left, top = round(cx - side / 2), round(cy - side / 2)
    h, w = image.shape[:2]
    pad = max(0, -left, -top, left + side - w, top + side - h)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        left, top = left + pad, top + pad
    return image[top : top + side, left : left + side]


# --- Images in --------------------------------------------------------------------------


def as_rgb(image: np.ndarray) -> np.ndarray:
    """An image array as a person means it -> uint8[H, W, 3] RGB.

    HxW and HxWx1 are grayscale, HxWx3 RGB, HxWx4 RGBA (alpha dropped, as the file
    decoder does); uint16 samples are scaled to 8 bits (>> 8), as for 16-bit files.
    """
    a = np.asarray(image)
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    if a.dtype != np.uint8:
        raise ValueError(f"image array of dtype {a.dtype}: expected uint8 (or uint16)")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"image array of shape {a.shape}: expected HxW, HxWx3 or HxWx4")
    return np.ascontiguousarray(a[..., :3])


def _check_size(h: int, w: int) -> None:
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"image is {w}x{h} pixels, smaller than {MIN_SIDE} on a side")


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except IsADirectoryError:
        raise ValueError("a folder, not an image file") from None
    except OSError as e:
        raise ValueError(f"cannot read the file: {e.strerror or e}") from None


def load_image(image, image_size: int) -> np.ndarray:
    """A path or an image array -> uint8[image_size, image_size, 3], as the training pipeline
    prepares images. Raises ValueError with the reason for an image that cannot be used."""
    if isinstance(image, str | os.PathLike):
        # Decoded and squared as `pipeline.decode_image` does (one decode, to check the size).
        full = pipeline.read_image(_read_bytes(os.fspath(image)))
        _check_size(*full.shape[:2])
        return pipeline.square_resize(full, image_size)
    rgb = as_rgb(image)
    _check_size(*rgb.shape[:2])
    return pipeline.square_resize(rgb, image_size)


def load_faces(path: str, image_size: int) -> list[tuple[Box, np.ndarray]]:
    """Every face found in the photo at ``path``: [(box, uint8[image_size, image_size, 3])].

    Raises ValueError with the reason if the file is not a usable image.
    """
    full = pipeline.read_image(_read_bytes(path))
    _check_size(*full.shape[:2])
    return [(box, pipeline.square_resize(crop_face(full, box), image_size))
            for box in detect_faces(full)]


# --- The predictor ----------------------------------------------------------------------


def probabilities_fn(model, dtype, temperatures: dict[str, float] | None = None) -> Callable:
    """(variables, uint8[B, S, S, 3]) -> {task: float32[B, classes]}: the eval forward pass.

    ``temperatures``: {task: T}, the run's temperature scaling (logits / T before the
    softmax; the most probable class is unchanged).
    """
    temperatures = dict(temperatures or {})

    def fn(variables, images):
        logits = model.apply(variables, pipeline.normalize(images, dtype), train=False)
        return {t: jax.nn.softmax(z.astype(jax.numpy.float32) / temperatures.get(t, 1.0),
                                  axis=-1)
                for t, z in logits.items()}

    return fn


def _missing_run(path: str, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{path} holds no finished run: {what}. Pass the --workdir of a run that "
        "`python -m fgmask_jax.main` has trained (it writes config.json and best/<step>/), "
        "or a folder written by `python -m fgmask_jax.export`."
    )


def run_folder(workdir: str, fold: int | None = None) -> str:
    """The folder of the one model in ``workdir`` (``fold_<K>`` of a leave-persons-out run)."""
    workdir = cli.absolute(workdir)
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"{workdir}: no such folder")
    folds = sorted(int(n.split("_", 1)[1]) for n in os.listdir(workdir)
                   if n.startswith("fold_") and n.split("_", 1)[1].isdigit())
    if fold is None:
        if folds and not os.path.isdir(os.path.join(workdir, "best")):
            raise ValueError(
                f"{workdir} is a leave-persons-out run: one model per fold of persons, none of "
                f"them the run's. Choose one with fold=K (--fold=K); folds here: "
                f"{', '.join(map(str, folds))}"
            )
        return workdir
    if fold not in folds:
        raise ValueError(f"{workdir} has no fold {fold}; folds here: "
                         f"{', '.join(map(str, folds)) or 'none'}")
    name = next(n for n in os.listdir(workdir)
                if n.startswith("fold_") and n.split("_", 1)[1].isdigit()
                and int(n.split("_", 1)[1]) == fold)
    return os.path.join(workdir, name)


def load_run(workdir: str, fold: int | None = None) -> tuple[Any, dict, dict]:
    """(config, variables for model.apply, info {folder, step, finished}) of a trained run.

    Raises:
      FileNotFoundError: no config.json or no best/<step> checkpoint (what is missing named).
      ValueError: a classical method's run, or a fold asked for that is not there.
    """
    import ml_collections

    from fgmask_jax import checkpointing

    folder = run_folder(workdir, fold)
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise _missing_run(folder, "no config.json")
    with open(config_path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if "method" in config:
        raise ValueError(
            f"{folder} is a run of the classical method {config.method!r}, which keeps no "
            "fitted classifier: prediction on new photos is for the neural methods only"
        )
    best = os.path.join(folder, "best")
    steps = sorted(int(n) for n in os.listdir(best) if n.isdigit()) if os.path.isdir(best) else []
    if not steps:
        raise _missing_run(folder, "no best/<step> checkpoint (the run has not evaluated yet)")
    ckpt = checkpointing.Checkpointer(best, 1)
    try:
        state, _ = ckpt.restore(steps[-1], None)
    finally:
        ckpt.close()
    variables = {"params": state["params"]["model"]}
    if state.get("batch_stats"):
        variables["batch_stats"] = state["batch_stats"]
    results_path = os.path.join(folder, "results.json")
    finished = os.path.isfile(results_path)
    temperatures = {}
    if finished:  # temperature scaling fitted on the validation subset, where the run has it
        with open(results_path) as f:
            calibration = json.load(f).get("calibration", {})
        temperatures = {t: float(c["temperature"]) for t, c in calibration.items()}
    return config, variables, {"folder": folder, "step": steps[-1], "finished": finished,
                               "temperatures": temperatures}


class Predictor:
    """A trained model with the training pipeline's preprocessing, in fixed-size jitted batches.

    ``predictor(images)``: paths or arrays -> per image {task: {"label": class name,
    "probabilities": {class name: p}}}. `probabilities` is the array form.
    """

    def __init__(self, fn: Callable, tasks: dict[str, Sequence[str]], image_size: int,
                 batch_size: int = 32, description: str = ""):
        """``fn``: jittable uint8[B, image_size, image_size, 3] -> {task: float32[B, C]}."""
        self.tasks = {t: tuple(c) for t, c in tasks.items()}
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.description = description
        self._fn = jax.jit(fn)
        if self.batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")

    @classmethod
    def from_variables(cls, config, variables: dict, batch_size: int = 32,
                       description: str = "", temperatures: dict | None = None) -> Predictor:
        """A predictor of the model ``config`` describes, with these variables (and
        temperature scaling: {task: T})."""
        from fgmask_jax import train

        fn = probabilities_fn(train.make_model(config), train.compute_dtype(config),
                              temperatures)
        variables = jax.device_put(variables)
        return cls(lambda images: fn(variables, images),
                   {t: labels_lib.TASKS[t] for t in config.tasks}, config.image_size,
                   batch_size, description)

    @classmethod
    def from_workdir(cls, path: str, *, fold: int | None = None,
                     batch_size: int = 32) -> Predictor:
        """The best checkpoint of the run in ``path``, or the artifact of an `export` folder."""
        path = cli.absolute(os.fspath(path))
        if os.path.isfile(os.path.join(path, EXPORT_META)):
            return cls.from_export(path, batch_size)
        config, variables, info = load_run(path, fold)
        note = "" if info["finished"] else " (the run has not finished: its best so far)"
        return cls.from_variables(config, variables, batch_size,
                                  f"{info['folder']} best/{info['step']}{note}",
                                  temperatures=info["temperatures"])

    @classmethod
    def from_export(cls, folder: str, batch_size: int = 32) -> Predictor:
        """The serialized model of an `export` folder."""
        from jax import export

        with open(os.path.join(folder, EXPORT_META)) as f:
            meta = json.load(f)
        with open(os.path.join(folder, meta["file"]), "rb") as f:
            exported = export.deserialize(bytearray(f.read()))
        return cls(exported.call, meta["tasks"], meta["image_size"], batch_size,
                   f"{folder} (exported)")

    def dispatch(self, images: np.ndarray) -> dict:
        """Starts the model on at most ``batch_size`` images (padded to it); returns at once."""
        n = len(images)
        if n > self.batch_size:
            raise ValueError(f"{n} images in one dispatch: at most batch_size={self.batch_size}")
        batch = np.zeros((self.batch_size, self.image_size, self.image_size, 3), np.uint8)
        batch[:n] = images
        return self._fn(batch)

    def probabilities(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8[N, S, S, 3] RGB, prepared (`load_image`) -> {task: float32[N, classes]}."""
        images = np.asarray(images)
        outs = [self.dispatch(images[i : i + self.batch_size])
                for i in range(0, len(images), self.batch_size)]
        outs = jax.device_get(outs)
        if not outs:
            return {t: np.zeros((0, len(c)), np.float32) for t, c in self.tasks.items()}
        return {t: np.concatenate([o[t] for o in outs])[: len(images)] for t in self.tasks}

    def describe(self, probs: dict[str, np.ndarray], i: int) -> dict[str, dict]:
        """Row ``i`` of `probabilities`' output -> {task: {"label", "probabilities"}}."""
        out = {}
        for task, classes in self.tasks.items():
            p = probs[task][i]
            out[task] = {"label": classes[int(np.argmax(p))],
                         "probabilities": {c: float(v) for c, v in zip(classes, p, strict=True)}}
        return out

    def __call__(self, images) -> list[dict[str, dict]]:
        """Paths or arrays (uint8 HxWx3 RGB, HxW, HxWx4; one, or a sequence) -> one dict each.

        Raises ValueError naming the image that cannot be used, and why.
        """
        if isinstance(images, str | os.PathLike | np.ndarray) and not (
            isinstance(images, np.ndarray) and images.ndim == 4
        ):
            images = [images]
        prepared = []
        for k, image in enumerate(images):
            try:
                prepared.append(load_image(image, self.image_size))
            except ValueError as e:
                name = os.fspath(image) if isinstance(image, str | os.PathLike) else f"image {k}"
                raise ValueError(f"{name}: {e}") from None
        if not prepared:
            return []
        probs = self.probabilities(np.stack(prepared))
        return [self.describe(probs, i) for i in range(len(prepared))]


# --- Many files -------------------------------------------------------------------------


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
                if name.lower().endswith(IMAGE_SUFFIXES):
                    paths.append(full)
                else:
                    skipped += 1
        else:
            paths.append(os.path.abspath(spec))
    return paths, skipped


# --- Output -----------------------------------------------------------------------------


def csv_columns(tasks: dict[str, Sequence[str]], faces: bool) -> list[str]:
    """file, [face, box_x, box_y, box_w, box_h,] then per task its label and p_<task>_<class>
    for every class, then error."""
    cols = ["file"] + (["face", "box_x", "box_y", "box_w", "box_h"] if faces else [])
    for task, classes in tasks.items():
        cols += [task] + [f"p_{task}_{c}" for c in classes]
    return cols + ["error"]


def csv_row(row: dict, tasks: dict[str, Sequence[str]], faces: bool) -> dict:
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
    out = dict(row)
    if out.get("box") is not None:
        out["box"] = dataclasses.asdict(out["box"])
    return out


# --- The command ------------------------------------------------------------------------


def run(workdir: str, images: Sequence[str], out: str | None = None, *, batch_size: int = 32,
        faces: str = "none", fold: int | None = None, stderr=None) -> int:
    """The command: predicts ``images`` with the run in ``workdir``, writes ``out``.

    Returns the exit status (0 all predicted, 1 some not). Raises cli.UserError.
    """
    from tqdm import tqdm

    stderr = stderr or sys.stderr
    if faces not in ("none", "detect"):
        raise cli.UserError(f"--faces={faces}: use none or detect")
    if batch_size < 1:
        raise cli.UserError(f"--batch_size={batch_size}: must be >= 1")
    out = cli.absolute(out)
    if out and not out.lower().endswith((".csv", ".jsonl")):
        raise cli.UserError(f"--out={out}: name a .csv or a .jsonl file")
    files, skipped = find_images(images)
    if not files:
        raise cli.UserError(f"--images={','.join(images)}: no image files found "
                         f"(suffixes {' '.join(IMAGE_SUFFIXES)})")
    if faces == "detect":
        try:
            _cascade()
        except ImportError as e:
            raise cli.UserError(str(e)) from None
    try:
        predictor = Predictor.from_workdir(workdir, fold=fold, batch_size=batch_size)
    except (FileNotFoundError, ValueError) as e:
        raise cli.UserError(str(e)) from None
    print(f"predict: {len(files)} images with {predictor.description}"
          + (f"; {skipped} other files in the folders skipped" if skipped else ""), file=stderr)

    detect = faces == "detect"
    jsonl = bool(out) and out.lower().endswith(".jsonl")
    sink = open(out, "w", newline="") if out else sys.stdout  # noqa: SIM115
    failed, n_rows, n_faces = [], 0, 0
    start = time.perf_counter()
    try:
        if not jsonl:
            writer = csv.DictWriter(sink, csv_columns(predictor.tasks, detect))
            writer.writeheader()
        with tqdm(total=len(files), unit="img", file=stderr, desc="predict") as bar:
            for row in predict_files(predictor, files, faces=detect, progress=bar.update):
                n_rows += 1
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
    seconds = time.perf_counter() - start
    for path, reason in failed:
        print(f"predict: not predicted: {path}: {reason}", file=stderr)
    done = len(files) - len({p for p, _ in failed})
    what = f" ({n_faces} faces)" if detect else ""
    print(f"predict: {done} of {len(files)} images predicted{what} in {seconds:.1f}s, "
          f"{len(files) / max(seconds, 1e-9):.1f} images/s"
          + (f"; written to {out}" if out else ""), file=stderr)
    return 1 if failed else 0


def define_flags() -> None:
    """Defines the command's flags; only the command calls it, so importing defines none."""
    from absl import flags

    flags.DEFINE_string("workdir", None, "A trained run's workdir, or an export folder.")
    flags.DEFINE_list("images", None,
                      "Comma-separated folders (their image files), globs or files.")
    flags.DEFINE_string("out", None, "Output .csv or .jsonl (default: CSV on stdout).")
    flags.DEFINE_integer("batch_size", 32, "Images per model call (the last one is padded).")
    flags.DEFINE_enum("faces", "none", ["none", "detect"],
                      "none: each image is one face, as in training; detect: find faces "
                      "and predict each, framed as the training images are.")
    flags.DEFINE_integer("fold", None, "Leave-persons-out runs: the fold whose model to use.")
    flags.mark_flags_as_required(["workdir", "images"])


def main(argv: list[str]) -> None:
    import cv2.utils.logging
    from absl import flags

    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Errors only: a bad file is reported in the output, once, not also by OpenCV.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    args = flags.FLAGS
    sys.exit(run(cli.absolute(args.workdir), args.images, args.out,
                 batch_size=args.batch_size, faces=args.faces, fold=args.fold))


if __name__ == "__main__":
    define_flags()
    cli.run(main, prog="fgmask_jax.predict")
