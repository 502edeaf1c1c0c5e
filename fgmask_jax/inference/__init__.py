"""Predictions of a trained run on new photos.

`Predictor` runs a run's best checkpoint (or an `export` artifact) on paths or arrays,
prepared as the training pipeline prepares images, each result with an out-of-distribution
score (`ood_score`, `uncertain`); `Predictor.predict_faces` finds the faces in a photo and
predicts each; `predict_files` streams many files through it; `detect_faces` and
`crop_face` find and frame faces in a group photo.
Modules: `faces` (detection), `images` (reading), `predictor`, `files` (many files,
CSV/JSON lines: the predict command), `export` (serving artifacts: the export command).
"""

from fgmask_jax.inference.faces import Box, crop_face, detect_faces
from fgmask_jax.inference.files import find_images, predict_files
from fgmask_jax.inference.images import as_rgb, load_faces, load_image
from fgmask_jax.inference.predictor import Predictor

__all__ = ["Box", "Predictor", "as_rgb", "crop_face", "detect_faces", "find_images",
           "load_faces", "load_image", "predict_files"]
