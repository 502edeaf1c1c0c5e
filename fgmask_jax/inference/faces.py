"""Finding faces in a photo and framing each as the training images frame a face.

The detector: OpenCV's LBP frontal-face cascade as scikit-image ships it (BSD-3-Clause),
run by skimage.feature.Cascade (OpenCV 5 no longer has CascadeClassifier, and its
Python wheels no longer carry cascade files). The cascade accepts or rejects each
search window (a position and a size); the windows it accepts are grouped here, in a
fixed order, so that the same photo always gives the same faces. A face's score is the
number of windows in its group: a face seen at more positions and sizes is more likely
a face (OpenCV calls this the number of neighbours).
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

DETECT_SIDE = 400  # the detector sees the photo with its longer side at most this long
DETECT_MIN_FACE = 24  # pixels at that scale: the cascade's window
MIN_SCORE = 4  # windows that must agree on a face
# Pixels of the photo: narrower faces are not predicted (too few pixels to tell age or
# expression, and most of the cascade's false finds are this small).
MIN_FACE = 48
# Framing: the training images show the whole head with some background. On the
# synthetic training images the image side is 1.9 detector box widths (median) and the
# image centre 0.08 box widths above the box centre; a crop repeats that framing.
FACE_CROP_SCALE = 1.9
FACE_CROP_SHIFT = 0.08


@dataclasses.dataclass(frozen=True)
class Box:
    """A face's box in the photo's pixels (after EXIF rotation): x, y of its top left corner;
    ``score``: how many of the detector's windows found it (0 for a box not detected)."""

    x: int
    y: int
    width: int
    height: int
    score: int = 0


_detectors = threading.local()


def cascade():
    """This thread's face cascade (skimage's Cascade keeps state while it detects).

    Raises ImportError, saying how to install it, without scikit-image.
    """
    if not hasattr(_detectors, "cascade"):
        try:
            from skimage import data as skimage_data
            from skimage.feature import Cascade
        except ImportError:
            raise ImportError(
                "face detection needs scikit-image: pip install -e '.[faces]'"
            ) from None
        _detectors.cascade = Cascade(skimage_data.lbp_frontal_face_cascade_filename())
    return _detectors.cascade


def detect_faces(image: np.ndarray) -> list[Box]:
    """Frontal faces in ``image`` (uint8[H, W, 3] RGB), largest first, none overlapping much.

    Faces narrower than ``DETECT_MIN_FACE`` pixels once the photo is shrunk to
    ``DETECT_SIDE`` pixels on its longer side are not found (in a 4000 px photo: 240 px).
    """
    import cv2

    h, w = image.shape[:2]
    scale = min(1.0, DETECT_SIDE / max(h, w))
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        gray = cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    gh, gw = gray.shape
    if min(gh, gw) < DETECT_MIN_FACE:
        return []
    # Every accepted window, ungrouped (no two windows overlap by more than all of the
    # smaller one): the cascade's threads report them in no fixed order.
    windows = cascade().detect_multi_scale(
        img=gray, scale_factor=1.1, step_ratio=1, min_size=(DETECT_MIN_FACE, DETECT_MIN_FACE),
        max_size=(gh, gw), min_neighbor_number=1, intersection_score_threshold=1.0,
    )
    groups = _group(sorted((d["width"], d["r"], d["c"]) for d in windows))
    boxes = sorted((b for b in groups if b[4] >= MIN_SCORE), key=lambda b: (-b[2] * b[3], -b[4]))
    kept: list[tuple] = []
    for b in boxes:  # a box mostly inside a larger kept one is the same face
        if all(_overlap(b, k) < 0.3 * b[2] * b[3] for k in kept):
            kept.append(b)
    return [Box(round(x / scale), round(y / scale), round(bw / scale), round(bh / scale), n)
            for x, y, bw, bh, n in kept]


def _group(windows: list[tuple[int, int, int]]) -> list[tuple[int, int, int, int, int]]:
    """Square windows (side, row, col), in order -> groups (x, y, side, side, windows): each
    window joins the group whose mean box covers most of it (at least half), else starts one."""
    sums: list[list[int]] = []  # per group: sum of x, of y, of sides, count
    for side, y, x in windows:
        best, best_k = 0.5, None
        for k, (sx, sy, ss, n) in enumerate(sums):
            mean = (sx // n, sy // n, ss // n, ss // n)
            score = _overlap((x, y, side, side), mean) / min(side, mean[2]) ** 2
            if score > best:
                best, best_k = score, k
        if best_k is None:
            sums.append([x, y, side, 1])
        else:
            g = sums[best_k]
            g[0], g[1], g[2], g[3] = g[0] + x, g[1] + y, g[2] + side, g[3] + 1
    return [(sx // n, sy // n, ss // n, ss // n, n) for sx, sy, ss, n in sums]


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
