"""What decides a face: the person (`Subject`), the photo (`FaceParams`) and the face's
canonical geometry (outline, features, the 68 landmarks, hairline)."""

from __future__ import annotations

import dataclasses

import numpy as np

from fgmask_jax.data import labels
from fgmask_jax.data.synthetic.sampling import _SUBJECT_STREAM

_SKIN_TONES = np.array(  # light .. dark, RGB
    [[241, 208, 188], [228, 184, 154], [204, 156, 118], [168, 118, 84], [118, 80, 56]],
    np.float32,
)
_HAIR_COLORS = np.array(  # black, dark brown, brown, light brown, blond, auburn
    [[26, 22, 20], [56, 40, 30], [96, 66, 42], [140, 104, 68], [196, 164, 108], [140, 66, 36]],
    np.float32,
)
_HAIR_P = np.array([0.3, 0.27, 0.18, 0.1, 0.09, 0.06])
_EYE_COLORS = np.array(  # dark brown, brown, hazel, green, blue, grey
    [[48, 32, 24], [92, 58, 32], [124, 96, 52], [86, 112, 72], [74, 112, 156], [112, 124, 132]],
    np.float32,
)
_EYE_P = np.array([0.3, 0.3, 0.12, 0.08, 0.14, 0.06])


# ----------------------------------------------------------------------------- parameters


@dataclasses.dataclass(frozen=True)
class Subject:
    """What stays with a person across photos: identity and style (canonical units)."""

    subject_id: int
    gender: int
    masculinity: float  # 0..1, drives jaw and brows; male ~0.78, female ~0.22, overlapping
    skin: np.ndarray  # float32[3] RGB
    eye_color: np.ndarray  # float32[3]
    hair_color: np.ndarray  # float32[3], adult shade
    face_width: float  # multiplier of the half-width
    eye_level: float  # offset of the eye line
    eye_size: float  # multiplier of the eye half-width
    eye_tilt: float  # outer corner height
    brow_thickness: float
    brow_arch: float
    brow_gap: float  # extra distance brow-eye
    brow_tilt: float  # resting inner-end drop: some people look stern at rest
    hair_length: float  # v level where hair ends (about -0.3 cropped .. 1.8 past the chin)
    hair_volume: float
    bangs: float  # 0 none .. 1 down to the brows
    lock_cover: float  # how far long hair covers the sides of the face
    part: float  # -1..1, which side the hair falls to
    balding: float  # 0..1, how far the hairline recedes in old age
    grey_onset: float  # years
    grey_rate: float
    wrinkling: float
    eyeliner: float
    clothes: np.ndarray  # float32[3]


@dataclasses.dataclass(frozen=True)
class FaceParams:
    """Everything that decides one photo; ``render_face`` draws it."""

    subject: Subject
    age: int
    expression: int
    intensity: float  # 0..1, how strongly the expression shows
    brow_jitter: float  # per-photo brow height noise
    eye_open: float  # per-photo eye opening multiplier
    hair_length: float
    skin_gain: np.ndarray  # float32[3] per-photo skin jitter
    roll: float  # degrees
    yaw: float  # -1..1, shifts inner features sideways
    pitch: float  # -1..1, shifts inner features up or down
    scale: float  # head half-height as a fraction of the image side
    center: tuple[float, float]  # head centre as fractions of the image side
    gaze: tuple[float, float]
    light_angle: float  # radians
    light_strength: float
    gain: float
    color_cast: np.ndarray  # float32[3]
    background: str  # "linear", "radial" or "texture"
    bg_colors: np.ndarray  # float32[2, 3]
    bg_angle: float
    blur: float  # Gaussian sigma, pixels at the render size
    noise: float  # sensor noise sigma, grey levels
    grayscale: bool


def _mix(a, b, t):
    return a + (b - a) * t


def _smoothstep(x: float, lo: float, hi: float) -> float:
    t = min(max((x - lo) / (hi - lo), 0.0), 1.0)
    return t * t * (3.0 - 2.0 * t)


def sample_subject(subject_id: int, gender: int, seed: int) -> Subject:
    """The person ``subject_id`` of data set ``seed`` (deterministic)."""
    stream = np.random.SeedSequence(seed, spawn_key=(_SUBJECT_STREAM, subject_id))
    rng = np.random.default_rng(stream)
    male = gender == 0
    u = rng.uniform
    tone = u(0, len(_SKIN_TONES) - 1)
    i = min(int(tone), len(_SKIN_TONES) - 2)
    skin = _mix(_SKIN_TONES[i], _SKIN_TONES[i + 1], tone - i) * rng.normal(1, 0.03, 3)
    if male:
        hair_length = u(-0.45, 0.15) if u() < 0.82 else u(0.3, 1.6)
        bangs = u(0.2, 0.8) if u() < 0.12 else 0.0
    else:
        hair_length = u(0.7, 1.9) if u() < 0.8 else u(-0.2, 0.7)
        bangs = u(0.3, 1.0) if u() < 0.35 else 0.0
    return Subject(
        subject_id=subject_id,
        gender=gender,
        masculinity=float(np.clip(rng.normal(0.78 if male else 0.22, 0.14), 0, 1)),
        skin=skin.astype(np.float32),
        eye_color=(_EYE_COLORS[rng.choice(len(_EYE_COLORS), p=_EYE_P)] * u(0.85, 1.15, 3)).astype(
            np.float32
        ),
        hair_color=(
            _HAIR_COLORS[rng.choice(len(_HAIR_COLORS), p=_HAIR_P)]
            * u(0.85, 1.15)
            * rng.normal(1, 0.03, 3)
        )
        .clip(0, 255)
        .astype(np.float32),
        face_width=u(0.93, 1.07),
        eye_level=rng.normal(0, 0.025),
        eye_size=u(0.9, 1.1),
        eye_tilt=rng.normal(0.012, 0.012),
        brow_thickness=float(np.clip(rng.normal(0.075 if male else 0.055, 0.012), 0.03, 0.11)),
        brow_arch=float(np.clip(rng.normal(0.02 if male else 0.045, 0.012), 0, 0.08)),
        brow_gap=rng.normal(-0.012 if male else 0.012, 0.015),
        brow_tilt=rng.normal(0, 0.012),
        hair_length=hair_length,
        hair_volume=u(0.04, 0.12) if male else u(0.07, 0.18),
        bangs=bangs,
        lock_cover=u(0.02, 0.14),
        part=u(-1, 1),
        balding=u(0.2, 1.0) if male and u() < 0.5 else u(0, 0.15),
        grey_onset=u(30, 52),
        grey_rate=u(0.5, 1.2),
        wrinkling=u(0.7, 1.3),
        eyeliner=u(0.3, 1.0) if (not male and u() < 0.45) else 0.0,
        clothes=u(20, 235, 3).astype(np.float32),
    )


def sample_face_params(
    subject: Subject, age: int, expression: int, rng: np.random.Generator
) -> FaceParams:
    """One photo of ``subject`` at ``age`` years showing ``expression`` (an EXPRESSIONS index)."""
    u = rng.uniform
    neutral = expression == labels.EXPRESSIONS.index("neutral")
    # Children's hair is styled by their parents: shorter for small boys, any for girls.
    hair = subject.hair_length + rng.normal(0, 0.15)
    if age < 8 and subject.gender == 0:
        hair = min(hair, u(-0.3, 0.2))
    background = ("linear", "radial", "texture")[rng.integers(3)]
    return FaceParams(
        subject=subject,
        age=int(age),
        expression=int(expression),
        intensity=0.0 if neutral else float(u(0.4, 1.0)),
        brow_jitter=rng.normal(0, 0.012),
        eye_open=u(0.88, 1.12),
        hair_length=float(hair),
        skin_gain=rng.normal(1, 0.025, 3).astype(np.float32),
        roll=rng.normal(0, 5.0),
        yaw=u(-1, 1),
        pitch=u(-1, 1),
        scale=u(0.30, 0.36),
        center=(0.5 + u(-0.05, 0.05), 0.48 + u(-0.04, 0.04)),
        gaze=(u(-0.25, 0.25), u(-0.1, 0.1)),
        light_angle=u(0, 2 * np.pi),
        light_strength=u(0.05, 0.3),
        gain=u(0.8, 1.1),
        color_cast=rng.normal(1, 0.04, 3).astype(np.float32),
        background=background,
        bg_colors=_mix(u(15, 240, (2, 1)), u(15, 240, (2, 3)), u(0.2, 0.7)).astype(np.float32),
        bg_angle=u(0, 2 * np.pi),
        blur=u(0.3, 1.1),
        noise=u(0.5, 4.0),
        grayscale=bool(u() < 0.12),
    )


# ----------------------------------------------------------------------------- geometry
# Canonical face frame: u to the image's right, v down; the top of the skull is at
# v = -1 and the chin at v = +1. Points carry a depth z so that yaw and pitch move
# the inner features (nose most) against the face outline.


def _age_cues(age: float) -> tuple[float, float]:
    """(maturity 0 at birth .. 1 from about 19, ageing 0 up to 30 .. 1 at 65)."""
    return _smoothstep(age, 0.0, 19.0), min(max((age - 30.0) / 35.0, 0.0), 1.0)


def _lower_half_width(s: np.ndarray, width: float, jaw: float, power: float) -> np.ndarray:
    """Half-width of the lower face at s = 0 (widest level) .. 1 (chin): a superellipse."""
    return width * (1.0 - (1.0 - jaw) * s) * (1.0 - s**power) ** (1.0 / power)


def _geometry(p: FaceParams) -> dict:
    """Canonical outline, features and the 68 landmarks of one face (see module notes)."""
    g = _proportions(p)
    g["contour"] = _contour(g)
    g.update(_eye_geometry(g, p))
    g.update(_brow_geometry(g, p))
    nose, g["nose_w"], g["v_nostril"] = _nose(g)
    g["mouth"] = _mouth_landmarks(g)
    g["landmarks"], g["depth"] = _landmarks(g, _jaw_landmarks(g), nose)
    return g


def _proportions(p: FaceParams) -> dict:
    """Age and expression cues, and the head's proportions: eye line, width and jaw."""
    sub = p.subject
    mature, ageing = _age_cues(p.age)
    sex = (sub.masculinity - 0.5) * (0.3 + 0.7 * mature)  # dimorphism grows at puberty
    happy = p.intensity if p.expression == 0 else 0.0
    unhappy = p.intensity if p.expression == 2 else 0.0
    g = {"mature": mature, "ageing": ageing, "sex": sex, "happy": happy, "unhappy": unhappy}
    v_eye = _mix(0.24, 0.0, mature) + sub.eye_level  # a child's eyes sit low on the head
    lower = 1.0 - v_eye
    width = _mix(0.88, 0.75, mature) * sub.face_width
    v_mid = v_eye - 0.08
    jaw, power = _mix(0.97, 0.89, mature) + 0.2 * sex, _mix(2.1, 2.3, mature) + 1.4 * sex
    g.update(v_eye=v_eye, lower=lower, width=width, v_mid=v_mid, jaw=jaw, power=power)
    return g


def _contour(g: dict) -> np.ndarray:
    """float[N, 2]: the face's outline, a half ellipse over the top and a superellipse
    below the widest level."""
    width, v_mid, jaw, power = g["width"], g["v_mid"], g["jaw"], g["power"]
    t = np.linspace(np.pi, 2 * np.pi, 40)
    upper = np.stack([width * np.cos(t), v_mid + (v_mid + 1.0) * np.sin(t)], 1)
    s = np.linspace(0.0, 1.0, 40)[1:]
    half = _lower_half_width(s, width, jaw, power)
    v = v_mid + s * (1.0 - v_mid)
    return np.concatenate(
        [upper, np.stack([half, v], 1), np.stack([-half[::-1], v[::-1]], 1)[1:]]
    )


def _jaw_landmarks(g: dict) -> np.ndarray:
    """float[17, 2]: the jaw landmarks 0..16 on the outline's lower part."""
    v_eye, width, v_mid, jaw, power = g["v_eye"], g["width"], g["v_mid"], g["jaw"], g["power"]
    # Jaw landmarks 0..16: equal arc length from ear level (image left) round the chin.
    s = np.linspace((v_eye + 0.03 - v_mid) / (1.0 - v_mid), 1.0, 200)
    side = np.stack([-_lower_half_width(s, width, jaw, power), v_mid + s * (1.0 - v_mid)], 1)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(side, axis=0), axis=1))])
    at = np.linspace(0.0, arc[-1], 9)
    left = np.stack([np.interp(at, arc, side[:, 0]), np.interp(at, arc, side[:, 1])], 1)
    return np.concatenate([left, left[-2::-1] * [-1.0, 1.0]])


def _eye_geometry(g: dict, p: FaceParams) -> dict:
    """Eye size, spacing and opening, and both eyes' lids (`_eye_curves`)."""
    sub, mature, ageing = p.subject, g["mature"], g["ageing"]
    happy, unhappy = g["happy"], g["unhappy"]
    eye_w = _mix(0.18, 0.155, mature) * sub.eye_size
    eye_x = 2.0 * eye_w * _mix(0.95, 1.0, mature)
    open_up = eye_w * _mix(0.6, 0.5, mature) * p.eye_open * (1 - 0.28 * happy - 0.3 * unhappy)
    open_up *= 1.0 - 0.15 * ageing  # upper lids droop with age
    open_lo = eye_w * _mix(0.42, 0.34, mature) * p.eye_open * (1 - 0.75 * happy)
    eyes = [
        _eye_curves(sd, eye_x, eye_w, g["v_eye"], sub.eye_tilt, open_up, open_lo)
        for sd in (-1, 1)
    ]
    return {"eye_w": eye_w, "eye_x": eye_x, "open_up": open_up, "open_lo": open_lo, "eyes": eyes}


def _brow_geometry(g: dict, p: FaceParams) -> dict:
    """The right brow's centre line (the left one mirrors it) and its thickness along it."""
    sub, mature, happy, unhappy = p.subject, g["mature"], g["happy"], g["unhappy"]
    v_eye, eye_w, eye_x = g["v_eye"], g["eye_w"], g["eye_x"]
    brow_gap = (
        eye_w * _mix(1.3, 1.22, mature)
        + sub.brow_gap
        + 0.05 * happy
        - 0.07 * unhappy
        + p.brow_jitter
    )
    drop = sub.brow_tilt + 0.11 * unhappy - 0.015 * happy  # inner end down: a frown
    arch = sub.brow_arch * (0.5 + 0.5 * mature) + 0.012 * happy
    x_in, x_out = eye_x - 1.1 * eye_w - 0.04 * unhappy, eye_x + 1.25 * eye_w
    tb = np.linspace(0.0, 1.0, 12)  # inner .. outer
    brow_v = (
        v_eye - brow_gap - arch * np.sin(np.pi * tb**1.6) + drop * (1 - tb) ** 1.5 + 0.02 * tb**2
    )
    brow_u = x_in + (x_out - x_in) * tb
    return {
        "brow_u": brow_u,
        "brow_v": brow_v,
        "brow_top": v_eye - brow_gap - arch,
        "brow_thick": sub.brow_thickness * _mix(0.55, 1.0, mature) * (1.15 - 0.65 * tb),
    }


def _nose(g: dict) -> tuple[list, float, float]:
    """(the 9 nose landmarks 27..35: bridge, then nostrils from the left; the nose's
    half-width; the nostrils' level)."""
    v_eye, lower = g["v_eye"], g["lower"]
    nose_w = _mix(0.1, 0.13, g["mature"]) * (1 + 0.15 * g["sex"])
    nose = [
        [0, v_eye - 0.02],
        [0, v_eye + 0.14 * lower],
        [0, v_eye + 0.28 * lower],
        [0, v_eye + 0.42 * lower],
    ]
    v_n = v_eye + 0.47 * lower
    nose += [
        [-nose_w, v_n - 0.02],
        [-nose_w / 2, v_n + 0.005],
        [0, v_n + 0.015],
        [nose_w / 2, v_n + 0.005],
        [nose_w, v_n - 0.02],
    ]
    return nose, nose_w, v_n


def _mouth_landmarks(g: dict) -> np.ndarray:
    """float[20, 2]: the mouth of this face (`_mouth`), wider and flatter with age and sex."""
    mature, sex, happy, unhappy = g["mature"], g["sex"], g["happy"], g["unhappy"]
    return _mouth(
        g["v_eye"] + 0.7 * g["lower"],
        _mix(0.15, 0.2, mature) * (1 - 0.08 * sex),
        _mix(0.035, 0.045, mature),
        0.055 * happy - 0.04 * unhappy,
        0.035 * happy if happy > 0.6 else 0.0,
    )


_JAW_DEPTH = np.array(
    [0, 0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0, 0]
)


def _landmarks(g: dict, jaw_pts: np.ndarray, nose: list) -> tuple[np.ndarray, np.ndarray]:
    """(float[68, 2] landmarks in iBUG-68 order, float[68] their depths z)."""
    brow_u, brow_v = g["brow_u"], g["brow_v"]

    def brow_pts(sd):
        idx = [11, 8, 6, 3, 0] if sd < 0 else [0, 3, 6, 8, 11]  # iBUG: 17..21, 22..26
        return np.stack([sd * brow_u[idx], brow_v[idx]], 1)

    def eye_pts(sd):
        (up, lo), k = g["eyes"][0 if sd < 0 else 1], 15  # curves run outer (0) .. inner (15)
        pts = [up[0], up[k // 3], up[2 * k // 3], up[k], lo[2 * k // 3], lo[k // 3]]
        return np.stack(pts if sd < 0 else pts[3::-1] + pts[:3:-1])

    landmarks = np.concatenate(
        [jaw_pts, brow_pts(-1), brow_pts(1), np.array(nose), eye_pts(-1), eye_pts(1), g["mouth"]]
    )
    depth = np.concatenate(
        [
            _JAW_DEPTH,
            np.full(10, 0.6),
            [0.8, 1.0, 1.2, 1.4],
            np.full(5, 1.1),
            np.full(12, 0.6),
            np.full(20, 0.8),
        ]
    )
    return landmarks, depth


def _eye_curves(sd, eye_x, eye_w, v_eye, tilt, open_up, open_lo, n=16):
    """Upper and lower lid, float[n, 2] each, from the outer corner to the inner one."""
    t = np.linspace(0.0, 1.0, n)
    u = sd * (eye_x + eye_w * (1.0 - 2.0 * t))
    base = v_eye - tilt * (1.0 - t)
    up = base - open_up * np.sin(np.pi * t**1.15)
    lo = base + open_lo * np.sin(np.pi * t**0.9)
    return np.stack([u, up], 1), np.stack([u, lo], 1)


def _mouth(v_m, half_w, lip, smile, opening):
    """The 20 mouth landmarks 48..67 (outer lip from the left corner, then inner lip)."""

    def bend(x):  # corners rise with a smile, fall with a frown
        return -smile * (x / half_w) ** 2

    ox = half_w * np.array([-1, -0.6, -0.3, 0, 0.3, 0.6, 1, 0.6, 0.3, 0, -0.3, -0.6])
    oy = np.array([0, -0.9, -1.1, -0.8, -1.1, -0.9, 0, 1.0, 1.2, 1.25, 1.2, 1.0]) * lip
    oy[7:] += opening
    ix = half_w * np.array([-0.85, -0.3, 0, 0.3, 0.85, 0.3, 0, -0.3])
    iy = np.array([0, -0.15, -0.12, -0.15, 0, 0.15, 0.18, 0.15]) * lip
    iy[5:] += opening
    x = np.concatenate([ox, ix])
    return np.stack([x, v_m + np.concatenate([oy, iy]) + bend(x)], 1)


def _hair_geometry(g: dict, p: FaceParams) -> None:
    """Adds hair volume and the hairline (a curve across the forehead) to ``g``."""
    sub, w, v_eye = p.subject, g["width"], g["v_eye"]
    recede = sub.balding * min(max((p.age - 25.0) / 30.0, 0.0), 1.0)
    vol = sub.hair_volume * (1.0 - 0.6 * recede)
    v_hair = v_eye - _mix(0.72, 0.58, g["mature"]) - 0.6 * recede
    v_temple = float(np.clip(p.hair_length, v_eye - 0.3, v_eye - 0.02))
    u = np.linspace(-(w + vol + 0.1), w + vol + 0.1, 48)
    edge = np.clip(np.abs(u) / (0.92 * w), 0.0, 1.0)
    v = v_hair + (v_temple - v_hair) * edge**4
    v -= 0.5 * recede * np.exp(-(((np.abs(u) / w - 0.55) / 0.18) ** 2))  # the receding "M"
    if sub.bangs > 0:
        fringe = _mix(v_hair, g["brow_top"] - 0.05, sub.bangs)
        jag = 0.025 * sub.bangs * np.abs(np.sin(u * 23.0 + sub.part * 3.0))
        v = np.where(np.abs(u) < 0.85 * w, np.maximum(v, fringe - jag), v)
    g.update(
        hair_volume=vol,
        recede=recede,
        hairline=float(v[24]),
        hairline_curve=np.stack([u, v], 1),
        v_temple=v_temple,
    )
