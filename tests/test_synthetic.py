"""The synthetic masked-face generator: label balance, determinism, names, pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fgmask_jax import masks
from fgmask_jax.data import labels, synthetic


def _counts(values: np.ndarray, n_classes: int) -> tuple[int, ...]:
    return tuple(np.bincount(values, minlength=n_classes).tolist())


def test_default_size_has_the_study_class_counts():
    lab = synthetic.assign_labels(3404, 82, seed=0)
    for task, classes in labels.TASKS.items():
        assert _counts(lab[task], len(classes)) == labels.FGNET_MASK_COUNTS[task], task
    assert len(np.unique(lab["subject_id"])) == 82


def test_other_sizes_scale_the_counts_proportionally():
    lab = synthetic.assign_labels(500, 20, seed=1)
    assert _counts(lab["age_group"], 4) == (206, 148, 106, 40)  # 205.6, 148.4, 105.8, 40.2
    assert _counts(lab["gender"], 2) == (294, 206)  # 293.8, 206.2
    assert _counts(lab["expression"], 3) == (264, 140, 96)  # 264.4, 139.5, 96.1
    assert len(np.unique(lab["subject_id"])) == 20


def test_gender_belongs_to_the_person_and_ages_fit_their_groups():
    lab = synthetic.assign_labels(3404, 82, seed=0)
    for person in np.unique(lab["subject_id"]):
        assert len(np.unique(lab["gender"][lab["subject_id"] == person])) == 1, person
    assert [labels.age_group(a) for a in lab["age"]] == lab["age_group"].tolist()
    assert lab["age"].min() >= 0 and lab["age"].max() <= 69
    groups_per_person = [
        len(np.unique(lab["age_group"][lab["subject_id"] == p]))
        for p in np.unique(lab["subject_id"])
    ]
    assert np.mean(groups_per_person) > 1.5  # people are seen at several ages


def test_impossible_sizes_are_refused():
    with pytest.raises(ValueError, match="num_subjects=10"):
        synthetic.assign_labels(5, 10, seed=0)
    with pytest.raises(ValueError, match="num_subjects >= 2"):
        synthetic.assign_labels(50, 1, seed=0)
    with pytest.raises(ValueError, match="image_size=8"):
        next(synthetic.generate(10, 2, image_size=8))


def test_filenames_are_unique_and_parse_back_to_the_labels():
    work = synthetic.example_specs(3404, 82, seed=0)
    names = [t.filename for t in work]
    assert len(set(names)) == len(names)
    assert any(" (1)" in name for name in names)  # repeats get a copy suffix
    for t in work:
        parsed = labels.parse_filename(t.filename)
        assert (parsed.subject_id, parsed.age, parsed.gender, parsed.expression) == (
            t.subject_id,
            t.age,
            t.gender,
            t.expression,
        ), t.filename


@pytest.fixture(scope="module")
def small_set() -> list[dict]:
    return list(synthetic.generate(num_examples=24, num_subjects=6, seed=5, image_size=64))


def test_examples_have_the_promised_fields(small_set):
    assert list(small_set[0]) == [
        "image",
        "age",
        "age_group",
        "gender",
        "expression",
        "subject_id",
        "filename",
        "mask_kind",
        "jpeg_quality",
    ]
    for ex in small_set:
        assert ex["image"].dtype == np.uint8 and ex["image"].shape == (64, 64, 3)
        assert ex["age_group"] == labels.age_group(ex["age"])
        assert ex["mask_kind"] in masks.MASK_KINDS
        lo, hi = synthetic.JPEG_QUALITY_RANGE
        assert lo <= ex["jpeg_quality"] <= hi
        parsed = labels.parse_filename(ex["filename"])
        assert (parsed.age, parsed.gender, parsed.expression) == (
            ex["age"],
            ex["gender"],
            ex["expression"],
        )


def test_same_seed_same_images_whatever_the_workers(small_set):
    again = list(
        synthetic.generate(num_examples=24, num_subjects=6, seed=5, image_size=64, workers=2)
    )
    for a, b in zip(small_set, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        assert {k: v for k, v in a.items() if k != "image"} == {
            k: v for k, v in b.items() if k != "image"
        }
    other = next(synthetic.generate(num_examples=24, num_subjects=6, seed=6, image_size=64))
    assert not np.array_equal(other["image"], small_set[0]["image"])


def test_landmarks_are_inside_the_image_and_in_ibug_order():
    for task in synthetic.example_specs(40, 8, seed=2, image_size=64):
        _, lm = synthetic.render_example(task)
        assert lm.shape == (68, 2) and lm.dtype == np.float32
        assert lm.min() >= 0 and lm.max() <= 63, task.filename
        assert lm[0, 0] < lm[8, 0] < lm[16, 0]  # jaw from the image's left to its right
        assert lm[36:42, 0].mean() < lm[42:48, 0].mean()
        assert lm[19, 1] < lm[37, 1] < lm[30, 1] < lm[51, 1] < lm[8, 1]  # brow, eye, nose, lip


def test_the_mask_covers_the_lower_face_and_spares_the_eyes():
    task = synthetic.example_specs(10, 2, seed=4, image_size=96)[3]
    masked, lm = synthetic.render_example(task)
    rng = synthetic.example_rng(4, 3)
    params = synthetic.sample_face_params(
        synthetic.sample_subject(task.subject_id, task.gender, 4), task.age, task.expression, rng
    )
    face, lm_face = synthetic.render_face(params, rng, 96)
    np.testing.assert_allclose(lm, lm_face)
    diff = np.abs(masked["image"].astype(int) - face.astype(int)).sum(-1)
    mouth = lm[48:68].round().astype(int)
    assert (diff[mouth[:, 1], mouth[:, 0]] > 30).mean() > 0.9
    eyes = lm[36:48].round().astype(int)
    assert (diff[eyes[:, 1], eyes[:, 0]] == 0).mean() > 0.9


def _brow_and_eye_crop(image: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """float[576]: brows and eyes, aligned by the eye centres and contrast-normalised.

    The eye centres go to (8, 14) and (24, 14) of a 32x18 crop: its lower edge, a
    quarter of the eye distance below the eyes, is about at landmark 28, above the mask.
    """
    left, right = lm[36:42].mean(0), lm[42:48].mean(0)
    normal = np.array([-(right - left)[1], (right - left)[0]])
    warp = cv2.getAffineTransform(
        np.float32([left, right, left + normal]), np.float32([[8, 14], [24, 14], [8, 30]])
    )
    crop = cv2.warpAffine(image, warp, (32, 18)).astype(np.float32).mean(-1)
    return ((crop - crop.mean()) / (crop.std() + 1e-6)).ravel()


def test_expression_is_readable_above_the_mask():
    """Nearest class mean on brow-and-eye crops (above the mask), trained on half of the
    persons, tells happy from unhappy on the other half."""
    crops, expression, person = [], [], []
    for task in synthetic.example_specs(160, 16, seed=3, image_size=64):
        example, lm = synthetic.render_example(task)
        crops.append(_brow_and_eye_crop(example["image"], lm))
        expression.append(example["expression"])
        person.append(example["subject_id"])
    x, y, test = np.array(crops), np.array(expression), np.array(person) % 2 == 0
    happy, unhappy = labels.EXPRESSIONS.index("happy"), labels.EXPRESSIONS.index("unhappy")
    means = np.stack([x[~test & (y == c)].mean(0) for c in (happy, unhappy)])
    held = test & (y != labels.EXPRESSIONS.index("neutral"))
    pred = np.array([happy, unhappy])[((x[held, None] - means) ** 2).sum(-1).argmin(1)]
    recall = [np.mean(pred[y[held] == c] == c) for c in (happy, unhappy)]
    assert np.mean(recall) > 0.7, recall  # chance: 0.5
