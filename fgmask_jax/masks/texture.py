"""The look of each mask kind, drawn in the face frame of ``render.py``.

``kind_texture`` gives a mask its shading and paint: a surgical mask's pleats, an N95's cup
with its moulded seam, a KN95's fold and welded rim, a cloth mask's print (dots, stripes or
checks) and hem. Everything is float32 over the mask's bounding box.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # render imports this module: the shape is only named here
    from fgmask_jax.masks.render import _Shape

CLOTH_PATTERNS = ("dots", "stripes", "checks")
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # RGB -> luminance (BT.601)
_F32 = np.float32  # arrays stay float32: half the memory traffic of float64


def kind_texture(kind, s, t, shape: _Shape, body, face_width, rgb, rng):
    """The kind's look: shade float32[h, w] (about 1) and paint float32[h, w, 3] (RGB).

    ``s, t``: float32[h, w] frame coordinates of the pixels; ``body``: float32[h, w] coverage.
    """
    half_width = np.where(s < 0, np.float32(-shape.s_right), np.float32(shape.s_left))
    across = s / half_width  # -1 at the face's right side of the mask, +1 at its left
    down = t / shape.t_bottom  # 0 at the nose, 1 under the chin
    # Inside distance to the outline, in pixels: rims, seams and bindings.
    rim = cv2.distanceTransform((body > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
    # The mask wraps round the face: its sides turn away from the viewer.
    shade = 1.0 - 0.18 * np.abs(across) ** 3
    paint = np.broadcast_to(rgb, (*s.shape, 3))
    if kind == "surgical":
        shade *= _pleats(down, rng) * np.where(rim < 0.035 * face_width, _F32(0.93), _F32(1))
    elif kind == "n95":
        shade *= _cup(s, t, shape, rim, face_width)
    elif kind == "kn95":
        shade *= _fold(s, t, shape, rim, face_width)
    else:
        paint = _cloth_print(s, t, rgb, face_width, rng)
        shade *= np.where(rim < 0.03 * face_width, _F32(0.88), _F32(1))  # the hem
    return shade.astype(np.float32), paint


def _pleats(down: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Three horizontal pleats: a shadow under each fold, a highlight above it."""
    count = 3
    start = 0.22 + rng.uniform(-0.03, 0.03)
    phase = (down - start) / 0.62 * count
    inside = (phase > 0) & (phase < count)
    frac = phase - np.floor(phase)
    fold = 1.0 - 0.2 * np.exp(-((frac / 0.14) ** 2)) + 0.08 * np.exp(-(((1 - frac) / 0.12) ** 2))
    return np.where(inside, fold, 1.0)


def _cup(s, t, shape: _Shape, rim, face_width) -> np.ndarray:
    """An N95 cup: bright centre falling off radially, a moulded seam inside the rim."""
    centre_s = 0.5 * (shape.s_right + shape.s_left)
    radius_s = 0.5 * (shape.s_left - shape.s_right)
    r2 = ((s - centre_s) / radius_s) ** 2 + (
        (t - 0.5 * shape.t_bottom) / (0.5 * shape.t_bottom)
    ) ** 2
    seam_at = 0.06 * face_width
    seam = 0.16 * np.exp(-(((rim - seam_at) / max(0.6, 0.012 * face_width)) ** 2))
    nose_clip = (np.abs(s) < 0.18 * face_width) & (t < 0.07 * shape.t_bottom + 1.5)
    return (1.12 - 0.32 * r2 - seam) * np.where(nose_clip, _F32(0.82), _F32(1))


def _fold(s, t, shape: _Shape, rim, face_width) -> np.ndarray:
    """A KN95: two panels meeting in a ridge along the nose-chin line, a welded rim."""
    # The fold runs from the nose (s = 0) to the chin, so it follows a turned head.
    ridge_s = float(shape.chin[0]) * np.clip(t / float(shape.chin[1]), 0.0, 1.0)
    offset = s - ridge_s
    half = 0.5 * (shape.s_left - shape.s_right)
    line = max(0.6, 0.01 * face_width)  # the seam stays visible on small faces
    panels = 1.0 - 0.16 * np.abs(offset / half) ** 1.5
    ridge = 0.14 * np.exp(-((offset / (3.5 * line)) ** 2)) - 0.22 * np.exp(-((offset / line) ** 2))
    shade = panels + ridge
    # The welded rim: a band of embossed dots, computed only where the band is.
    weld = rim < 0.045 * face_width
    shade[weld] *= 0.9 + 0.06 * (np.sin(1.9 * s[weld]) * np.sin(1.9 * t[weld]) > 0)
    return shade


def _cloth_print(s, t, rgb: np.ndarray, face_width, rng) -> np.ndarray:
    """A printed fabric: float32[h, w, 3] paint with dots, stripes or checks (chosen by rng)."""
    pattern = CLOTH_PATTERNS[int(rng.integers(len(CLOTH_PATTERNS)))]
    period = face_width * rng.uniform(0.09, 0.14)
    u = s / period + rng.uniform(0, 1)
    v = t / period + rng.uniform(0, 1)
    if pattern == "dots":
        u = u + 0.5 * (np.floor(v) % 2)  # staggered rows
        distance = np.hypot(u - np.floor(u) - 0.5, v - np.floor(v) - 0.5) * period
        ink = np.clip(0.28 * period - distance + 0.5, 0.0, 1.0)
    elif pattern == "stripes":
        angle = float(rng.choice([0.0, math.pi / 4, -math.pi / 4]))
        ink = _stripe(u * math.sin(angle) + v * math.cos(angle), period)
    else:
        ink = 0.5 * (_stripe(u, period) + _stripe(v, period))
    # Light cloth gets a dark print, dark cloth a light one.
    ink_rgb = 0.45 * rgb if rgb @ LUMA > 128 else rgb + 0.6 * (245.0 - rgb)
    return rgb + ink[..., None] * (ink_rgb - rgb)


def _stripe(q: np.ndarray, period: float) -> np.ndarray:
    """Anti-aliased bands, half of each period wide: coverage float32 of a phase array."""
    return np.clip((0.25 - np.abs(q - np.floor(q) - 0.5)) * period + 0.5, 0.0, 1.0)
