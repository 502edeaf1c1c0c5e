"""The `Predictor`: a trained model (a run's best checkpoint, or an `export` artifact) with
the training pipeline's preprocessing, in fixed-size jitted batches.

Every prediction carries an out-of-distribution signal, ``ood_score``: the energy of the
model's temperature-scaled logits, averaged over its task heads,
``mean over tasks of -T * logsumexp(logits / T)`` (T: the run's fitted temperature of
the task). It is low where the model's heads respond strongly, as they do on images like
the training images, and higher on inputs unlike them. ``uncertain`` is true where it
is above ``Predictor.ood_threshold``. docs/predicting.md says why energy, and what it
tells apart on the demo run (and what it does not).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import jax
import numpy as np

from fgmask_jax import errors, paths, runs
from fgmask_jax.data import labels as labels_lib
from fgmask_jax.data import pipeline
from fgmask_jax.inference.faces import MIN_FACE
from fgmask_jax.inference.images import load_faces, load_image

EXPORT_META = "export.json"  # marks an `export` folder
OOD_KEY = "ood_score"  # the model's output beside the tasks' probabilities
# `uncertain` above this for a run that measured no threshold of its own (one finished
# before runs kept theirs in results.json): the 95th percentile of the demo run's held-out
# faces (docs/predicting.md).
OOD_THRESHOLD = -1.62


def probabilities_fn(model, dtype, temperatures: dict[str, float] | None = None) -> Callable:
    """(variables, uint8[B, S, S, 3]) -> {task: float32[B, classes], "ood_score": float32[B]}:
    the eval forward pass, its class probabilities and its energy (`OOD_KEY`).

    ``temperatures``: {task: T}, the run's temperature scaling (logits / T before the
    softmax; the most probable class is unchanged).
    """
    temperatures = dict(temperatures or {})

    def fn(variables, images):
        logits = model.apply(variables, pipeline.normalize(images, dtype), train=False)
        out, energies = {}, []
        for t, z in logits.items():
            temperature = temperatures.get(t, 1.0)
            z = z.astype(jax.numpy.float32) / temperature
            out[t] = jax.nn.softmax(z, axis=-1)
            energies.append(-temperature * jax.nn.logsumexp(z, axis=-1))
        out[OOD_KEY] = sum(energies) / len(energies)
        return out

    return fn


class Predictor:
    """A trained model with the training pipeline's preprocessing, in fixed-size jitted batches.

    ``predictor(images)``: paths or arrays -> per image {task: {"label": class name,
    "probabilities": {class name: p}}, "ood_score": float, "uncertain": bool};
    `predict_faces` finds the faces in a photo and predicts each; `probabilities` is the
    array form. ``ood_threshold``: the ``ood_score`` above which a result is
    ``uncertain``: the run's own (measured on its held-out persons; an export's from its
    run), else `OOD_THRESHOLD`, unless set.
    """

    def __init__(self, fn: Callable, tasks: dict[str, Sequence[str]], image_size: int,
                 batch_size: int = 32, description: str = "",
                 ood_threshold: float = OOD_THRESHOLD, variables=None):
        """``fn``: jittable uint8[B, image_size, image_size, 3] -> {task: float32[B, C]} and
        ``"ood_score"``: float32[B] (an artifact exported before it was added has none);
        with ``variables``, ``fn(variables, images)``: the weights are then an argument of
        the compiled program, not constants baked into it (whose compilation, device memory
        and compilation-cache entry would grow with them)."""
        self.tasks = {t: tuple(c) for t, c in tasks.items()}
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.description = description
        self.ood_threshold = float(ood_threshold)
        self._fn = jax.jit(fn)
        self._variables = variables
        if self.batch_size < 1:
            raise errors.ConfigError(f"batch_size={batch_size}: must be >= 1")

    @classmethod
    def from_variables(cls, config, variables: dict, batch_size: int = 32,
                       description: str = "", temperatures: dict | None = None) -> Predictor:
        """A predictor of the model ``config`` describes, with these variables (and
        temperature scaling: {task: T})."""
        fn = probabilities_fn(runs.make_model(config), runs.compute_dtype(config), temperatures)
        return cls(fn, {t: labels_lib.TASKS[t] for t in config.tasks}, config.image_size,
                   batch_size, description, variables=jax.device_put(variables))

    @classmethod
    def from_workdir(cls, path: str, *, fold: int | None = None,
                     batch_size: int = 32) -> Predictor:
        """The best checkpoint of the run in ``path``, or the artifact of an `export` folder.

        Raises `errors.RunNotFoundError` (a FileNotFoundError and a ValueError) when ``path``
        holds neither, naming what is missing.
        """
        path = paths.absolute(os.fspath(path))
        if os.path.isfile(os.path.join(path, EXPORT_META)):
            return cls.from_export(path, batch_size)
        run = runs.load(path, fold)
        note = "" if run.finished else " (the run has not finished: its best so far)"
        predictor = cls.from_variables(run.config, run.variables, batch_size,
                                       f"{run.folder} best/{run.step}{note}",
                                       temperatures=run.temperatures)
        if run.ood_threshold is not None:  # the run's own, on its held-out persons
            predictor.ood_threshold = run.ood_threshold
        return predictor

    @classmethod
    def from_export(cls, folder: str, batch_size: int = 32) -> Predictor:
        """The serialized model of an `export` folder."""
        from jax import export

        try:
            with open(os.path.join(folder, EXPORT_META)) as f:
                meta = json.load(f)
            with open(os.path.join(folder, meta["file"]), "rb") as f:
                serialized = bytearray(f.read())
        except (FileNotFoundError, json.JSONDecodeError) as e:  # an incomplete export folder
            raise errors.RunNotFoundError(str(e)) from None
        exported = export.deserialize(serialized)
        return cls(exported.call, meta["tasks"], meta["image_size"], batch_size,
                   f"{folder} (exported)", meta.get("ood_threshold", OOD_THRESHOLD))

    def dispatch(self, images: np.ndarray) -> dict:
        """Starts the model on at most ``batch_size`` images (padded to it); returns at once."""
        n = len(images)
        if n > self.batch_size:
            raise ValueError(f"{n} images in one dispatch: at most batch_size={self.batch_size}")
        # Rows of zeros up to batch_size: one shape, one compiled program for every call.
        return self._fn(*self._arguments(
            pipeline.pad_rows(np.asarray(images, np.uint8), self.batch_size, fill=0)))

    def _arguments(self, images) -> tuple:
        return (images,) if self._variables is None else (self._variables, images)

    def outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8[N, S, S, 3] RGB, prepared (`load_image`) -> {task: float32[N, classes],
        "ood_score": float32[N]}."""
        images = np.asarray(images)
        outs = [self.dispatch(images[i : i + self.batch_size])
                for i in range(0, len(images), self.batch_size)]
        outs = jax.device_get(outs)
        if not outs:
            empty = {t: np.zeros((0, len(c)), np.float32) for t, c in self.tasks.items()}
            return {**empty, OOD_KEY: np.zeros((0,), np.float32)}
        return {k: np.concatenate([o[k] for o in outs])[: len(images)] for k in outs[0]}

    def probabilities(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8[N, S, S, 3] RGB, prepared (`load_image`) -> {task: float32[N, classes]}."""
        out = self.outputs(images)
        return {t: out[t] for t in self.tasks}

    def describe(self, out: dict[str, np.ndarray], i: int) -> dict:
        """Row ``i`` of `outputs` -> {task: {"label", "probabilities"}, "ood_score",
        "uncertain"} (the last two None for an artifact that has no ood_score)."""
        result: dict = {}
        for task, classes in self.tasks.items():
            p = out[task][i]
            result[task] = {"label": classes[int(np.argmax(p))],
                            "probabilities": {c: float(v) for c, v in zip(classes, p, strict=True)}}
        score = float(out[OOD_KEY][i]) if OOD_KEY in out else None
        result[OOD_KEY] = score
        result["uncertain"] = None if score is None else score > self.ood_threshold
        return result

    def __call__(self, images) -> list[dict]:
        """Paths or arrays (uint8 HxWx3 RGB, HxW, HxWx4; one, or a sequence) -> one result
        each (see the class), each image taken whole as one face.

        Raises `errors.DataError` (a ValueError) naming the image that cannot be used, and why.
        """
        if isinstance(images, str | os.PathLike | np.ndarray) and not (
            isinstance(images, np.ndarray) and images.ndim == 4
        ):
            images = [images]
        prepared = [_prepared(load_image, image, k, self.image_size)
                    for k, image in enumerate(images)]
        if not prepared:
            return []
        out = self.outputs(np.stack(prepared))
        return [self.describe(out, i) for i in range(len(prepared))]

    def predict_faces(self, image, min_face: int = MIN_FACE) -> list[dict]:
        """The faces found in one photo (a path or an array), largest first, each cropped as
        the training images frame a face and predicted: [{"box": `Box` (with the
        detector's score), task: {...}, "ood_score", "uncertain"}]; [] when none is found.
        Faces narrower than ``min_face`` pixels of the photo are left out.

        Raises `errors.DataError` naming an image that cannot be used, and ImportError
        without scikit-image (the ``faces`` extra).
        """
        found = [(box, crop) for box, crop in
                 _prepared(load_faces, image, 0, self.image_size, min_face)
                 if crop is not None]
        if not found:
            return []
        out = self.outputs(np.stack([crop for _, crop in found]))
        return [{"box": box, **self.describe(out, i)} for i, (box, _) in enumerate(found)]


def _prepared(load: Callable, image, k: int, *args):
    """``load(image, *args)``, its ValueError as `errors.DataError` naming the image (its
    path, or ``image k``)."""
    try:
        return load(image, *args)
    except ValueError as e:
        name = os.fspath(image) if isinstance(image, str | os.PathLike) else f"image {k}"
        raise errors.DataError(f"{name}: {e}") from None
