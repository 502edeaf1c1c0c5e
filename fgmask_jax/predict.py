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

import sys

from fgmask_jax import cli, errors
from fgmask_jax.inference import Predictor  # noqa: F401 - `from fgmask_jax.predict import Predictor`
from fgmask_jax.inference.files import predict_to_file


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
        raise errors.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Errors only: a bad file is reported in the output, once, not also by OpenCV.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    args = flags.FLAGS
    sys.exit(predict_to_file(cli.absolute(args.workdir), args.images, args.out,
                             batch_size=args.batch_size, faces=args.faces, fold=args.fold))


if __name__ == "__main__":
    define_flags()
    cli.run(main, prog="fgmask_jax.predict")
