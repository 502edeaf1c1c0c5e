"""Labels of the synthetic set: class counts, persons, ages, photos and FGNET-MASK names,
and the seed streams that every part of the set is drawn from.

The labels have streams of their own and are drawn before any pixel, so a data set's
labels and file names can be had without drawing an image.
"""

from __future__ import annotations

import string

import numpy as np

from fgmask_jax.data import labels

# Years covered by each age group (FG-NET spans ages 0..69).
AGE_RANGES: tuple[tuple[int, int], ...] = ((0, 10), (11, 20), (21, 40), (41, 69))

# Seed streams: SeedSequence(seed, spawn_key=(stream, ...)) keeps them independent.
_SUBJECT_STREAM, _EXAMPLE_STREAM, _LABEL_STREAM = 0, 1, 2
_PHOTO_LABEL_STREAM, _PHOTO_STREAM = 3, 4  # photo mode: copies and twins of one photo


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

    return _by_person_and_age(subject_id, age, age_group, gender, expression)[0]


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
    gender = np.repeat([0, 1], gender_photos)
    subject_id, more = _photos_of_persons(strata["gender"], n_photos, num_subjects, rng)
    age_group, expression = _photo_classes(subject_id, more, strata, num_subjects, rng)
    lo, hi = np.array(AGE_RANGES).T
    age = rng.integers(lo[age_group], hi[age_group] + 1)

    out, order = _by_person_and_age(subject_id, age, age_group, gender, expression)
    return {**out, "copies": base + more[order]}


def _photos_of_persons(
    gender_strata: np.ndarray, n_photos: int, num_subjects: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Persons of the photos, males' photos first, and which photos get the extra copy.

    Args:
      gender_strata: int64[2, 2], photos of each gender (column) with fewer copies
        (row 0) and with one more (row 1), as `_photos_by_stratum` gives them.
    Returns:
      int64[n_photos] ``subject_id`` (1-based) and ``more`` (1 where a photo has one
      copy more than the fewest), each gender's photos in person order.
    """
    gender_photos = gender_strata.sum(0)
    n_persons = _subjects_per_gender(gender_photos, num_subjects)
    person_gender = rng.permutation(np.repeat([0, 1], n_persons))

    subject_id = np.empty(n_photos, np.int64)
    more = np.zeros(n_photos, np.int64)  # 1 where a photo has base + 1 copies
    start = 0
    for g, n in enumerate(gender_photos):
        persons = np.flatnonzero(person_gender == g) + 1
        if len(persons) == 0:
            continue
        more[start : start + n] = rng.permutation(np.arange(n) < gender_strata[1, g])
        subject_id[start : start + n] = _spread_over_persons(persons, n, rng)
        start += n
    return subject_id, more


def _photo_classes(
    subject_id: np.ndarray,
    more: np.ndarray,
    strata: dict[str, np.ndarray],
    num_subjects: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """int64 age groups and expressions of the photos, in each stratum's exact counts.

    Within each stratum (fewer copies, one more) age groups are handed out by a score
    that mixes the person's "oldness" with per-photo noise, as in `assign_labels`;
    expressions are shuffled.
    """
    n_photos = len(subject_id)
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
    return age_group, expression


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


def _by_person_and_age(subject_id, age, age_group, gender, expression):
    """({subject_id, age, age_group, gender, expression}, the order): the labels sorted by
    person, then age."""
    order = np.lexsort((age, subject_id))
    return {"subject_id": subject_id[order], "age": age[order], "age_group": age_group[order],
            "gender": gender[order], "expression": expression[order]}, order
