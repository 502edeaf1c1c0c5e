"""Drawing a face: an anti-aliased canvas in the canonical face frame (`geometry`), then body,
face, eyes, brows, nose, mouth, hair, light and background, and the photo's nuisances."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from fgmask_jax.data.synthetic.geometry import (
    _HAIR_COLORS,
    FaceParams,
    _geometry,
    _hair_geometry,
    _mix,
)

MIN_IMAGE_SIZE = 32
# Faces are drawn at least this large and then resized down, so that thin lines
# (lids, wrinkles) keep their weight at small sizes instead of vanishing.
RENDER_SIZE = 128

_SHIFT = 4  # cv2 drawing with 4 fractional bits: sub-pixel placement
_SCALE = float(1 << _SHIFT)
_AA = cv2.LINE_AA
_GREY_HAIR = np.array([205, 203, 200], np.float32)


class _Canvas:
    """A premultiplied RGBA layer that shapes are painted onto with anti-aliased coverage."""

    def __init__(self, size: int, to_pixels: Callable, unit: float, roll: float):
        self.size, self.to_pixels, self.unit = size, to_pixels, unit  # unit: pixels per 1.0
        self.roll = roll  # degrees, turns ellipses with the head
        self.rgb = np.zeros((size, size, 3), np.float32)
        self.alpha = np.zeros((size, size), np.float32)
        self._cov = np.zeros((size, size), np.uint8)

    def _fixed(self, uv, z) -> np.ndarray:
        return np.round(self.to_pixels(uv, z) * _SCALE).astype(np.int32).reshape(-1, 1, 2)

    def polygon(self, uv, z=0.0, blur=0.0) -> np.ndarray:
        """Coverage float32[S, S] in 0..1 of the filled polygon ``uv`` (canonical units)."""
        self._cov.fill(0)
        cv2.fillPoly(self._cov, [self._fixed(uv, z)], 255, _AA, _SHIFT)
        return self._finish(blur)

    def line(self, uv, width, z=0.0, blur=0.0) -> np.ndarray:
        """Coverage of an open polyline ``width`` canonical units wide (thinner than a
        pixel: drawn one pixel wide and fainter)."""
        self._cov.fill(0)
        px = width * self.unit
        cv2.polylines(self._cov, [self._fixed(uv, z)], False, 255, max(1, round(px)), _AA, _SHIFT)
        return self._finish(blur) * min(1.0, px)

    def ellipse(self, center, axes, z=0.0, blur=0.0) -> np.ndarray:
        """Coverage of an ellipse with canonical ``center`` and half-axes, turned with the head."""
        self._cov.fill(0)
        c = self._fixed(np.asarray(center, np.float64), z).reshape(2)
        ax = np.maximum(np.round(np.asarray(axes) * self.unit * _SCALE), 1).astype(int)
        cv2.ellipse(
            self._cov,
            (int(c[0]), int(c[1])),
            (int(ax[0]), int(ax[1])),
            self.roll,
            0,
            360,
            255,
            -1,
            _AA,
            _SHIFT,
        )
        return self._finish(blur)

    def _finish(self, blur: float) -> np.ndarray:
        cov = self._cov.astype(np.float32) * (1.0 / 255.0)
        if blur > 0:
            cov = cv2.GaussianBlur(cov, (0, 0), max(blur * self.unit, 0.3))
        return cov

    def paint(self, cov: np.ndarray, color, opacity: float = 1.0) -> None:
        """Paints ``color`` (float[3] or float32[S, S, 3]) over the layer where ``cov`` says."""
        if opacity <= 0:
            return
        # Only the window the shape touches: most shapes are small, and this is the
        # inner loop of the whole generator.
        x, y, w, h = cv2.boundingRect((cov > 1e-3).view(np.uint8))
        if w == 0:
            return
        window = (slice(y, y + h), slice(x, x + w))
        a = cov[window] * np.float32(opacity)
        color = np.asarray(color, np.float32)
        if color.ndim == 3:
            color = color[window]
        rgb, alpha = self.rgb[window], self.alpha[window]
        rgb += (color - rgb) * a[..., None]
        alpha += (1.0 - alpha) * a


def _pixel_transform(p: FaceParams, size: int) -> Callable:
    """Canonical (u, v) and depth z -> float[N, 2] pixels: yaw/pitch, scale, roll, shift."""
    center = np.array(p.center) * size
    unit = p.scale * size
    c, s = np.cos(np.deg2rad(p.roll)), np.sin(np.deg2rad(p.roll))
    rot = np.array([[c, -s], [s, c]]) * unit

    def to_pixels(uv, z=0.0):
        uv = np.array(uv, np.float64).reshape(-1, 2)
        z = np.asarray(z, np.float64).reshape(-1)
        uv[:, 0] += 0.1 * p.yaw * z
        uv[:, 1] += 0.06 * p.pitch * z
        return center + uv @ rot.T

    return to_pixels


def _hair_color(p: FaceParams, mature: float) -> np.ndarray:
    """A person's hair colour at this age: lighter in childhood, greying from the onset."""
    sub = p.subject
    hair = _mix(sub.hair_color, np.maximum(sub.hair_color, _HAIR_COLORS[3]), 0.5 * (1 - mature))
    grey = min(max((p.age - sub.grey_onset) / 25.0, 0.0) * sub.grey_rate, 0.92)
    return _mix(hair, _GREY_HAIR, grey)


def _hair_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32[S, S, 1] multiplicative streaks along the strands (top to bottom)."""
    streaks = rng.normal(0, 1, (6, max(size // 3, 4))).astype(np.float32)
    streaks = cv2.resize(streaks, (size, size), interpolation=cv2.INTER_LINEAR)
    return (1.0 + 0.16 * streaks)[..., None]


def _draw_body(cv: _Canvas, g: dict, p: FaceParams, skin: np.ndarray, hair: np.ndarray) -> None:
    """Hair behind the head (long hair), clothes, neck and ears."""
    sub, w, v_mid, v_eye = p.subject, g["width"], g["v_mid"], g["v_eye"]
    vol, length = g["hair_volume"], p.hair_length
    if length > v_eye + 0.1:
        t = np.linspace(np.pi, 2 * np.pi, 30)
        top = np.stack([(w + vol) * np.cos(t), v_mid + (v_mid + 1 + 1.2 * vol) * np.sin(t)], 1)
        flare = w + vol + 0.14 * (length - v_mid)
        sides = [
            [flare, length - 0.1],
            [0.6 * flare, length + 0.05],
            [-0.6 * flare, length + 0.05],
            [-flare, length - 0.1],
        ]
        cv.paint(cv.polygon(np.concatenate([top, sides]), blur=0.01), hair * 0.8)
    neck = w * _mix(0.5, 0.55, g["mature"]) * (1 + 0.25 * g["sex"])
    cv.paint(cv.ellipse((0, 2.05), (w * 2.3, 0.8)), sub.clothes)
    cv.paint(
        cv.polygon(
            [[-neck, v_eye + 0.3], [neck, v_eye + 0.3], [neck * 1.1, 1.75], [-neck * 1.1, 1.75]]
        ),
        skin * 0.9,
    )
    cv.paint(cv.ellipse((0, 1.02), (neck * 1.2, 0.16), blur=0.05), skin * 0.55, 0.7)
    for sd in (-1, 1):
        ear = (sd * (w - 0.01), v_eye + 0.12 * g["lower"])
        cv.paint(cv.ellipse(ear, (0.1, 0.2), z=-0.8), skin * 0.93)
        cv.paint(
            cv.ellipse((ear[0] + sd * 0.025, ear[1]), (0.045, 0.12), z=-0.8, blur=0.015),
            skin * 0.7,
            0.6,
        )


def _draw_face(cv: _Canvas, g: dict, p: FaceParams, skin: np.ndarray) -> None:
    """Face, cheek colour, eye sockets and the wrinkles of age and expression."""
    w, v_eye, eye_x, eye_w = g["width"], g["v_eye"], g["eye_x"], g["eye_w"]
    ageing, happy, unhappy = g["ageing"] * p.subject.wrinkling, g["happy"], g["unhappy"]
    cv.paint(cv.polygon(g["contour"]), skin)
    blush = skin * np.array([1.05, 0.82, 0.8], np.float32)
    for sd in (-1, 1):
        cheek = (sd * eye_x * 1.05, v_eye + 0.32 * g["lower"] - 0.05 * happy)
        cv.paint(
            cv.ellipse(cheek, (0.16, 0.11), z=0.5, blur=0.06),
            blush,
            0.15 + 0.2 * (1 - g["mature"]) + 0.25 * happy,
        )
        cv.paint(
            cv.ellipse((sd * eye_x, v_eye - 0.03), (eye_w * 1.5, eye_w * 0.95), z=0.5, blur=0.05),
            skin * 0.72,
            0.22 + 0.2 * ageing,
        )
    wrinkle = skin * 0.6
    # Forehead lines: with age, and a little when the brows go up in a smile.
    lines = 0.65 * ageing + 0.15 * happy * g["mature"]
    top, hairline = g["brow_top"] - 0.06, g["hairline"]
    for i in range(3):
        v0 = top - (i + 1) * 0.065
        if v0 < hairline + 0.04:
            break
        u = np.linspace(-0.42 * w, 0.42 * w, 12)
        v = v0 - 0.03 * (1 - (u / (0.42 * w)) ** 2) + 0.006 * np.sin(9 * u + i)
        cv.paint(
            cv.line(np.stack([u, v], 1), 0.012, z=0.3, blur=0.006), wrinkle, lines * (1 - 0.2 * i)
        )
    # Frown furrow between the brows: anger, and the lasting line of older faces.
    furrow = 0.75 * unhappy + 0.3 * ageing
    v_in = g["brow_v"][0]
    for sd in (-1, 1):
        u0 = sd * (0.035 - 0.01 * unhappy)
        cv.paint(
            cv.line([[u0, v_in - 0.07], [u0 * 0.8, v_in + 0.06]], 0.013, z=0.7, blur=0.006),
            wrinkle,
            furrow,
        )
    cv.paint(
        cv.line([[-0.05, v_in + 0.085], [0.05, v_in + 0.085]], 0.01, z=0.8, blur=0.006),
        wrinkle,
        0.5 * unhappy,
    )


def _draw_eyes(cv: _Canvas, g: dict, p: FaceParams, skin: np.ndarray, hair: np.ndarray) -> None:
    """Eyes with iris, lids and lashes; bags, cheek raise and crow's feet below and beside."""
    sub, eye_w, mature = p.subject, g["eye_w"], g["mature"]
    happy, ageing = g["happy"], g["ageing"] * sub.wrinkling
    lash = np.minimum(hair, 60.0) * 0.5
    for (up, lo), sd in zip(g["eyes"], (-1, 1), strict=True):
        eye = cv.polygon(np.concatenate([up, lo[::-1]]), z=0.6)
        cv.paint(eye, np.array([232, 226, 220], np.float32))
        center = np.array([up[:, 0].mean() + p.gaze[0] * eye_w, g["v_eye"] + p.gaze[1] * eye_w])
        radius = eye_w * _mix(0.58, 0.5, mature)
        cv.paint(cv.ellipse(center, (radius, radius), z=0.6) * eye, sub.eye_color)
        cv.paint(cv.ellipse(center, (radius * 0.45, radius * 0.45), z=0.6) * eye, (12, 10, 10))
        glint = center + [0.3 * radius, -0.35 * radius]
        cv.paint(
            cv.ellipse(glint, (radius * 0.18, radius * 0.18), z=0.6) * eye, (250, 250, 250), 0.8
        )
        cv.paint(cv.line(up, 0.03, z=0.6, blur=0.012) * eye, skin * 0.5, 0.5)  # lid shadow
        cv.paint(cv.line(up, 0.016 + 0.022 * sub.eyeliner, z=0.6), lash, 0.9)
        cv.paint(cv.line(lo, 0.01, z=0.6), skin * 0.55, 0.45 + 0.3 * sub.eyeliner)
        crease = up + [0, -0.35 * g["open_up"] - 0.025 - 0.02 * ageing]
        cv.paint(cv.line(crease[2:-2], 0.011, z=0.6, blur=0.006), skin * 0.6, 0.15 + 0.35 * mature)
        # Bags under the eyes grow from the twenties on.
        bags = 0.6 * ageing + 0.1 * max(p.age - 18, 0) / 40.0
        for k, drop in enumerate((0.045, 0.085)):
            bag = lo[3:-2] + [0, drop + 0.01 * ageing]
            cv.paint(cv.line(bag, 0.012, z=0.55, blur=0.008), skin * 0.6, bags * (1 - 0.4 * k))
        # A smile's cheeks push up a crease under the lower lid and light the cheek.
        raise_ = lo[2:-1] + [0, 0.05 + 0.3 * g["open_lo"]]
        cv.paint(cv.line(raise_, 0.014, z=0.55, blur=0.01), skin * 0.62, 0.65 * happy)
        cv.paint(
            cv.ellipse(raise_.mean(0) + [0, 0.06], (eye_w * 1.1, 0.06), z=0.5, blur=0.03),
            np.minimum(skin * 1.15, 255),
            0.35 * happy,
        )
        corner = up[0] + [sd * 0.03, 0.0]
        feet = min(0.7 * happy * (0.3 + 0.7 * mature) + 0.75 * ageing, 0.9)
        for angle in (-0.45, 0.0, 0.45):
            end = corner + 0.09 * np.array([sd * np.cos(angle), np.sin(angle)])
            cv.paint(cv.line([corner, end], 0.01, z=0.5, blur=0.005), skin * 0.58, feet)


def _draw_brows_nose_mouth(
    cv: _Canvas, g: dict, p: FaceParams, skin: np.ndarray, hair: np.ndarray
) -> None:
    """Brows (shape and colour), nose shading and lips."""
    brow_color = np.minimum(hair, np.maximum(hair * 0.6, 40.0))  # blond hair, darker brows
    u, v, th = g["brow_u"], g["brow_v"], g["brow_thick"]
    for sd in (-1, 1):
        poly = np.concatenate(
            [np.stack([sd * u, v - th / 2], 1), np.stack([sd * u, v + th / 2], 1)[::-1]]
        )
        cv.paint(cv.polygon(poly, z=0.6, blur=0.006), brow_color, _mix(0.45, 0.88, g["mature"]))
    lm = g["landmarks"]
    side = 1 if np.cos(p.light_angle) < 0 else -1  # the bridge side turned from the light
    bridge = lm[27:31] + [side * 0.05, 0]
    cv.paint(cv.line(bridge, 0.035, z=1.0, blur=0.02), skin * 0.7, 0.4)
    for sd in (-1, 1):
        cv.paint(
            cv.ellipse((sd * g["nose_w"] * 0.5, g["v_nostril"]), (0.035, 0.02), z=1.1, blur=0.008),
            skin * 0.35,
            0.8,
        )
    lips = skin * np.array([0.85, 0.58, 0.58], np.float32)
    cv.paint(cv.polygon(lm[48:60], z=0.8, blur=0.005), lips, 0.85)
    cv.paint(cv.polygon(lm[60:68], z=0.8), (40, 20, 20), 0.9)
    cv.paint(cv.line(np.concatenate([lm[60:65], lm[[54]]]), 0.012, z=0.8), skin * 0.35, 0.7)


def _draw_front_hair(cv: _Canvas, g: dict, p: FaceParams, hair: np.ndarray) -> None:
    """The cap of hair above the hairline, and long locks falling beside the face."""
    w, v_mid, v_eye, vol = g["width"], g["v_mid"], g["v_eye"], g["hair_volume"]
    t = np.linspace(np.pi, 2 * np.pi, 40)
    outer = np.stack([(w + vol) * np.cos(t), v_mid + (v_mid + 1 + 1.2 * vol) * np.sin(t)], 1)
    outer = np.concatenate([[[-(w + vol), v_eye + 0.1]], outer, [[w + vol, v_eye + 0.1]]])
    curve = g["hairline_curve"]
    below = np.concatenate([curve, [[curve[-1, 0], 3.0], [curve[0, 0], 3.0]]])
    cap = cv.polygon(outer, blur=0.008) * (1.0 - cv.polygon(below, blur=0.01))
    cv.paint(cap, hair, 1.0 - 0.45 * g["recede"])
    length = p.hair_length
    if length > v_eye + 0.1:
        for sd in (-1, 1):
            cover = max(p.subject.lock_cover * (1.0 + 0.7 * p.subject.part * sd), 0.0)
            flare = w + vol + 0.14 * (length - v_mid)
            top = g["v_temple"] - 0.15
            lock = [  # tapers in from the temple, so it falls from under the cap
                [sd * (w - 0.3 * cover), top],
                [sd * (w - cover), 0.5 * (top + length)],
                [sd * (w - cover * 0.6), length - 0.05],
                [sd * flare, length - 0.1],
                [sd * (w + vol), top],
            ]
            cv.paint(cv.polygon(lock, blur=0.01), hair)


def _background(p: FaceParams, rng: np.random.Generator, size: int) -> np.ndarray:
    """float32[S, S, 3]: a linear or radial gradient, or a blotchy texture."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = p.bg_colors
    if p.background == "linear":
        t = (x - 0.5) * np.cos(p.bg_angle) + (y - 0.5) * np.sin(p.bg_angle) + 0.5
    elif p.background == "radial":
        t = np.hypot(x - 0.5 - 0.3 * np.cos(p.bg_angle), y - 0.5 - 0.3 * np.sin(p.bg_angle))
    else:
        cells = rng.uniform(0, 1, (5, 5)).astype(np.float32)
        t = cv2.resize(cells, (size, size), interpolation=cv2.INTER_CUBIC)
        t += rng.normal(0, 0.06, (size, size)).astype(np.float32)
    t = np.clip(t, 0, 1)[..., None]
    return c0 + (c1 - c0) * t


def _light(cv: _Canvas, p: FaceParams, g: dict) -> None:
    """Directional light across the head and a fall-off towards the face's edge."""
    size = cv.size
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = p.center[0] * size, p.center[1] * size
    unit = p.scale * size
    along = ((x - cx) * np.cos(p.light_angle) + (y - cy) * np.sin(p.light_angle)) / unit
    shade = 1.0 + p.light_strength * np.clip(along, -1.3, 1.3) * 0.6
    r2 = ((x - cx) / (unit * g["width"])) ** 2 + ((y - cy) / unit) ** 2
    shade *= 1.0 - 0.22 * np.clip(r2 - 0.35, 0.0, 1.0)
    cv.rgb *= shade[..., None]


def render_face(
    params: FaceParams, rng: np.random.Generator, image_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draws one unmasked face photo.

    Args:
      params: the photo (``sample_face_params``).
      rng: draws the per-pixel details (hair strands, textures, sensor noise).
      image_size: S, the side of the square image (>= ``MIN_IMAGE_SIZE``).
    Returns:
      (uint8[S, S, 3] RGB image, float32[68, 2] landmarks (x, y) in pixels, iBUG-68
      order: 0-16 jaw from the right ear to the left, 17-26 brows, 27-35 nose,
      36-47 eyes, 48-67 mouth).
    """
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size={image_size} is too small: use >= {MIN_IMAGE_SIZE}")
    size = max(image_size, RENDER_SIZE)
    to_pixels = _pixel_transform(params, size)
    cv = _Canvas(size, to_pixels, params.scale * size, params.roll)
    g = _geometry(params)
    _hair_geometry(g, params)
    skin = (params.subject.skin * params.skin_gain).clip(0, 255)
    hair = _hair_color(params, g["mature"])
    hair_field = hair * _hair_texture(rng, size)
    _draw_body(cv, g, params, skin, hair_field)
    _draw_face(cv, g, params, skin)
    _draw_eyes(cv, g, params, skin, hair)
    _draw_brows_nose_mouth(cv, g, params, skin, hair)
    _draw_front_hair(cv, g, params, hair_field)
    _light(cv, params, g)
    image = cv.rgb + _background(params, rng, size) * (1.0 - cv.alpha[..., None])
    image *= params.gain * params.color_cast
    image = cv2.GaussianBlur(image, (0, 0), params.blur)
    landmarks = to_pixels(g["landmarks"], g["depth"])
    if size != image_size:
        image = cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_AREA)
        landmarks = landmarks * (image_size / size)
    image += rng.normal(0, params.noise, image.shape).astype(np.float32)
    if params.grayscale:  # old photographs: FG-NET has many
        image[:] = image @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
    return image.clip(0, 255).round().astype(np.uint8), landmarks.astype(np.float32)
