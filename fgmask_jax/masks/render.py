"""Face masks drawn onto a photo from its 68 landmarks (iBUG-68 order, as in FG-NET's .pts).

``render_mask(image, landmarks, kind, color, seed)`` returns a copy of the image with a mask
over the nose and mouth: its top edge crosses the nose between landmarks 28 and 29 and runs
out to the cheeks, its lower edge follows the jaw (landmarks 1..15) a little outside it and
under the chin. Four kinds: ``surgical`` (horizontal pleats, ear loops), ``n95`` (a rounded
cup with radial shading and head straps), ``kn95`` (a vertical fold along the nose-chin line,
welded rim, ear loops) and ``cloth`` (a printed pattern: dots, stripes or checks); their
shading and prints are drawn by ``texture.py``.

The mask takes its light from the face it covers: its colour is multiplied by the smoothed
luminance of the covered region relative to that region's mean, so a face lit from the left
gets a mask lit from the left. Outlines are anti-aliased (polygons filled with sub-pixel
precision and ``LINE_AA``). All the work happens in the mask's bounding box: a 128x128 face
takes about a millisecond.

Geometry lives in a face frame: origin at the top of the mask on the nose, ``s`` along the
line from landmark 0 to 16 (the face's right ear to its left ear), ``t`` perpendicular to it
towards the chin, both in pixels. Tilted faces get tilted masks.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from fgmask_jax.masks.texture import LUMA, kind_texture

MASK_KINDS = ("surgical", "n95", "kn95", "cloth")

# RGB palettes: the colours these masks are commonly sold in.
MASK_COLORS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "surgical": (
        (128, 178, 218),  # hospital blue
        (236, 238, 240),  # white
        (140, 198, 178),  # mint green
        (236, 176, 196),  # pink
        (48, 48, 54),  # black
    ),
    "n95": (
        (238, 236, 228),  # white
        (214, 206, 188),  # beige
        (168, 170, 174),  # grey
        (92, 136, 184),  # blue
    ),
    "kn95": (
        (242, 242, 242),  # white
        (38, 38, 42),  # black
        (150, 152, 158),  # grey
        (232, 170, 188),  # pink
        (60, 74, 110),  # navy
    ),
    "cloth": (
        (40, 55, 95),  # navy
        (32, 32, 34),  # black
        (165, 42, 50),  # red
        (86, 116, 156),  # denim
        (110, 120, 70),  # olive
        (206, 186, 152),  # beige
        (106, 72, 132),  # purple
    ),
}

# Top-edge profile exponent per kind: 1 is a pointed tent over the nose (KN95's fold),
# 2 a rounded arch (N95's cup).
_TOP_EDGE_POWER = {"surgical": 1.6, "n95": 2.0, "kn95": 1.1, "cloth": 1.7}
_SUBPIXEL_BITS = 4  # cv2 drawing with 1/16 pixel precision


class LandmarkError(ValueError):
    """Landmarks that cannot place a mask: wrong shape, non-finite, or off the image."""


@dataclasses.dataclass(frozen=True)
class _Frame:
    """The face frame: ``origin`` float[2] (the mask's top on the nose), unit axes float[2]."""

    origin: np.ndarray
    s_axis: np.ndarray  # from the face's right ear (landmark 0) to its left ear (16)
    t_axis: np.ndarray  # perpendicular, towards the chin
    width: float  # distance from landmark 0 to 16, pixels

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        """float[N, 2] image (x, y) -> float[N, 2] frame (s, t)."""
        d = points - self.origin
        return np.stack([d @ self.s_axis, d @ self.t_axis], axis=-1)

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """float[N, 2] frame (s, t) -> float[N, 2] image (x, y)."""
        return self.origin + points[:, :1] * self.s_axis + points[:, 1:] * self.t_axis


@dataclasses.dataclass(frozen=True)
class _Shape:
    """A mask's outline and the measures its shading needs, in frame coordinates."""

    outline: np.ndarray  # float[N, 2] (s, t): jaw from landmark 1 to 15, then the top edge
    s_right: float  # s of the mask's side on the face's right (negative)
    s_left: float  # s of the side on the face's left (positive)
    t_bottom: float  # lowest t of the outline, under the chin
    chin: np.ndarray  # float[2] (s, t) of landmark 8


def mask_color(kind: str, seed: int = 0) -> tuple[int, int, int]:
    """The colour ``render_mask`` uses for ``kind`` and ``seed`` when given ``color=None``."""
    _check_kind(kind)
    palette = MASK_COLORS[kind]
    return palette[int(np.random.default_rng([_check_seed(seed), 0]).integers(len(palette)))]


def render_mask(
    image: np.ndarray,
    landmarks: np.ndarray,
    kind: str = "surgical",
    color: tuple[int, int, int] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """A copy of ``image`` with a face mask drawn over nose, mouth and chin.

    Args:
      image: uint8[H, W, 3] RGB. Not modified.
      landmarks: float[68, 2] ``(x, y)`` pixel coordinates in iBUG-68 order (0-16 jaw from
        the face's right ear to its left ear, 17-26 brows, 27-30 nose bridge, 31-35 nostrils,
        36-47 eyes, 48-67 mouth), the order of FG-NET's .pts files.
      kind: one of MASK_KINDS.
      color: RGB of the mask; None picks one from MASK_COLORS[kind] by ``seed``.
      seed: int >= 0; the colour (when None), pattern, pleat phase and fabric grain. The
        same arguments always give the same image.

    Returns:
      uint8[H, W, 3], the masked image.

    Raises:
      LandmarkError: landmarks not float[68, 2], not finite, mostly outside the image, or
        not in iBUG-68 order (jaw points 1 and 15 on one side of the nose).
      ValueError: a bad image, kind, colour or seed.
    """
    _check_image(image)
    _check_kind(kind)
    rgb = mask_color(kind, seed) if color is None else _check_color(color)
    points = _check_landmarks(landmarks, image.shape[:2])
    rng = np.random.default_rng([_check_seed(seed), 1 + MASK_KINDS.index(kind)])
    frame, shape, outline = _outline(points, kind)
    straps = _straps(points, frame, shape, kind)
    x0, y0, x1, y1 = _region(np.concatenate([outline, *straps]), image.shape[:2], frame.width)
    out = image.copy()
    if x1 <= x0 or y1 <= y0:
        return out
    region = image[y0:y1, x0:x1].astype(np.float32)
    origin = np.array([x0, y0], dtype=np.float64)
    body = _fill(outline - origin, region.shape[:2])
    light = _face_light(region, body, sigma=0.1 * frame.width)
    s, t = _frame_grid(frame, x0, y0, region.shape[:2])
    shade, paint = kind_texture(
        kind, s, t, shape, body, frame.width, np.asarray(rgb, np.float32), rng
    )
    grain = 1.0 + 0.025 * rng.standard_normal(region.shape[:2], dtype=np.float32)
    mask_rgb = paint * (shade * grain * light)[..., None]
    if straps:
        strap_alpha = _draw_lines([p - origin for p in straps], region.shape[:2], frame.width)
        strap_rgb = _strap_color(kind, np.asarray(rgb, np.float32)) * light[..., None]
        region += (strap_rgb - region) * strap_alpha[..., None]
    region += (mask_rgb - region) * body[..., None]
    out[y0:y1, x0:x1] = np.clip(region + 0.5, 0, 255).astype(np.uint8)
    return out


def mask_region(landmarks: np.ndarray, image_hw: tuple[int, int],
                kind: str = "surgical") -> np.ndarray:
    """bool[H, W]: the pixels that `render_mask` covers (at least half) with the mask's
    body for these landmarks and ``kind`` (not its loops or straps).

    Where a face has no mask, it says where one of ``kind`` would sit: e.g. to measure
    what a model looks at on the same part of an unmasked face.

    Raises:
      LandmarkError, ValueError: as `render_mask`.
    """
    _check_kind(kind)
    points = _check_landmarks(landmarks, image_hw)
    return _fill(_outline(points, kind)[2], image_hw) >= 0.5


def _outline(points: np.ndarray, kind: str) -> tuple[_Frame, _Shape, np.ndarray]:
    """The face frame, the mask's shape in it, and its outline float[N, 2] in pixels."""
    frame = _face_frame(points)
    shape = _mask_shape(points, frame, kind)
    return frame, shape, frame.to_image(shape.outline)


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(
            f"image must be a uint8 numpy array, got {type(image).__name__} "
            f"{getattr(image, 'dtype', '')}: convert with np.asarray(image, np.uint8)"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image must be uint8[H, W, 3] RGB, got shape {image.shape}: "
            "make grayscale images RGB first (np.repeat(gray[..., None], 3, axis=-1))"
        )


def _check_kind(kind: str) -> None:
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}: expected one of {', '.join(MASK_KINDS)}")


def _check_seed(seed: int) -> int:
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def _check_color(color: tuple[int, int, int]) -> tuple[int, int, int]:
    values = tuple(color)
    if len(values) != 3 or not all(int(v) == v and 0 <= v <= 255 for v in values):
        raise ValueError(f"color must be three integers 0..255 (R, G, B), got {color!r}")
    return tuple(int(v) for v in values)


def _check_landmarks(landmarks: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """float[68, 2] (x, y) -> float64[68, 2], or LandmarkError saying what is wrong."""
    points = np.asarray(landmarks)
    if points.shape != (68, 2):
        raise LandmarkError(
            f"landmarks must be float[68, 2] (x, y) in iBUG-68 order, got shape {points.shape}"
        )
    if not np.issubdtype(points.dtype, np.number):
        raise LandmarkError(f"landmarks must be numbers, got dtype {points.dtype}")
    points = points.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(points).all(axis=1))
    if bad.size:
        raise LandmarkError(f"landmarks {bad.tolist()} are not finite (NaN or infinite)")
    height, width = image_hw
    inside = (
        (points[:, 0] >= 0)
        & (points[:, 0] <= width - 1)
        & (points[:, 1] >= 0)
        & (points[:, 1] <= height - 1)
    )
    if inside.sum() < 34:
        raise LandmarkError(
            f"{68 - int(inside.sum())} of 68 landmarks lie outside the {width}x{height} image: "
            "are they (x, y) pixel coordinates of this image (not (row, col), not normalised)?"
        )
    return points


def _face_frame(points: np.ndarray) -> _Frame:
    """The face frame of float64[68, 2] landmarks (see the module docstring)."""
    across = points[16] - points[0]
    width = float(np.hypot(*across))
    if width < 4.0:
        raise LandmarkError(
            f"landmarks 0 and 16 (the ears) are {width:.1f} px apart: the face is too small "
            "or the landmarks collapse to a point"
        )
    s_axis = across / width
    t_axis = np.array([-s_axis[1], s_axis[0]])
    if (points[8] - points[27]) @ t_axis < 0:  # point towards the chin even in mirrored frames
        t_axis = -t_axis
    origin = points[28] + 0.35 * (points[29] - points[28])
    return _Frame(origin, s_axis, t_axis, width)


def _mask_shape(points: np.ndarray, frame: _Frame, kind: str) -> _Shape:
    """The outline: jaw 1..15 pushed out and under the chin, closed by a top edge over the nose."""
    jaw = points[1:16]
    chin = frame.to_frame(points[8:9])[0]
    if chin[1] < 0.1 * frame.width:
        raise LandmarkError(
            f"the chin (landmark 8) is {chin[1]:.1f} px below the nose (28-29), for a face "
            f"{frame.width:.0f} px wide: are the landmarks in iBUG-68 order?"
        )
    # Out from the nose tip by 3% of the face width, plus a drop that peaks under the chin.
    away = jaw - points[30]
    away /= np.maximum(np.hypot(away[:, 0], away[:, 1]), 1e-6)[:, None]
    drop = 0.06 * chin[1] * np.exp(-(((np.arange(1, 16) - 8) / 2.5) ** 2))
    jaw = jaw + 0.03 * frame.width * away + drop[:, None] * frame.t_axis
    jaw = frame.to_frame(jaw)
    jaw[:, 1] = np.maximum(jaw[:, 1], 0.0)  # the sides never rise above the nose line
    (s_right, t_right), (s_left, t_left) = jaw[0], jaw[-1]
    if not s_right < 0 < s_left:
        raise LandmarkError(
            "jaw landmarks 1 and 15 are not on either side of the nose (27-30): are the "
            "landmarks in iBUG-68 order?"
        )
    power = _TOP_EDGE_POWER[kind]
    s_top = np.linspace(s_left, s_right, 23)[1:-1]
    t_top = np.where(
        s_top < 0,
        t_right * np.abs(s_top / s_right) ** power,
        t_left * np.abs(s_top / s_left) ** power,
    )
    outline = np.concatenate([jaw, np.stack([s_top, t_top], axis=-1)])
    t_bottom = float(outline[:, 1].max())
    if kind == "n95":
        outline = _round_towards_ellipse(outline, s_right, s_left, t_bottom)
    return _Shape(outline, float(s_right), float(s_left), t_bottom, chin)


def _round_towards_ellipse(
    outline: np.ndarray, s_right: float, s_left: float, t_bottom: float
) -> np.ndarray:
    """float[N, 2] outline moved halfway to the ellipse in its box: an N95's rounded cup."""
    centre = np.array([(s_right + s_left) / 2, t_bottom / 2])
    radii = np.array([(s_left - s_right) / 2, t_bottom / 2])
    angle = np.arctan2(*((outline - centre) / radii)[:, ::-1].T)
    ellipse = centre + radii * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    return 0.5 * outline + 0.5 * ellipse


def _straps(points: np.ndarray, frame: _Frame, shape: _Shape, kind: str) -> list[np.ndarray]:
    """Ear loops (or an N95's head straps) as float[K, 2] image polylines, two per side."""
    jaw = shape.outline[:15]
    straps = []
    for side, ear_index in ((0, 0), (1, 16)):
        outward = -1.0 if side == 0 else 1.0
        ear = frame.to_frame(points[ear_index : ear_index + 1])[0]
        if kind == "n95":
            # Head straps leave the cup's sides and run back round the head: the upper one
            # over the ear (landmark 0/16), the lower one under it, round the neck.
            upper_end = ear + frame.width * np.array([outward * 0.05, -0.08])
            lower_end = frame.to_frame(points[2:3] if side == 0 else points[14:15])[0]
            lower_end += frame.width * np.array([outward * 0.03, 0.02])
            for height, end in ((0.2, upper_end), (0.65, lower_end)):
                start = _side_point(jaw, side, height * shape.t_bottom)
                straps.append(frame.to_image(np.stack([start, end])))
            continue
        # A loop from the upper corner round behind the ear (just past landmark 0/16) and
        # back to a lower corner.
        upper = jaw[0] if side == 0 else jaw[-1]
        lower = jaw[3] if side == 0 else jaw[-4]
        behind = ear + np.array([outward * 0.08 * frame.width, 0.03 * frame.width])
        control = 2 * behind - 0.5 * (upper + lower)
        u = np.linspace(0.0, 1.0, 16)[:, None]
        curve = (1 - u) ** 2 * upper + 2 * u * (1 - u) * control + u**2 * lower
        straps.append(frame.to_image(curve))
    return straps


def _side_point(jaw: np.ndarray, side: int, t: float) -> np.ndarray:
    """The point of the jaw outline float[15, 2] on one side (0 right, 1 left) at height t."""
    half = jaw[:8] if side == 0 else jaw[7:][::-1]  # from the top corner down to the chin
    t = float(np.clip(t, half[0, 1], half[-1, 1]))
    return np.array([np.interp(t, half[:, 1], half[:, 0]), t])


def _strap_color(kind: str, rgb: np.ndarray) -> np.ndarray:
    """Loops are paler than the mask (white elastic), cloth ties darker, N95 straps greyer."""
    if kind == "cloth":
        return 0.8 * rgb
    if kind == "n95":
        return 0.6 * rgb + 0.4 * np.array([200.0, 190.0, 120.0], np.float32)
    return 0.5 * rgb + 0.5 * 235.0


def _region(points: np.ndarray, image_hw: tuple[int, int], width: float):
    """Integer box (x0, y0, x1, y1) around float[N, 2] points, with a margin, on the image."""
    margin = 2 + int(0.02 * width)
    x0, y0 = np.floor(points.min(axis=0)).astype(int) - margin
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + margin + 1
    height, width_px = image_hw
    return max(x0, 0), max(y0, 0), min(x1, width_px), min(y1, height)


def _fixed_point(points: np.ndarray) -> np.ndarray:
    return np.round(points * (1 << _SUBPIXEL_BITS)).astype(np.int32)


def _fill(polygon: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Anti-aliased coverage float32[h, w] in [0, 1] of a float[N, 2] (x, y) polygon."""
    canvas = np.zeros(hw, np.uint8)
    cv2.fillPoly(canvas, [_fixed_point(polygon)], 255, cv2.LINE_AA, _SUBPIXEL_BITS)
    return canvas.astype(np.float32) * (1.0 / 255.0)


def _draw_lines(lines: list[np.ndarray], hw: tuple[int, int], face_width: float) -> np.ndarray:
    """Anti-aliased coverage float32[h, w] of open float[K, 2] polylines."""
    canvas = np.zeros(hw, np.uint8)
    thickness = max(1, round(face_width / 60))
    lines = [_fixed_point(line) for line in lines]
    cv2.polylines(canvas, lines, False, 255, thickness, cv2.LINE_AA, _SUBPIXEL_BITS)
    return canvas.astype(np.float32) * (1.0 / 255.0)


def _face_light(region: np.ndarray, body: np.ndarray, sigma: float) -> np.ndarray:
    """Smoothed luminance of the covered face relative to its mean: float32[h, w], about 1.

    A weighted blur (the mask's coverage, plus a little everywhere so that loops outside the
    mask get light too) keeps the background beside the jaw from bleeding in.
    """
    luma = region @ LUMA
    weight = body + 0.05
    smooth = _blur(luma * weight, sigma) / _blur(weight, sigma)
    mean = float((luma * body).sum() / max(body.sum(), 1e-6))
    # The offset keeps near-black faces from dividing by zero and from wild ratios.
    return np.clip((smooth + 10.0) / (mean + 10.0), 0.3, 1.8)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of float32[h, w]; wide blurs run on a smaller copy (same look, 1/f^2 cost)."""
    factor = max(1, int(sigma / 4))
    if factor == 1:
        return cv2.GaussianBlur(image, (0, 0), sigma)
    h, w = image.shape
    small = cv2.resize(image, (-(-w // factor), -(-h // factor)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / factor)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _frame_grid(frame: _Frame, x0: int, y0: int, hw: tuple[int, int]):
    """Frame coordinates (s, t) of each pixel of a box at (x0, y0): two float32[h, w]."""
    # float32 throughout: numpy scalars of float64 would promote every array after this.
    x = np.arange(hw[1], dtype=np.float32) + np.float32(x0 - frame.origin[0])
    y = np.arange(hw[0], dtype=np.float32)[:, None] + np.float32(y0 - frame.origin[1])
    s = x * np.float32(frame.s_axis[0]) + y * np.float32(frame.s_axis[1])
    t = x * np.float32(frame.t_axis[0]) + y * np.float32(frame.t_axis[1])
    return s, t
