"""The synthetic masked-face generator: label balance, determinism, names, pixels; the
photo mode's masked copies and unmasked twins."""

from __future__ import annotations

import hashlib
import itertools
import json

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
        "photo_id",
        "filename",
        "mask_kind",
        "landmarks",
        "jpeg_quality",
    ]
    assert [ex["photo_id"] for ex in small_set] == list(range(1, 25))  # each its own photo
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
        np.testing.assert_equal(a, b)
    other = next(synthetic.generate(num_examples=24, num_subjects=6, seed=6, image_size=64))
    assert not np.array_equal(other["image"], small_set[0]["image"])


def test_landmarks_are_inside_the_image_and_in_ibug_order():
    for task in synthetic.example_specs(40, 8, seed=2, image_size=64):
        lm = synthetic.render_example(task)["landmarks"]
        assert lm.shape == (68, 2) and lm.dtype == np.float32
        assert lm.min() >= 0 and lm.max() <= 63, task.filename
        assert lm[0, 0] < lm[8, 0] < lm[16, 0]  # jaw from the image's left to its right
        assert lm[36:42, 0].mean() < lm[42:48, 0].mean()
        assert lm[19, 1] < lm[37, 1] < lm[30, 1] < lm[51, 1] < lm[8, 1]  # brow, eye, nose, lip


def test_the_mask_covers_the_lower_face_and_spares_the_eyes():
    task = synthetic.example_specs(10, 2, seed=4, image_size=96)[3]
    masked = synthetic.render_example(task)
    lm = masked["landmarks"]
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
        example = synthetic.render_example(task)
        lm = example["landmarks"]
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


# ----------------------------------------------------------------------------- default kept

# sha256 over the first five examples of `generate` (image bytes, then every other field
# but photo_id as sorted JSON), recorded from the generator before photo mode existed: the
# README's demo numbers rest on these images. A change means the default and small data
# sets changed (or numpy's or OpenCV's drawing did).
FIRST_FIVE = {
    (60, 12, 0, 32): "cd8770d5b4a6751bd54dd075cfc7fe2c6f8b3c53648f1d6da0a810d0e87e1066",
    (3404, 82, 0, 128): "27b13941522b445982aa49e2662c73faefb807a0b1738935bb8655216e807d05",
}


def _digest(examples) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(ex["image"].tobytes())
        rest = {k: v for k, v in ex.items() if k not in ("image", "photo_id", "landmarks")}
        h.update(json.dumps(rest, sort_keys=True, default=int).encode())
    return h.hexdigest()


@pytest.mark.parametrize("args", sorted(FIRST_FIVE))
def test_default_mode_draws_what_it_always_drew(args):
    first = list(itertools.islice(synthetic.generate(*args), 5))
    assert _digest(first) == FIRST_FIVE[args]
    assert [ex["photo_id"] for ex in first] == [1, 2, 3, 4, 5]


# ----------------------------------------------------------------------------- photo mode

PAIRED_SMALL = dict(num_examples=68, num_subjects=6, seed=0, image_size=32,
                    copies_per_photo=3.4, twins=True)  # the paired_small config


@pytest.fixture(scope="module")
def photos() -> list[tuple[synthetic.PhotoSpec, list[dict], np.ndarray]]:
    """Every photo of paired_small: (spec, its copies then its twin, landmarks)."""
    return [(spec, examples, examples[0]["landmarks"])
            for spec in synthetic.photo_specs(**PAIRED_SMALL)
            for examples in [synthetic.render_photo(spec)]]


def _mask_region(landmarks: np.ndarray, kind: str, hw: tuple[int, int]):
    """(inside, outside): bool[H, W] fully under the mask polygon, and untouched by the mask
    and its loops, as `masks.render_mask` draws them (its own geometry helpers)."""
    from fgmask_jax.masks import render

    points = landmarks.astype(np.float64)
    frame = render._face_frame(points)
    shape = render._mask_shape(points, frame, kind)
    body = render._fill(frame.to_image(shape.outline), hw)
    straps = render._straps(points, frame, shape, kind)
    loops = render._draw_lines(straps, hw, frame.width) if straps else np.zeros(hw)
    return body >= 0.999, (body == 0) & (loops == 0)


def test_photo_labels_keep_the_study_class_counts_over_masked_copies():
    n_photos = synthetic.num_photos(3404, 3.4)
    assert n_photos == 1001
    lab = synthetic.assign_photo_labels(3404, n_photos, 82, seed=0)
    assert sorted(set(lab["copies"].tolist())) == [3, 4] and lab["copies"].sum() == 3404
    for task, classes in labels.TASKS.items():
        counts = np.bincount(lab[task], weights=lab["copies"], minlength=len(classes))
        assert tuple(counts.astype(int).tolist()) == labels.FGNET_MASK_COUNTS[task], task
    assert len(np.unique(lab["subject_id"])) == 82
    for person in np.unique(lab["subject_id"]):
        assert len(np.unique(lab["gender"][lab["subject_id"] == person])) == 1, person


def test_photo_specs_names_parse_back_and_never_collide(photos):
    names = []
    for spec, examples, _ in photos:
        assert len(spec.filenames) in (3, 4)
        assert spec.twin_filename.endswith(" (0).jpg")
        assert [ex["filename"] for ex in examples] == [*spec.filenames, spec.twin_filename]
        names += [ex["filename"] for ex in examples]
        for name in names[-len(examples):]:
            parsed = labels.parse_filename(name)
            assert (parsed.subject_id, parsed.age, parsed.gender, parsed.expression) == (
                spec.subject_id, spec.age, spec.gender, spec.expression), name
    assert len(set(names)) == len(names)
    assert sum(len(spec.filenames) for spec, _, _ in photos) == 68 and len(photos) == 20


def test_second_photos_at_one_age_get_fgnet_letters():
    stems = synthetic.photo_stems(np.array([1, 1, 1, 2]), np.array([5, 5, 7, 5]),
                                  np.array([0, 0, 0, 1]), np.array([0, 1, 2, 0]))
    assert stems == ["001A05a_01_01", "001A05b_01_02", "001A07_01_03", "002A05_02_01"]
    assert labels.parse_filename(labels.twin_filename(stems[1])).age == 5


def test_copies_share_person_photo_and_labels_and_differ_in_mask(photos):
    shared = ("subject_id", "photo_id", "age", "age_group", "gender", "expression",
              "jpeg_quality")
    photo_ids = []
    for spec, examples, _ in photos:
        copies = examples[:-1]
        for key in shared:
            assert len({ex[key] for ex in examples}) == 1, (spec.index, key)
        kinds = [ex["mask_kind"] for ex in copies]
        assert len(set(kinds)) == len(kinds) and set(kinds) <= set(masks.MASK_KINDS)
        for a, b in itertools.combinations(copies, 2):
            assert (a["image"] != b["image"]).any(-1).mean() > 0.05
        photo_ids.append(examples[0]["photo_id"])
    assert photo_ids == list(range(1, 21))


def test_twins_differ_from_their_copies_only_under_the_mask(photos):
    for spec, examples, landmarks in photos:
        twin = examples[-1]
        assert twin["mask_kind"] == synthetic.UNMASKED
        for copy in examples[:-1]:
            inside, outside = _mask_region(landmarks, copy["mask_kind"], (32, 32))
            differs = (copy["image"] != twin["image"]).any(-1)
            assert outside.sum() > 0.5 * outside.size
            assert not differs[outside].any(), (spec.index, copy["mask_kind"])
            assert differs[inside].mean() > 0.9, (spec.index, copy["mask_kind"])


def test_mask_region_is_what_the_mask_covers(photos):
    for spec, examples, landmarks in photos:
        for copy in examples[:-1]:
            inside, outside = _mask_region(landmarks, copy["mask_kind"], (32, 32))
            region = masks.mask_region(copy["landmarks"], (32, 32), copy["mask_kind"])
            assert region[inside].all() and not region[outside].any(), spec.index
            assert 0.1 < region.mean() < 0.6  # the lower face, not the whole image
    with pytest.raises(ValueError, match="unknown mask kind 'none'"):
        masks.mask_region(landmarks, (32, 32), synthetic.UNMASKED)


def test_photo_mode_yields_copies_then_twin_whatever_the_workers():
    args = dict(num_examples=10, num_subjects=2, seed=1, image_size=32, copies_per_photo=3.4)
    alone = list(synthetic.generate(**args, twins=True))
    pooled = list(synthetic.generate(**args, twins=True, workers=2))
    assert len(alone) == 10 + 3
    for a, b in zip(alone, pooled, strict=True):
        np.testing.assert_equal(a, b)
    assert [ex["mask_kind"] == "none" for ex in alone].count(True) == 3
    without = list(synthetic.generate(**args))
    assert [ex["filename"] for ex in without] == [
        ex["filename"] for ex in alone if ex["mask_kind"] != "none"]
    np.testing.assert_array_equal(without[0]["image"], alone[0]["image"])


def test_photo_mode_refuses_fewer_than_one_copy():
    with pytest.raises(ValueError, match="copies_per_photo=0.5"):
        synthetic.num_photos(10, 0.5)
    with pytest.raises(ValueError, match="num_subjects=5"):
        synthetic.photo_specs(10, 5, copies_per_photo=3.4)
