"""The `Predictor`: a trained model (a run's best checkpoint, or an `export` artifact) with
the training pipeline's preprocessing, in fixed-size jitted batches."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import jax
import numpy as np

from fgmask_jax import errors, paths, runs
from fgmask_jax.data import labels as labels_lib
from fgmask_jax.data import pipeline
from fgmask_jax.inference.images import load_image

EXPORT_META = "export.json"  # marks an `export` folder


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
            raise errors.ConfigError(f"batch_size={batch_size}: must be >= 1")

    @classmethod
    def from_variables(cls, config, variables: dict, batch_size: int = 32,
                       description: str = "", temperatures: dict | None = None) -> Predictor:
        """A predictor of the model ``config`` describes, with these variables (and
        temperature scaling: {task: T})."""
        fn = probabilities_fn(runs.make_model(config), runs.compute_dtype(config), temperatures)
        variables = jax.device_put(variables)
        return cls(lambda images: fn(variables, images),
                   {t: labels_lib.TASKS[t] for t in config.tasks}, config.image_size,
                   batch_size, description)

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
        return cls.from_variables(run.config, run.variables, batch_size,
                                  f"{run.folder} best/{run.step}{note}",
                                  temperatures=run.temperatures)

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
                   f"{folder} (exported)")

    def dispatch(self, images: np.ndarray) -> dict:
        """Starts the model on at most ``batch_size`` images (padded to it); returns at once."""
        n = len(images)
        if n > self.batch_size:
            raise ValueError(f"{n} images in one dispatch: at most batch_size={self.batch_size}")
        # Rows of zeros up to batch_size: one shape, one compiled program for every call.
        return self._fn(pipeline.pad_rows(np.asarray(images, np.uint8), self.batch_size, fill=0))

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

        Raises `errors.DataError` (a ValueError) naming the image that cannot be used, and why.
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
                raise errors.DataError(f"{name}: {e}") from None
        if not prepared:
            return []
        probs = self.probabilities(np.stack(prepared))
        return [self.describe(probs, i) for i in range(len(prepared))]
