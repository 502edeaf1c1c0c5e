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
pass (normalisation, model, softmax, and the ``ood_score``) with the best
checkpoint's weights as constants, for any batch size (a symbolic dimension) and
for CPU, CUDA and TPU. It computes in the dtype the run trained in (its
config.json: bfloat16 for a run trained on an accelerator with ``dtype=auto``),
wherever it is exported; ``--dtype=float32|bfloat16`` chooses another.
``DIR/export.json`` holds the task and class names, the image size, the
preprocessing, the ``dtype`` and the ``ood_threshold``. Running it needs only ``jax`` and ``numpy``
(and Pillow to read photos)::

  import json, numpy as np
  from jax import export

  meta = json.load(open("DIR/export.json"))
  with open(f"DIR/{meta['file']}", "rb") as f:
      model = export.deserialize(bytearray(f.read()))
  images = np.stack([prepare("photo.jpg", meta["image_size"])])  # uint8[N, S, S, 3] RGB
  out = model.call(images)  # {task: float32[N, classes], "ood_score": float32[N]}
  labels = {t: [names[i] for i in np.argmax(out[t], -1)] for t, names in meta["tasks"].items()}

The images must be prepared as in training (``export.json`` says how: decode to
RGB, crop the centre square, resize); ``prepare``, with numpy and Pillow only, is in
docs/predicting.md ("Serving"), whole and tested. ``ood_score`` above
``meta["ood_threshold"]``: an input unlike the training images (docs/predicting.md).
``Predictor.from_workdir(DIR)`` prepares images itself and runs the artifact.

With ``--format=onnx`` (needs ``pip install -e '.[onnx]'``: jax2onnx converts
the same eval forward pass), ``DIR/model.onnx`` takes ``images``, uint8[batch, size,
size, 3] RGB, for any batch size, and gives one float32[batch, classes] output of
probabilities per task, named after the task (no ``ood_score``); ``DIR/onnx.json`` holds what
``export.json`` holds (the model is computed in float32 whatever the run's dtype).
With ``onnxruntime``::

  import json, numpy as np, onnxruntime as ort

  meta = json.load(open("DIR/onnx.json"))
  session = ort.InferenceSession(f"DIR/{meta['file']}")
  images = np.stack([prepare("photo.jpg", meta["image_size"])])  # as above
  probs = dict(zip(meta["outputs"], session.run(meta["outputs"], {"images": images})))

The ONNX files go next to the StableHLO ones, so one ``DIR`` can hold both;
``Predictor.from_workdir(DIR)`` runs the StableHLO artifact only.
"""

from __future__ import annotations

from fgmask_jax import cli, errors
from fgmask_jax.inference.export import FORMATS, export_as


def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "A trained run's workdir.")
    flags.DEFINE_string("out", None, "Folder to write model.jaxexport and export.json (or "
                        "model.onnx and onnx.json, or the trunk) into.")
    flags.DEFINE_integer("fold", None, "Leave-persons-out runs: the fold whose model to export.")
    flags.DEFINE_enum("format", "jax", list(FORMATS),
                      "jax: the serving artifact (model.jaxexport); onnx: the same as "
                      "model.onnx (needs the onnx extra); torchvision: the trunk as a "
                      ".safetensors file in torchvision's layout.")
    flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"],
                      "The dtype the jax artifact computes in (default: the one the run "
                      "trained in, as its config.json says).")
    flags.mark_flags_as_required(["workdir", "out"])


def main(argv: list[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise errors.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    args = flags.FLAGS
    print(export_as(args.format, cli.absolute(args.workdir), cli.absolute(args.out),
                    fold=args.fold, dtype=args.dtype))


if __name__ == "__main__":
    define_flags()
    cli.run(main, prog="fgmask_jax.export")
