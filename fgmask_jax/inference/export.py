"""A trained run as a serving artifact: StableHLO (`jax.export`) or ONNX with the weights
in and a JSON of its tasks, image size and preprocessing; or its trunk as a torchvision
file. The formats and how to run them: the `fgmask_jax.export` command's docstring."""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from fgmask_jax import errors, paths, runs
from fgmask_jax.data import labels as labels_lib
from fgmask_jax.inference.predictor import EXPORT_META, OOD_KEY, OOD_THRESHOLD, probabilities_fn

FORMATS = ("jax", "onnx", "torchvision")
MODEL_FILE = "model.jaxexport"
ONNX_FILE = "model.onnx"
ONNX_META = "onnx.json"
ONNX_INPUT = "images"
ONNX_OPSET = 23
PLATFORMS = ("cpu", "cuda", "tpu")
PREPROCESSING = (
    "Decode to RGB uint8 (EXIF orientation applied, grayscale to 3 channels, alpha dropped, "
    "16-bit scaled to 8-bit), crop the centre square on the shorter side, resize it to "
    "image_size x image_size (area averaging when shrinking, bilinear when enlarging). "
    "Feed uint8[batch, image_size, image_size, 3]; normalisation is inside the model."
)


def artifact_dtype(config, dtype: str | None) -> str:
    """The dtype an artifact computes in: ``dtype`` if given, else the one the run trained
    in (its config.json), float32 for a run that did not store it ("auto")."""
    dtype = dtype or config.dtype
    dtype = "float32" if dtype == "auto" else dtype
    if dtype not in runs.DTYPES:
        raise errors.UserError(f"--dtype={dtype}: use one of {', '.join(runs.DTYPES)}")
    return dtype


def export_run(workdir: str, out: str, *, fold: int | None = None,
               platforms: tuple[str, ...] = PLATFORMS, dtype: str | None = None) -> dict:
    """Writes ``out/model.jaxexport`` and ``out/export.json`` for the run in ``workdir``,
    computing in ``dtype`` (None: the run's own, `artifact_dtype`).

    Returns the JSON's content. Raises as `runs.load`.
    """
    from jax import export

    run = runs.load(workdir, fold)
    config = run.config
    config.dtype = artifact_dtype(config, dtype)
    # The kernels of the platforms the artifact targets (XLA's own unless it is for CPU
    # alone), not of the host that exports it.
    fn = probabilities_fn(runs.make_model(config, platforms=platforms),
                          runs.compute_dtype(config), run.temperatures)
    variables = jax.tree.map(np.asarray, run.variables)  # constants of the artifact
    (batch,) = export.symbolic_shape("batch")
    size = config.image_size
    exported = export.export(jax.jit(lambda images: fn(variables, images)),
                             platforms=platforms)(
        jax.ShapeDtypeStruct((batch, size, size, 3), np.uint8)
    )
    out = paths.absolute(out)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, MODEL_FILE), "wb") as f:
        f.write(exported.serialize())
    meta = _metadata(
        run,
        format="jax.export (StableHLO), serialized; load with jax.export.deserialize",
        file=MODEL_FILE,
        input=f"uint8[batch, {size}, {size}, 3] RGB",
        output=f"{{task: float32[batch, classes]}} class probabilities, classes as in tasks, "
               f"and {OOD_KEY}: float32[batch], the out-of-distribution score (higher: less "
               f"like the training images; see ood_threshold)",
        platforms=list(exported.platforms),
        dtype=config.dtype,
        ood_threshold=OOD_THRESHOLD if run.ood_threshold is None else run.ood_threshold,
    )
    with open(os.path.join(out, EXPORT_META), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def _metadata(run: runs.Run, *, format: str, file: str, input: str, output: str,
              **more) -> dict:
    """The JSON written next to an artifact of ``run``."""
    config = run.config
    return {
        "format": format,
        "file": file,
        "tasks": {t: list(labels_lib.TASKS[t]) for t in config.tasks},
        "image_size": int(config.image_size),
        "input": input,
        "output": output,
        "preprocessing": PREPROCESSING,
        # The run's temperature scaling (fitted on its validation subset), inside the model.
        "temperature": run.temperatures,
        **more,
        "source": {"workdir": run.folder, "best_step": run.step,
                   "model": config.model, "finished": run.finished},
        "jax_version": jax.__version__,
    }


def export_onnx(workdir: str, out: str, *, fold: int | None = None) -> str:
    """Writes ``out/model.onnx`` and ``out/onnx.json`` for the run in ``workdir``; returns
    the model's path.

    The model is the eval forward pass (normalisation, model, softmax) in float32 with the
    best checkpoint's weights as initializers: input ``images`` uint8[batch, S, S, 3] (batch
    symbolic), one output per task named after it, float32[batch, classes], in the order
    of ``onnx.json``'s ``outputs`` (the run's tasks). Raises as `runs.load`, and
    ImportError without jax2onnx.
    """
    try:
        import onnx
        from jax2onnx import to_onnx
    except ImportError as e:
        raise ImportError(f"ONNX export needs jax2onnx and onnx ({e}): "
                          "pip install -e '.[onnx]'") from None
    from jax import export

    run = runs.load(workdir, fold)
    config = run.config
    # float32 whatever the run's dtype: ONNX runtimes rarely run bfloat16 convolutions. The
    # "cpu" kernels: with XLA's own max-pool (explicit padding), jax2onnx's MaxPool gives
    # other numbers than JAX (tests/test_export.py); the "cpu" max-pool converts exactly.
    config.dtype, config.kernels = "float32", "cpu"
    fn = probabilities_fn(runs.make_model(config), np.float32, run.temperatures)
    variables = jax.tree.map(np.asarray, run.variables)  # the model's initializers
    (batch,) = export.symbolic_shape("batch")
    size = int(config.image_size)
    outputs = list(config.tasks)
    model = to_onnx(lambda images: tuple(fn(variables, images)[t] for t in outputs),
                    [jax.ShapeDtypeStruct((batch, size, size, 3), np.uint8)],
                    model_name=f"fgmask_jax_{config.model}", opset=ONNX_OPSET,
                    input_names=[ONNX_INPUT], output_names=outputs)
    out = paths.absolute(out)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, ONNX_FILE)
    onnx.save_model(model, path)  # one file: the weights inside (< 2 GB for every model)
    meta = _metadata(
        run,
        format=f"ONNX (opset {ONNX_OPSET}); run with onnxruntime or any ONNX runtime",
        file=ONNX_FILE,
        input=f"{ONNX_INPUT}: uint8[batch, {size}, {size}, 3] RGB",
        output="one output per task, named after it: float32[batch, classes] class "
               "probabilities, classes as in tasks",
        outputs=outputs,
        dtype="float32",
    )
    with open(os.path.join(out, ONNX_META), "w") as f:
        json.dump(meta, f, indent=1)
    return path


def export_trunk(workdir: str, out: str, *, fold: int | None = None) -> str:
    """Writes the best model's trunk of the run in ``workdir`` as
    ``out/<model>_trunk.safetensors`` in torchvision's layout; returns the path.

    Raises as `runs.load`, and `errors.ConfigError` for a model without that layout.
    """
    from fgmask_jax.models import pretrained

    run = runs.load(workdir, fold)
    model = run.config.model
    if model not in pretrained.ARCHITECTURES:
        raise errors.ConfigError(f"{workdir}: a {model} trunk has no torchvision layout; "
                                 f"those are {', '.join(pretrained.ARCHITECTURES)}")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{model}_trunk.safetensors")
    pretrained.export_torchvision(jax.tree.map(np.asarray, run.variables), model, path)
    return path


def export_as(format: str, workdir: str, out: str, *, fold: int | None = None,
              dtype: str | None = None) -> str:
    """The export command: writes the artifact of ``format`` (one of `FORMATS`) for the run
    in ``workdir`` into ``out``, computing in ``dtype`` (None: the run's); returns the line
    that says what was written.

    Raises `errors.UserError` where the input is wrong (no such run, a trunk without a
    torchvision layout, ONNX without its optional packages, ONNX or a trunk asked for
    another dtype than float32).
    """
    out = paths.absolute(out)
    if format != "jax" and dtype not in (None, "float32"):
        raise errors.UserError(f"--dtype={dtype} with --format={format}: that format holds "
                               "float32 weights and computes in float32; leave --dtype out")
    if format == "torchvision":
        return f"export: wrote {export_trunk(workdir, out, fold=fold)}"
    if format == "onnx":
        try:
            path = export_onnx(workdir, out, fold=fold)
        except ImportError as e:  # an optional extra: its install line, not a traceback
            raise errors.UserError(str(e)) from None
        return f"export: wrote {path} and {os.path.join(out, ONNX_META)}"
    if format != "jax":
        raise errors.UserError(f"--format={format}: use one of {', '.join(FORMATS)}")
    meta = export_run(workdir, out, fold=fold, dtype=dtype)
    return (f"export: wrote {out}/{MODEL_FILE} ({meta['source']['model']}, "
            f"tasks {', '.join(meta['tasks'])}, {meta['image_size']} px, {meta['dtype']}, "
            f"platforms {', '.join(meta['platforms'])})")
