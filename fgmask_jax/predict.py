r"""Predictions of a trained run on new photos: the `Predictor` and the command.

  python -m fgmask_jax.predict --workdir=RUN --images=photos/ --out=preds.csv
  python -m fgmask_jax.predict --workdir=RUN --images='shots/*.jpg,me.png' --out=preds.jsonl
  python -m fgmask_jax.predict --workdir=RUN --images=group.jpg --faces=detect

In Python::

  from fgmask_jax.predict import Predictor
  predictor = Predictor.from_workdir("RUN")        # or an `export` folder
  predictor(["a.jpg", rgb_uint8_array])
  # [{"gender": {"label": "female", "probabilities": {"male": 0.1, "female": 0.9}}, ...,
  #   "ood_score": -2.9, "uncertain": False}, ...]
  predictor.predict_faces("group.jpg")            # one result per face, with its "box"

``RUN`` is a finished neural run's workdir (the best validation checkpoint is used)
or a folder written by ``fgmask_jax.export``. A leave-persons-out run holds one
model per fold of persons: pass ``--fold=K``. The classical methods keep no fitted
classifier: prediction is for neural runs.

Each photo is prepared as the training images were: decoded (EXIF rotation applied,
grayscale, RGBA and 16-bit images made 8-bit RGB), cropped to its centre square and
resized to the model's image size. With ``--faces=detect`` each frontal face found is
cropped the way the training images frame a face instead; faces narrower than
``--min_face`` pixels of the photo are skipped.

The command writes one row per image (per face with ``--faces=detect``): CSV
(``.csv``, also stdout when ``--out`` is not given) or JSON lines (``.jsonl``). An
existing ``--out`` file is replaced only when the command has written every row.
Every predicted row has an ``ood_score`` (higher: less like the images the model
was trained on) and ``uncertain`` (the score is above ``--ood_threshold``); a model
trained on drawn faces does not know real photos, whatever it answers: see
docs/predicting.md. An image that cannot be predicted (unreadable, empty,
truncated, not an image, smaller than 16 pixels on a side, or with
``--faces=detect`` no face found) gets a row with the reason in its ``error`` column
and is also listed on stderr, as is a face too small; every other image is still
predicted. Exit status: 0 if every image was predicted, 1 if any was not, 2 for a
usage error (bad flag, missing run, a path that does not exist, no images found),
which writes nothing.
"""

from __future__ import annotations

import sys

from fgmask_jax import cli, errors
from fgmask_jax.inference import Predictor  # noqa: F401 - `from fgmask_jax.predict import Predictor`
from fgmask_jax.inference.faces import MIN_FACE
from fgmask_jax.inference.files import predict_to_file
from fgmask_jax.inference.predictor import OOD_THRESHOLD


def define_flags() -> None:
    """Defines the command's flags; only the command calls it, so importing defines none."""
    from absl import flags

    flags.DEFINE_string("workdir", None, "A trained run's workdir, or an export folder.")
    flags.DEFINE_list("images", None,
                      "Comma-separated folders (their image files), globs or files.")
    flags.DEFINE_string("out", None, "Output .csv or .jsonl (default: CSV on stdout).")
    flags.DEFINE_integer("batch_size", 32, "Images per model call (the last one is padded).")
    flags.DEFINE_enum("faces", "none", ["none", "detect"],
                      "none: each image is one face, as in training; detect: find the "
                      "frontal faces in each photo and predict each, framed as the training "
                      "images frame a face (needs scikit-image: pip install -e "
                      "'.[faces]').")
    flags.DEFINE_integer("min_face", MIN_FACE,
                         "With --faces=detect: skip faces narrower than this many pixels of "
                         "the photo (listed on stderr and as rows with the reason).")
    flags.DEFINE_float("ood_threshold", None,
                       f"Rows whose ood_score is above this are marked uncertain (default: "
                       f"the run's own, the 95th percentile of its held-out validation faces, "
                       f"kept in its results.json and an export's export.json; "
                       f"{OOD_THRESHOLD:g} for a run from before runs kept one).")
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
                             batch_size=args.batch_size, faces=args.faces, fold=args.fold,
                             min_face=args.min_face, ood_threshold=args.ood_threshold))


if __name__ == "__main__":
    define_flags()
    cli.run(main, prog="fgmask_jax.predict")
