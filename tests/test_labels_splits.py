import numpy as np
import pytest

from fgmask_jax.data import labels, splits


@pytest.mark.parametrize(
    "name, expected",
    [
        ("001A02_01_01 (2).jpg", (1, 2, 0, 0)),
        ("082A45_02_02.JPG", (82, 45, 1, 1)),
        ("010A10_01_03.png", (10, 10, 0, 2)),
        ("010A19b_00_07 (11).jpeg", (10, 19, 1, 2)),
        ("001A43a_01_02 (0).jpg", (1, 43, 0, 1)),  # a synthetic unmasked twin
    ],
)
def test_parse_filename(name, expected):
    got = labels.parse_filename(name)
    assert (got.subject_id, got.age, got.gender, got.expression) == expected


def test_copies_of_one_photo_share_its_name():
    photos = [labels.parse_filename(n).photo for n in (
        "001A43a_01_02.jpg", "001A43a_01_02 (1).jpg", "001a43A_01_02(3).JPG", "001A43b_01_02.jpg")]
    assert photos == ["001A43A_01_02"] * 3 + ["001A43B_01_02"]


@pytest.mark.parametrize("name", ["notes.txt", "001A02.jpg", "A02_01_01.jpg", "001A02_01.jpg"])
def test_parse_filename_rejects(name):
    with pytest.raises(ValueError, match="FGNET-MASK naming|not an image"):
        labels.parse_filename(name)


def test_age_groups_follow_the_authors_code():
    ages = [0, 10, 11, 20, 21, 40, 41, 69]
    assert [labels.age_group(a) for a in ages] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_study_split_sizes_and_cover():
    train, test = splits.study_split(3404)
    assert len(test) == 851 and len(train) == 2553  # ceil(0.25 * n), as scikit-learn
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(3404))
    assert not np.array_equal(test, splits.study_split(3404, seed=1)[1])


def test_subject_split_is_disjoint_by_person():
    subjects = np.repeat(np.arange(82), 5)
    train, test = splits.subject_split(subjects)
    assert set(subjects[train]).isdisjoint(subjects[test])
    assert len(np.unique(subjects[test])) == 21  # ceil(0.25 * 82) persons
    assert len(train) + len(test) == len(subjects)


def test_person_folds_test_every_person_once():
    subjects = np.repeat(np.arange(10), 3)
    tested = []
    for train, test in splits.person_folds(subjects, n_folds=4):
        assert set(subjects[train]).isdisjoint(subjects[test])
        tested += list(test)
    assert sorted(tested) == list(range(30))


def test_photo_split_never_splits_a_photo():
    rng = np.random.default_rng(0)
    photos = np.repeat(np.arange(1, 101), rng.integers(1, 6, 100))  # 1 to 5 copies each
    photos = photos[rng.permutation(len(photos))]
    train, test = splits.photo_split(photos)
    assert set(photos[train]).isdisjoint(photos[test])
    assert len(np.unique(photos[test])) == 25  # ceil(0.25 * 100) photos
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(photos)))
    assert np.array_equal(test, np.sort(test)) and np.array_equal(train, np.sort(train))
    assert not np.array_equal(test, splits.photo_split(photos, seed=1)[1])


def test_photo_split_of_one_image_per_photo_is_the_study_split():
    photos = np.random.default_rng(1).permutation(np.arange(1000, 1400))  # any unique ids
    for a, b in zip(splits.photo_split(photos), splits.study_split(len(photos)), strict=True):
        np.testing.assert_array_equal(a, b)
