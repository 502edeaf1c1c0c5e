"""The protocols' splits: the study's random image split, a subject-disjoint one, a
photo-disjoint one and leave-persons-out folds.

All are pure functions of the examples' keys and a seed, so a builder, a
pipeline, every method and a test all get the same split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

TEST_FRACTION = 0.25
SEED = 42  # the study's random_state


def study_split(
    n: int, seed: int = SEED, test_fraction: float = TEST_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Random image split, as scikit-learn's train_test_split sizes it (ceil for test).

    Returns sorted int64 indices (train, test) into range(n).
    """
    n_test = math.ceil(test_fraction * n)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def subject_split(
    subject_ids: Sequence[int] | np.ndarray,
    seed: int = SEED,
    test_fraction: float = TEST_FRACTION,
) -> tuple[np.ndarray, np.ndarray]:
    """Subject-disjoint split: a random ``test_fraction`` of persons goes to test.

    Returns sorted int64 indices (train, test) into ``subject_ids``; no person is
    on both sides.
    """
    subject_ids = np.asarray(subject_ids)
    persons = np.unique(subject_ids)
    n_test = math.ceil(test_fraction * len(persons))
    test_persons = np.random.default_rng(seed).permutation(persons)[:n_test]
    in_test = np.isin(subject_ids, test_persons)
    return np.flatnonzero(~in_test), np.flatnonzero(in_test)


def photo_split(
    photo_ids: Sequence[int] | np.ndarray,
    seed: int = SEED,
    test_fraction: float = TEST_FRACTION,
) -> tuple[np.ndarray, np.ndarray]:
    """Photo-disjoint split: a random ``test_fraction`` of source photos goes to test.

    All masked copies of one photo land on the same side, so no photo is seen in
    training and tested again under another mask (the study's image split lets them
    leak). Photos are drawn in order of first appearance: with one image per photo
    the split is ``study_split(len(photo_ids), seed, test_fraction)``.

    Returns sorted int64 indices (train, test) into ``photo_ids``; no photo is on both
    sides.
    """
    photo_ids = np.asarray(photo_ids)
    _, first = np.unique(photo_ids, return_index=True)
    photos = photo_ids[np.sort(first)]
    n_test = math.ceil(test_fraction * len(photos))
    test_photos = np.random.default_rng(seed).permutation(photos)[:n_test]
    in_test = np.isin(photo_ids, test_photos)
    return np.flatnonzero(~in_test), np.flatnonzero(in_test)


def person_folds(
    subject_ids: Sequence[int] | np.ndarray, n_folds: int = 0, seed: int = SEED
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Leave-persons-out folds: (train, test) index arrays, each person tested once.

    ``n_folds`` persons' groups of (nearly) equal size; 0, or the number of
    persons, is leave-one-person-out. The groups depend only on the set of
    persons and ``seed``, so every method given the same data gets the same folds.

    Raises:
      ValueError: ``n_folds`` is 1, negative or more than the number of persons.
    """
    subject_ids = np.asarray(subject_ids)
    persons = np.random.default_rng(seed).permutation(np.unique(subject_ids))
    n_folds = n_folds or len(persons)
    if not 2 <= n_folds <= len(persons):
        raise ValueError(
            f"lopo_folds={n_folds}: need 2..{len(persons)} folds (the number of persons), "
            "or 0 for one fold per person"
        )
    folds = []
    for fold in np.array_split(persons, n_folds):
        in_test = np.isin(subject_ids, fold)
        folds.append((np.flatnonzero(~in_test), np.flatnonzero(in_test)))
    return folds
