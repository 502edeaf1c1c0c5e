r"""A trained run as a serving artifact (StableHLO or ONNX with the weights in, and a JSON),
or its trunk as a torchvision file.

  python -m fgmask_jax.export --workdir=RUN --out=DIR [--fold=K]
  python -m fgmask_jax.export --workdir=RUN --out=DIR --format=onnx
  python -m fgmask_jax.export --workdir=RUN --out=DIR --format=torchvision

With ``--format=torchvision``, ``DIR/<model>_trunk.safetensors`` holds the best
model's trunk (ResNet-18..152, VGG-16) under torchvision's key names, to load
into ``torchvision.models.<model>()`` with its classifier replaced by an identity
(see `models.pretrained.export_torchvision`), or to start another run from with
``pretrained=DIR/<model>_trunk.safetensors``.

``DIR/model.jaxexport`` is a serialized `jax.export.Exported` of the eval forward
pass (normalisation, model, softmax) with the best checkpoint's weights as
constants, for any batch size (a symbolic dimension) and for CPU, CUDA and TPU.
``DIR/export.json`` holds the task and class names, the image size and the
preprocessing. Running it needs only ``jax`` and ``numpy``::

  import json, numpy as np
  from jax import export

  meta = json.load(open("DIR/export.json"))
  with open(f"DIR/{meta['file']}", "rb") as f:
      model = export.deserialize(bytearray(f.read()))
  images = np.zeros((5, meta["image_size"], meta["image_size"], 3), np.uint8)  # RGB
  probs = model.call(images)  # {task: float32[5, classes]}
  labels = {t: [meta["tasks"][t][i] for i in np.argmax(p, -1)] for t, p in probs.items()}

The images must be prepared as in training (``export.json`` says how:
decode to RGB, crop the centre square, resize). ``Predictor.from_workdir(DIR)``
does that and runs the artifact.

With ``--format=onnx`` (needs ``pip install 'fgmask_jax[onnx]'``: jax2onnx converts
the same eval forward pass), ``DIR/model.onnx`` takes ``images``, uint8[batch, size,
size, 3] RGB, for any batch size, and gives one float32[batch, classes] output of
probabilities per task, named after the task; ``DIR/onnx.json`` holds what
``export.json`` holds (the model is computed in float32 whatever the run's dtype).
With ``onnxruntime``::

  import json, numpy as np, onnxruntime as ort

  meta = json.load(open("DIR/onnx.json"))
  session = ort.InferenceSession(f"DIR/{meta['file']}")
  images = np.zeros((5, meta["image_size"], meta["image_size"], 3), np.uint8)  # RGB
  probs = dict(zip(meta["outputs"], session.run(meta["outputs"], {"images": images})))

The ONNX files go next to the StableHLO ones, so one ``DIR`` can hold both;
``Predictor.from_workdir(DIR)`` runs the StableHLO artifact only.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from fgmask_jax import cli, predict
from fgmask_jax.data import labels as labels_lib

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


def export_run(workdir: str, out: str, *, fold: int | None = None,
               platforms: tuple[str, ...] = PLATFORMS) -> dict:
    """Writes ``out/model.jaxexport`` and ``out/export.json`` for the run in ``workdir``.

    Returns the JSON's content. Raises as `predict.load_run`.
    """
    from jax import export

    from fgmask_jax import train

    config, variables, info = predict.load_run(workdir, fold)
    fn = predict.probabilities_fn(train.make_model(config), train.compute_dtype(config),
                                  info["temperatures"])
    variables = jax.tree.map(np.asarray, variables)  # constants of the artifact
    (batch,) = export.symbolic_shape("batch")
    size = config.image_size
    exported = export.export(jax.jit(lambda images: fn(variables, images)),
                             platforms=platforms)(
        jax.ShapeDtypeStruct((batch, size, size, 3), np.uint8)
    )
    out = cli.absolute(out)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, MODEL_FILE), "wb") as f:
        f.write(exported.serialize())
    meta = _metadata(
        config, info,
        format="jax.export (StableHLO), serialized; load with jax.export.deserialize",
        file=MODEL_FILE,
        input=f"uint8[batch, {size}, {size}, 3] RGB",
        output="{task: float32[batch, classes]} class probabilities, classes as in tasks",
        platforms=list(exported.platforms),
    )
    with open(os.path.join(out, predict.EXPORT_META), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def _metadata(config, info: dict, *, format: str, file: str, input: str, output: str,
              **more) -> dict:
    """The JSON written next to an artifact of the run ``load_run`` gave (config, info)."""
    return {
        "format": format,
        "file": file,
        "tasks": {t: list(labels_lib.TASKS[t]) for t in config.tasks},
        "image_size": int(config.image_size),
        "input": input,
        "output": output,
        "preprocessing": PREPROCESSING,
        # The run's temperature scaling (fitted on its validation subset), inside the model.
        "temperature": info["temperatures"],
        **more,
        "source": {"workdir": info["folder"], "best_step": info["step"],
                   "model": config.model, "finished": info["finished"]},
        "jax_version": jax.__version__,
    }


def export_onnx(workdir: str, out: str, *, fold: int | None = None) -> str:
    """Writes ``out/model.onnx`` and ``out/onnx.json`` for the run in ``workdir``; returns
    the model's path.

    The model is the eval forward pass (normalisation, model, softmax) in float32 with the
    best checkpoint's weights as initializers: input ``images`` uint8[batch, S, S, 3] (batch
    symbolic), one output per task named after it, float32[batch, classes], in the order
    of ``onnx.json``'s ``outputs`` (the run's tasks). Raises as `predict.load_run`, and
    ImportError without jax2onnx.
    """
    try:
        import onnx
        from jax2onnx import to_onnx
    except ImportError as e:
        raise ImportError(f"ONNX export needs jax2onnx and onnx ({e}): "
                          "pip install 'fgmask_jax[onnx]'") from None
    from jax import export

    from fgmask_jax import train

    config, variables, info = predict.load_run(workdir, fold)
    # float32 whatever the run's dtype: ONNX runtimes rarely run bfloat16 convolutions.
    config.dtype = "float32"
    fn = predict.probabilities_fn(train.make_model(config), np.float32, info["temperatures"])
    variables = jax.tree.map(np.asarray, variables)  # the model's initializers
    (batch,) = export.symbolic_shape("batch")
    size = int(config.image_size)
    outputs = list(config.tasks)
    model = to_onnx(lambda images: tuple(fn(variables, images)[t] for t in outputs),
                    [jax.ShapeDtypeStruct((batch, size, size, 3), np.uint8)],
                    model_name=f"fgmask_jax_{config.model}", opset=ONNX_OPSET,
                    input_names=[ONNX_INPUT], output_names=outputs)
    out = cli.absolute(out)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, ONNX_FILE)
    onnx.save_model(model, path)  # one file: the weights inside (< 2 GB for every model)
    meta = _metadata(
        config, info,
        format=f"ONNX (opset {ONNX_OPSET}); run with onnxruntime or any ONNX runtime",
        file=ONNX_FILE,
        input=f"{ONNX_INPUT}: uint8[batch, {size}, {size}, 3] RGB",
        output="one output per task, named after it: float32[batch, classes] class "
               "probabilities, classes as in tasks",
        outputs=outputs,
    )
    with open(os.path.join(out, ONNX_META), "w") as f:
        json.dump(meta, f, indent=1)
    return path


def export_trunk(workdir: str, out: str, *, fold: int | None = None) -> str:
    """Writes the best model's trunk of the run in ``workdir`` as
    ``out/<model>_trunk.safetensors`` in torchvision's layout; returns the path."""
    from fgmask_jax.models import pretrained

    config, variables, _ = predict.load_run(workdir, fold)
    if config.model not in pretrained.ARCHITECTURES:
        raise ValueError(f"{workdir}: a {config.model} trunk has no torchvision layout; "
                         f"those are {', '.join(pretrained.ARCHITECTURES)}")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{config.model}_trunk.safetensors")
    pretrained.export_torchvision(jax.tree.map(np.asarray, variables), config.model, path)
    return path


def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "A trained run's workdir.")
    flags.DEFINE_string("out", None, "Folder to write model.jaxexport and export.json (or "
                        "model.onnx and onnx.json, or the trunk) into.")
    flags.DEFINE_integer("fold", None, "Leave-persons-out runs: the fold whose model to export.")
    flags.DEFINE_enum("format", "jax", ["jax", "onnx", "torchvision"],
                      "jax: the serving artifact (model.jaxexport); onnx: the same as "
                      "model.onnx (needs the onnx extra); torchvision: the trunk as a "
                      ".safetensors file in torchvision's layout.")
    flags.mark_flags_as_required(["workdir", "out"])


def main(argv: list[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    args = flags.FLAGS
    out = cli.absolute(args.out)
    try:
        if args.format == "torchvision":
            print(f"export: wrote {export_trunk(cli.absolute(args.workdir), out, fold=args.fold)}")
            return
        if args.format == "onnx":
            try:
                path = export_onnx(cli.absolute(args.workdir), out, fold=args.fold)
            except ImportError as e:
                raise cli.UserError(str(e)) from None
            print(f"export: wrote {path} and {os.path.join(out, ONNX_META)}")
            return
        meta = export_run(cli.absolute(args.workdir), out, fold=args.fold)
    except (FileNotFoundError, ValueError) as e:
        raise cli.UserError(str(e)) from None
    print(f"export: wrote {out}/{MODEL_FILE} ({meta['source']['model']}, "
          f"tasks {', '.join(meta['tasks'])}, {meta['image_size']} px, "
          f"platforms {', '.join(meta['platforms'])})")


if __name__ == "__main__":
    define_flags()
    cli.run(main, prog="fgmask_jax.export")
