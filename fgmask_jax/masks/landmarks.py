"""Faces and their 68 landmarks found in a photo, for masking photos that have no ``.pts`` file.

The detector is dlib's HOG frontal-face detector with dlib's 68-point shape predictor, whose
points follow the iBUG-68 order of FG-NET's ``.pts`` files (``pts.py``). Both are optional:
``pip install -e '.[landmarks]'`` (from the repository's root, in its environment)
brings ``dlib-bin`` (dlib's code, prebuilt; Boost Software License; the HOG detector is
built into it) and ``face-recognition-models`` (the model file
``shape_predictor_68_face_landmarks.dat``, 100 MB). Everything runs offline once installed.

Licence of the 68-point model: dlib's author releases it into the public domain (the package
says CC0), but it is trained on iBUG 300-W, whose licence excludes commercial use, and the
dataset's creators ask that the model not be used in a commercial product (dlib-models'
README). ``FaceLandmarkDetector(model_path=...)`` takes another 68-point model in dlib's format.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import threading

import cv2
import numpy as np

from fgmask_jax.masks.pts import N_POINTS

INSTALL_HINT = "pip install -e '.[landmarks]' (from the repository's root, in its environment)"
MODEL_PACKAGE = "face_recognition_models"
MODEL_FILE = "shape_predictor_68_face_landmarks.dat"
# dlib's HOG window is 80 px and the detector first doubles the photo (one upsampling), so
# it finds faces down to about 40 px at this scale: 6% of the longer side. Larger photos are shrunk
# for the detector (a 640 px photo takes about 0.4 s on one core); the landmarks are then
# fitted on the photo at full size.
DETECT_SIDE = 640
DETECT_UPSAMPLE = 1


@dataclasses.dataclass(frozen=True, eq=False)
class Face:
    """One face of a photo.

    Attributes:
      box: (x, y, width, height) of the detector's box in the photo's pixels, x, y its top
        left corner, clipped to the photo.
      score: the detector's confidence (> 0: above its threshold; larger is surer).
      landmarks: float32[68, 2] (x, y) pixels in iBUG-68 order, as ``read_pts`` returns them.
    """

    box: tuple[int, int, int, int]
    score: float
    landmarks: np.ndarray


class FaceLandmarkDetector:
    """dlib's HOG face detector and 68-point shape predictor; call it on a photo.

    One detector is for one thread at a time; ``detect`` keeps one per thread.
    """

    def __init__(self, model_path: str | os.PathLike | None = None):
        """Loads the models (about a second).

        Args:
          model_path: a 68-point shape predictor file in dlib's format; by default the one
            that ``face-recognition-models`` installs.
        Raises:
          ImportError: dlib or the model package is missing, naming the extra to install.
          FileNotFoundError: ``model_path`` does not exist.
          ValueError: the model gives other than 68 points.
        """
        try:
            import dlib
        except ImportError:
            raise ImportError(
                f"finding faces and their landmarks needs dlib: {INSTALL_HINT}"
            ) from None
        path = os.fspath(model_path) if model_path is not None else default_model_path()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such landmark model file")
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(path)
        self._rectangle = dlib.rectangle
        parts = self._predictor(np.zeros((8, 8, 3), np.uint8), dlib.rectangle(0, 0, 7, 7))
        if parts.num_parts != N_POINTS:
            raise ValueError(
                f"{path}: gives {parts.num_parts} points per face; masks need a "
                f"{N_POINTS}-point model (iBUG-68 order)"
            )

    def __call__(self, image: np.ndarray) -> list[Face]:
        """Faces in ``image`` (uint8[H, W, 3] RGB), largest first; [] when there is none."""
        image = _check_image(image)
        h, w = image.shape[:2]
        scale = min(1.0, DETECT_SIDE / max(h, w))
        small = image
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        boxes, scores, _ = self._detector.run(small, DETECT_UPSAMPLE, 0.0)
        faces = []
        for box, score in zip(boxes, scores, strict=True):
            left, top = box.left() / scale, box.top() / scale
            right, bottom = (box.right() + 1) / scale - 1, (box.bottom() + 1) / scale - 1
            full = self._rectangle(round(left), round(top), round(right), round(bottom))
            shape = self._predictor(image, full)
            points = np.array(
                [(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)], np.float32
            )
            faces.append(Face(_clipped_box(left, top, right, bottom, w, h), float(score), points))
        return sorted(faces, key=lambda face: -face.box[2] * face.box[3])


def default_model_path() -> str:
    """Path of ``shape_predictor_68_face_landmarks.dat`` as ``face-recognition-models`` has it.

    Found without importing the package, whose ``__init__`` needs ``pkg_resources`` (gone
    from recent setuptools).
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"finding face landmarks needs dlib's 68-point model, which the package "
            f"face-recognition-models ships: {INSTALL_HINT}"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "models", MODEL_FILE)


_detectors = threading.local()


def detect(image: np.ndarray) -> list[Face]:
    """Faces in ``image`` (uint8[H, W, 3] RGB) with their 68 landmarks, largest first.

    Uses this thread's ``FaceLandmarkDetector`` with the default model, loaded on first use.

    Raises:
      ImportError: the ``[landmarks]`` extra is not installed (the message says how).
    """
    if not hasattr(_detectors, "detector"):
        _detectors.detector = FaceLandmarkDetector()
    return _detectors.detector(image)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8[H, W, 3] RGB, got {image.dtype}{list(image.shape)}")
    return np.ascontiguousarray(image)  # dlib reads the buffer as it lies


def _clipped_box(left, top, right, bottom, w, h) -> tuple[int, int, int, int]:
    x0, y0 = max(0, round(left)), max(0, round(top))
    x1, y1 = min(w, round(right) + 1), min(h, round(bottom) + 1)
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)
