"""Procedural masked faces: the embedded stand-in for FGNET-MASK.

The official archive cannot always be had, so this module draws a data set of the
same shape: 3,404 images of 82 persons by default, with the study's class counts,
FGNET-MASK file names and a rendered face mask on every face. The labels are
readable above the mask, as a person reads them:

* age: head proportions (a child's eyes sit low on a large cranium, are larger and
  rounder, in a rounder face), then from the thirties on forehead lines, crow's
  feet, eye bags, greying and (for some men) receding hair, growing with age;
* gender: hair length and style, jaw width and squareness, brow thickness and arch,
  eyeliner, all probabilistic and overlapping;
* expression: brow height and angle, eye opening, a cheek raise that pushes the
  lower lid up with crow's feet (happy), lowered inward-angled brows with a
  furrow between them (unhappy), flat brows and plain eyes (neutral), each with a
  continuous intensity.

Nuisances vary per image: skin tone and hair colour (per person, jittered), head
roll, yaw and pitch, scale and position, directional light, white balance,
background, focus, sensor noise, grayscale photos, mask kind and colour, and the
JPEG quality at which a builder stores the image. A person keeps face shape, skin
tone, eye and hair colour across images, so subject-disjoint splits mean something.

Photo mode (``copies_per_photo`` > 1, ``twins``) draws FGNET-MASK's structure: several
masked copies of one photo (about 3.4 in FGNET-MASK), which share everything but the
mask, and optionally each photo unmasked (its "twin", ``mask_kind`` ``UNMASKED``), the
very image its copies were masked from. Every example carries ``photo_id``; in the
default mode each image is its own photo, and the default mode's images are those it
drew before photo mode existed.

Everything is a pure function of ``(num_examples, num_subjects, seed, image_size)`` (and
``copies_per_photo``, ``twins``); each example (each photo) has its own seed, so
``workers`` changes speed, never pixels.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import string
from collections.abc import Callable, Iterator

import cv2
import numpy as np

from fgmask_jax.data import labels

# Years covered by each age group (FG-NET spans ages 0..69).
AGE_RANGES: tuple[tuple[int, int], ...] = ((0, 10), (11, 20), (21, 40), (41, 69))
JPEG_QUALITY_RANGE = (60, 95)  # inclusive; the quality a builder stores each image at
MIN_IMAGE_SIZE = 32
# Faces are drawn at least this large and then resized down, so that thin lines
# (lids, wrinkles) keep their weight at small sizes instead of vanishing.
RENDER_SIZE = 128

_SHIFT = 4  # cv2 drawing with 4 fractional bits: sub-pixel placement
_SCALE = float(1 << _SHIFT)
_AA = cv2.LINE_AA

# Seed streams: SeedSequence(seed, spawn_key=(stream, ...)) keeps them independent.
_SUBJECT_STREAM, _EXAMPLE_STREAM, _LABEL_STREAM = 0, 1, 2
_PHOTO_LABEL_STREAM, _PHOTO_STREAM = 3, 4  # photo mode: copies and twins of one photo
UNMASKED = "none"  # the mask_kind of an unmasked twin

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
_GREY_HAIR = np.array([205, 203, 200], np.float32)


# ----------------------------------------------------------------------------- labels


def _scaled_counts(counts: tuple[int, ...], n: int) -> np.ndarray:
    """``counts`` scaled to sum to ``n`` by largest-remainder rounding (ties: lower index)."""
    quota = np.asarray(counts, np.float64) * n / sum(counts)
    base = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - base), kind="stable")
    base[order[: n - base.sum()]] += 1
    return base


def _subjects_per_gender(gender_images: np.ndarray, num_subjects: int) -> np.ndarray:
    """How many persons of each gender: proportional to images, at least one image each."""
    lo = (gender_images > 0).astype(np.int64)
    hi = gender_images.copy()
    n_male = int(round(num_subjects * gender_images[0] / gender_images.sum()))
    n_male = min(max(n_male, lo[0], num_subjects - hi[1]), hi[0], num_subjects - lo[1])
    return np.array([n_male, num_subjects - n_male])


def _spread_over_persons(persons: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """int64[n]: ``n`` images (or photos) handed to ``persons``, at least one each, unevenly
    (FG-NET has 6 to 18 photos a person), in person order."""
    share = rng.dirichlet(np.full(len(persons), 4.0))
    per_person = 1 + rng.multinomial(n - len(persons), share)
    return np.repeat(persons, per_person)


def assign_labels(num_examples: int, num_subjects: int, seed: int) -> dict[str, np.ndarray]:
    """Per-example labels with FGNET-MASK's class balance.

    Class counts are ``labels.FGNET_MASK_COUNTS`` scaled to ``num_examples`` by
    largest-remainder rounding (exact at 3,404). Gender belongs to the person;
    persons have 1 or more images each (uneven, as in FG-NET); a person's images
    span several age groups, older persons leaning to older groups; ages are drawn
    uniformly within each image's group; expression is per image.

    Returns:
      int64[num_examples] arrays ``subject_id`` (1-based), ``age`` (years),
      ``age_group``, ``gender``, ``expression``, ordered by (subject, age).
    Raises:
      ValueError: when the sizes cannot hold the labels.
    """
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    if not 1 <= num_subjects <= num_examples:
        raise ValueError(
            f"num_subjects={num_subjects} must be between 1 and num_examples={num_examples} "
            "(every person needs an image)"
        )
    counts = {task: _scaled_counts(c, num_examples) for task, c in labels.FGNET_MASK_COUNTS.items()}
    genders_present = int((counts["gender"] > 0).sum())
    if num_subjects < genders_present:
        raise ValueError(
            f"num_subjects={num_subjects} cannot hold both genders of {num_examples} examples: "
            "use num_subjects >= 2"
        )
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_LABEL_STREAM,)))
    n_persons = _subjects_per_gender(counts["gender"], num_subjects)
    person_gender = rng.permutation(np.repeat([0, 1], n_persons))

    subject_id = np.empty(num_examples, np.int64)
    gender = np.repeat([0, 1], counts["gender"])
    start = 0
    for g, n_images in enumerate(counts["gender"]):
        persons = np.flatnonzero(person_gender == g) + 1
        if len(persons) == 0:
            continue
        subject_id[start : start + n_images] = _spread_over_persons(persons, n_images, rng)
        start += n_images

    # Age groups in exact counts, handed out by a score that mixes the person's
    # "oldness" with per-image noise, so each person spans neighbouring groups.
    oldness = rng.uniform(size=num_subjects + 1)[subject_id]
    score = 0.6 * oldness + 0.4 * rng.uniform(size=num_examples)
    age_group = np.empty(num_examples, np.int64)
    age_group[np.argsort(score, kind="stable")] = np.repeat(np.arange(4), counts["age_group"])
    lo, hi = np.array(AGE_RANGES).T
    age = rng.integers(lo[age_group], hi[age_group] + 1)
    expression = rng.permutation(np.repeat(np.arange(3), counts["expression"]))

    order = np.lexsort((age, subject_id))
    return {
        "subject_id": subject_id[order],
        "age": age[order],
        "age_group": age_group[order],
        "gender": gender[order],
        "expression": expression[order],
    }


def filenames(
    subject_id: np.ndarray, age: np.ndarray, gender: np.ndarray, expression: np.ndarray
) -> list[str]:
    """FGNET-MASK names ``NNNAxx_GG_EE[ (k)].jpg``; repeats of a name get `` (k)``, k = 1, 2, ..."""
    seen: dict[str, int] = {}
    names = []
    for s, a, g, e in zip(subject_id, age, gender, expression, strict=True):
        stem = labels.photo_stem(int(s), int(a), int(g), int(e))
        k = seen.get(stem, 0)
        seen[stem] = k + 1
        names.append(labels.copy_filename(stem, k))
    return names


# ----------------------------------------------------------------------------- photos


def num_photos(num_examples: int, copies_per_photo: float) -> int:
    """How many source photos ``num_examples`` masked images come from (at least one)."""
    if not copies_per_photo >= 1:
        raise ValueError(
            f"copies_per_photo={copies_per_photo} must be >= 1 (masked copies of each photo)"
        )
    return max(1, min(num_examples, round(num_examples / copies_per_photo)))


def _photos_by_stratum(image_counts: np.ndarray, n_photos: int, base: int, extra: int):
    """Photos of each class among those with ``base`` copies (row 0) and ``base + 1`` (row 1).

    Chosen so that ``base * row0 + (base + 1) * row1`` equals ``image_counts``, the
    class counts over masked images, whenever the sizes allow it (and comes as close as
    it can otherwise); row 1 sums to ``extra``.

    Returns:
      int64[2, K].
    """
    photos = _scaled_counts(tuple(image_counts), n_photos)
    big = np.clip(image_counts - base * photos, 0, photos)
    while big.sum() != extra:  # only for tiny sets, where some class cannot be exact
        shortfall = image_counts - base * photos - big
        if big.sum() < extra:
            k = int(np.argmax(np.where(big < photos, shortfall, np.iinfo(np.int64).min)))
            big[k] += 1
        else:
            k = int(np.argmin(np.where(big > 0, shortfall, np.iinfo(np.int64).max)))
            big[k] -= 1
    return np.stack([photos - big, big])


def assign_photo_labels(
    num_examples: int, n_photos: int, num_subjects: int, seed: int
) -> dict[str, np.ndarray]:
    """Per-photo labels and copy counts: ``num_examples`` masked copies of ``n_photos`` photos.

    Every photo gets ``num_examples // n_photos`` or one more masked copies (FGNET-MASK:
    about 3.4). Class counts over the masked copies are ``labels.FGNET_MASK_COUNTS``
    scaled to ``num_examples``, as in `assign_labels` (exact at 3,404 copies of 1,001
    photos): each task's classes are dealt out separately among the photos with fewer
    and with more copies. Gender belongs to the person; persons have 1 or more photos;
    a person's photos span several age groups, older persons leaning to older groups;
    ages are uniform within each photo's group; expression is per photo.

    Returns:
      int64[n_photos] arrays ``subject_id`` (1-based), ``age``, ``age_group``, ``gender``,
      ``expression`` and ``copies`` (masked copies of the photo), ordered by (subject, age).
    Raises:
      ValueError: when the sizes cannot hold the labels.
    """
    if not 1 <= n_photos <= num_examples:
        raise ValueError(
            f"{n_photos} photos must be between 1 and num_examples={num_examples} "
            "(every photo needs a masked copy)"
        )
    if not 1 <= num_subjects <= n_photos:
        raise ValueError(
            f"num_subjects={num_subjects} must be between 1 and the {n_photos} photos "
            "(every person needs a photo)"
        )
    base, extra = divmod(num_examples, n_photos)
    image_counts = {
        task: _scaled_counts(c, num_examples) for task, c in labels.FGNET_MASK_COUNTS.items()
    }
    strata = {
        task: _photos_by_stratum(c, n_photos, base, extra) for task, c in image_counts.items()
    }
    gender_photos = strata["gender"].sum(0)
    if num_subjects < int((gender_photos > 0).sum()):
        raise ValueError(
            f"num_subjects={num_subjects} cannot hold both genders of {n_photos} photos: "
            "use num_subjects >= 2"
        )
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_PHOTO_LABEL_STREAM,)))
    n_persons = _subjects_per_gender(gender_photos, num_subjects)
    person_gender = rng.permutation(np.repeat([0, 1], n_persons))

    gender = np.repeat([0, 1], gender_photos)
    subject_id = np.empty(n_photos, np.int64)
    more = np.zeros(n_photos, np.int64)  # 1 where a photo has base + 1 copies
    start = 0
    for g, n in enumerate(gender_photos):
        persons = np.flatnonzero(person_gender == g) + 1
        if len(persons) == 0:
            continue
        more[start : start + n] = rng.permutation(np.arange(n) < strata["gender"][1, g])
        subject_id[start : start + n] = _spread_over_persons(persons, n, rng)
        start += n

    oldness = rng.uniform(size=num_subjects + 1)[subject_id]
    score = 0.6 * oldness + 0.4 * rng.uniform(size=n_photos)
    age_group = np.empty(n_photos, np.int64)
    expression = np.empty(n_photos, np.int64)
    for stratum in (0, 1):
        members = np.flatnonzero(more == stratum)
        ranked = members[np.argsort(score[members], kind="stable")]
        age_group[ranked] = np.repeat(np.arange(4), strata["age_group"][stratum])
        expression[members] = rng.permutation(
            np.repeat(np.arange(3), strata["expression"][stratum])
        )
    lo, hi = np.array(AGE_RANGES).T
    age = rng.integers(lo[age_group], hi[age_group] + 1)

    order = np.lexsort((age, subject_id))
    return {
        "subject_id": subject_id[order],
        "age": age[order],
        "age_group": age_group[order],
        "gender": gender[order],
        "expression": expression[order],
        "copies": base + more[order],
    }


def photo_stems(
    subject_id: np.ndarray, age: np.ndarray, gender: np.ndarray, expression: np.ndarray
) -> list[str]:
    """FGNET-MASK stems ``NNNAxx[l]_GG_EE``, one per photo, unique.

    Photos of one person at one age get FG-NET's letters (``001A43a``, ``001A43b``).

    Raises:
      ValueError: more than 26 photos of one person at one age (no letter left).
    """
    at_age: dict[tuple[int, int], int] = {}
    for s, a in zip(subject_id, age, strict=True):
        at_age[int(s), int(a)] = at_age.get((int(s), int(a)), 0) + 1
    seen: dict[tuple[int, int], int] = {}
    stems = []
    for s, a, g, e in zip(subject_id, age, gender, expression, strict=True):
        key = (int(s), int(a))
        k = seen.get(key, 0)
        seen[key] = k + 1
        if at_age[key] > len(string.ascii_lowercase):
            raise ValueError(
                f"person {key[0]} has {at_age[key]} photos at age {key[1]}: at most 26 get "
                "FG-NET letters; use more persons or fewer photos"
            )
        letter = string.ascii_lowercase[k] if at_age[key] > 1 else ""
        stems.append(labels.photo_stem(key[0], key[1], int(g), int(e), letter))
    return stems


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

    t = np.linspace(np.pi, 2 * np.pi, 40)
    upper = np.stack([width * np.cos(t), v_mid + (v_mid + 1.0) * np.sin(t)], 1)
    s = np.linspace(0.0, 1.0, 40)[1:]
    half = _lower_half_width(s, width, jaw, power)
    v = v_mid + s * (1.0 - v_mid)
    g["contour"] = np.concatenate(
        [upper, np.stack([half, v], 1), np.stack([-half[::-1], v[::-1]], 1)[1:]]
    )
    # Jaw landmarks 0..16: equal arc length from ear level (image left) round the chin.
    s = np.linspace((v_eye + 0.03 - v_mid) / (1.0 - v_mid), 1.0, 200)
    side = np.stack([-_lower_half_width(s, width, jaw, power), v_mid + s * (1.0 - v_mid)], 1)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(side, axis=0), axis=1))])
    at = np.linspace(0.0, arc[-1], 9)
    left = np.stack([np.interp(at, arc, side[:, 0]), np.interp(at, arc, side[:, 1])], 1)
    jaw_pts = np.concatenate([left, left[-2::-1] * [-1.0, 1.0]])

    eye_w = _mix(0.18, 0.155, mature) * sub.eye_size
    eye_x = 2.0 * eye_w * _mix(0.95, 1.0, mature)
    open_up = eye_w * _mix(0.6, 0.5, mature) * p.eye_open * (1 - 0.28 * happy - 0.3 * unhappy)
    open_up *= 1.0 - 0.15 * ageing  # upper lids droop with age
    open_lo = eye_w * _mix(0.42, 0.34, mature) * p.eye_open * (1 - 0.75 * happy)
    g.update(eye_w=eye_w, eye_x=eye_x, open_up=open_up, open_lo=open_lo)
    g["eyes"] = [
        _eye_curves(sd, eye_x, eye_w, v_eye, sub.eye_tilt, open_up, open_lo) for sd in (-1, 1)
    ]

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
    g.update(
        brow_u=brow_u,
        brow_v=brow_v,
        brow_top=v_eye - brow_gap - arch,
        brow_thick=sub.brow_thickness * _mix(0.55, 1.0, mature) * (1.15 - 0.65 * tb),
    )

    nose_w = _mix(0.1, 0.13, mature) * (1 + 0.15 * sex)
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
    g["nose_w"], g["v_nostril"] = nose_w, v_n

    mouth = _mouth(
        v_eye + 0.7 * lower,
        _mix(0.15, 0.2, mature) * (1 - 0.08 * sex),
        _mix(0.035, 0.045, mature),
        0.055 * happy - 0.04 * unhappy,
        0.035 * happy if happy > 0.6 else 0.0,
    )
    g["mouth"] = mouth

    def brow_pts(sd):
        idx = [11, 8, 6, 3, 0] if sd < 0 else [0, 3, 6, 8, 11]  # iBUG: 17..21, 22..26
        return np.stack([sd * brow_u[idx], brow_v[idx]], 1)

    def eye_pts(sd):
        (up, lo), k = g["eyes"][0 if sd < 0 else 1], 15  # curves run outer (0) .. inner (15)
        pts = [up[0], up[k // 3], up[2 * k // 3], up[k], lo[2 * k // 3], lo[k // 3]]
        return np.stack(pts if sd < 0 else pts[3::-1] + pts[:3:-1])

    landmarks = np.concatenate(
        [jaw_pts, brow_pts(-1), brow_pts(1), np.array(nose), eye_pts(-1), eye_pts(1), mouth]
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
    g["landmarks"], g["depth"] = landmarks, depth
    return g


_JAW_DEPTH = np.array(
    [0, 0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0, 0]
)


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


# ----------------------------------------------------------------------------- drawing


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


# ----------------------------------------------------------------------------- examples


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
    """What a worker needs to draw example ``index``: small, so it pickles cheaply."""

    seed: int
    index: int
    image_size: int
    subject_id: int
    age: int
    gender: int
    expression: int
    filename: str


def example_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that draws example ``index`` of data set ``seed``, and nothing else."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_EXAMPLE_STREAM, index)))


def render_example(spec: ExampleSpec) -> dict:
    """One masked example (with its face's float32[68, 2] ``landmarks``), from its own seed.

    The default mode: each example is its own photo (``photo_id`` = ``index + 1``).
    """
    from fgmask_jax import masks  # here, not at the top: the labels need no mask code

    rng = example_rng(spec.seed, spec.index)
    subject = sample_subject(spec.subject_id, spec.gender, spec.seed)
    params = sample_face_params(subject, spec.age, spec.expression, rng)
    face, landmarks = render_face(params, rng, spec.image_size)
    kind = masks.MASK_KINDS[rng.integers(len(masks.MASK_KINDS))]
    image = masks.render_mask(face, landmarks, kind, color=None, seed=int(rng.integers(2**31 - 1)))
    lo, hi = JPEG_QUALITY_RANGE
    example = {
        "image": image,
        "age": spec.age,
        "age_group": labels.age_group(spec.age),
        "gender": spec.gender,
        "expression": spec.expression,
        "subject_id": spec.subject_id,
        "photo_id": spec.index + 1,
        "filename": spec.filename,
        "mask_kind": kind,
        "landmarks": landmarks,
        "jpeg_quality": int(rng.integers(lo, hi + 1)),
    }
    return example


def _example(spec: ExampleSpec) -> list[dict]:
    return [render_example(spec)]


def example_specs(
    num_examples: int = 3404, num_subjects: int = 82, seed: int = 0, image_size: int = 128
) -> list[ExampleSpec]:
    """The work list of ``generate``'s default mode: labels and file name of every example."""
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size={image_size} is too small: use >= {MIN_IMAGE_SIZE}")
    lab = assign_labels(num_examples, num_subjects, seed)
    names = filenames(lab["subject_id"], lab["age"], lab["gender"], lab["expression"])
    return [
        ExampleSpec(
            seed,
            i,
            image_size,
            int(lab["subject_id"][i]),
            int(lab["age"][i]),
            int(lab["gender"][i]),
            int(lab["expression"][i]),
            names[i],
        )
        for i in range(num_examples)
    ]


@dataclasses.dataclass(frozen=True)
class PhotoSpec:
    """What a worker needs to draw photo ``index`` with its masked copies (and twin)."""

    seed: int
    index: int  # 0-based; the photo's photo_id is index + 1
    image_size: int
    subject_id: int
    age: int
    gender: int
    expression: int
    filenames: tuple[str, ...]  # of the masked copies, in copy order
    twin_filename: str | None  # of the unmasked image; None: no twin


def photo_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that draws photo ``index`` of data set ``seed`` and its copies' masks."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_PHOTO_STREAM, index)))


def photo_specs(
    num_examples: int,
    num_subjects: int,
    seed: int = 0,
    image_size: int = 128,
    copies_per_photo: float = 3.4,
    twins: bool = True,
) -> list[PhotoSpec]:
    """The work list of ``generate``'s photo mode: ``num_examples`` masked copies of
    ``num_photos(num_examples, copies_per_photo)`` photos (`assign_photo_labels`)."""
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size={image_size} is too small: use >= {MIN_IMAGE_SIZE}")
    lab = assign_photo_labels(
        num_examples, num_photos(num_examples, copies_per_photo), num_subjects, seed
    )
    stems = photo_stems(lab["subject_id"], lab["age"], lab["gender"], lab["expression"])
    return [
        PhotoSpec(
            seed,
            i,
            image_size,
            int(lab["subject_id"][i]),
            int(lab["age"][i]),
            int(lab["gender"][i]),
            int(lab["expression"][i]),
            tuple(labels.copy_filename(stem, k) for k in range(int(lab["copies"][i]))),
            labels.twin_filename(stem) if twins else None,
        )
        for i, stem in enumerate(stems)
    ]


def render_photo(spec: PhotoSpec) -> list[dict]:
    """The masked copies of one photo, then its unmasked twin (if asked), all with the
    photo's float32[68, 2] ``landmarks``.

    One face is drawn (person, pose, expression, light, background, noise); each copy
    puts another mask on it: the kinds of one photo's copies are consecutive in
    ``masks.MASK_KINDS`` from a start drawn per photo (so up to four copies differ in
    kind), each with its own colour and texture seed. Copies and twin share the photo's
    JPEG quality, so they differ only where a mask (or its loops) is drawn.
    """
    from fgmask_jax import masks  # here, not at the top: the labels need no mask code

    rng = photo_rng(spec.seed, spec.index)
    subject = sample_subject(spec.subject_id, spec.gender, spec.seed)
    params = sample_face_params(subject, spec.age, spec.expression, rng)
    face, landmarks = render_face(params, rng, spec.image_size)
    lo, hi = JPEG_QUALITY_RANGE
    shared = {
        "age": spec.age,
        "age_group": labels.age_group(spec.age),
        "gender": spec.gender,
        "expression": spec.expression,
        "subject_id": spec.subject_id,
        "photo_id": spec.index + 1,
    }
    quality = int(rng.integers(lo, hi + 1))
    start = int(rng.integers(len(masks.MASK_KINDS)))
    examples = []
    for copy, name in enumerate(spec.filenames):
        kind = masks.MASK_KINDS[(start + copy) % len(masks.MASK_KINDS)]
        image = masks.render_mask(face, landmarks, kind, None, seed=int(rng.integers(2**31 - 1)))
        examples.append({"image": image, **shared, "filename": name, "mask_kind": kind,
                         "landmarks": landmarks, "jpeg_quality": quality})
    if spec.twin_filename is not None:
        examples.append({"image": face, **shared, "filename": spec.twin_filename,
                         "mask_kind": UNMASKED, "landmarks": landmarks,
                         "jpeg_quality": quality})
    return examples


def generate(
    num_examples: int = 3404,
    num_subjects: int = 82,
    seed: int = 0,
    image_size: int = 128,
    workers: int = 0,
    copies_per_photo: float = 1.0,
    twins: bool = False,
) -> Iterator[dict]:
    """Yields the synthetic masked-face data set, one example dict at a time, in order.

    Each example: ``image`` uint8[S, S, 3] RGB, ``age`` (years), ``age_group``,
    ``gender``, ``expression`` (indices into ``labels.AGE_GROUPS``, ``GENDERS``,
    ``EXPRESSIONS``), ``subject_id``, ``photo_id`` (the source photo, 1-based, unique per
    photo), ``filename`` (FGNET-MASK naming, unique, parsed back to the same labels by
    ``labels.parse_filename``), ``mask_kind`` (one of ``masks.MASK_KINDS``, or
    ``UNMASKED`` for a twin), ``landmarks`` (float32[68, 2], the face's iBUG-68 points as
    (x, y) pixels, as in FG-NET's .pts files; `masks.mask_region` turns them into the
    mask's pixels) and ``jpeg_quality`` (the quality to store the image at).

    Default mode (``copies_per_photo=1``, no twins): ``num_examples`` masked images, each
    its own photo (`example_specs`, `render_example`). Photo mode (``copies_per_photo`` >
    1 or ``twins``): ``num_examples`` masked copies of about ``num_examples /
    copies_per_photo`` photos, each photo's copies then (with ``twins``) its unmasked
    twin (`photo_specs`, `render_photo`); its draws differ from the default mode's.

    The output depends only on the arguments other than ``workers``; ``workers`` > 0
    draws in that many processes (order kept).
    """
    if workers < 0:
        raise ValueError(f"workers={workers} must be >= 0 (0 draws in this process)")
    if copies_per_photo == 1 and not twins:
        work, draw = example_specs(num_examples, num_subjects, seed, image_size), _example
    else:
        work = photo_specs(num_examples, num_subjects, seed, image_size, copies_per_photo, twins)
        draw = render_photo
    if workers == 0:
        for item in work:
            yield from draw(item)
        return
    # Not "fork": the caller may have started threads (JAX does), which fork can deadlock.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with context.Pool(workers) as pool:
        for drawn in pool.imap(draw, work, chunksize=16 if draw is _example else 4):
            yield from drawn
