"""The input pipeline on the 60-image synthetic set and on hand-made images."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from fgmask_jax.data import pipeline

DATASET = "synthetic_masked_faces/small"


@pytest.fixture
def source(small_data_dir):
    return pipeline.open_split(DATASET, "train", small_data_dir)


def _encode(array, fmt="JPEG"):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


def test_decode_squares_the_centre_and_makes_three_channels():
    # A wide grayscale image: left third black, middle white, right third black.
    gray = np.zeros((30, 90), np.uint8)
    gray[:, 30:60] = 255
    out = pipeline.decode_image(_encode(gray, "PNG"), 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert out.min() == 255  # only the centre square is kept, never stretched
    with pytest.raises(ValueError, match="do not decode"):
        pipeline.decode_image(b"not an image", 16)


def test_eval_batches_cover_every_example_once_with_a_masked_pad(source):
    indices = np.arange(len(source))  # 45 examples in batches of 8: the last has 3 pads
    batches = list(pipeline.iterate(
        pipeline.eval_batches(source, indices, global_batch=8, image_size=24)))
    assert len(batches) == 6
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 45 and not mask[45:].any()
    labels = pipeline.read_labels(source)
    gender = np.concatenate([b["gender"] for b in batches])[mask]
    np.testing.assert_array_equal(gender, labels["gender"])
    assert batches[0]["image"].shape == (8, 24, 24, 3)


def test_train_order_drops_the_remainder_and_reshuffles_each_epoch():
    order = pipeline.batch_order(np.arange(20), global_batch=8, seed=0)
    epoch0 = np.concatenate([order[0], order[1]])
    epoch1 = np.concatenate([order[2], order[3]])
    assert len(set(epoch0)) == 16 and len(set(epoch1)) == 16  # 4 dropped per epoch
    assert not np.array_equal(epoch0, epoch1)
    again = pipeline.batch_order(np.arange(20), global_batch=8, seed=0)
    np.testing.assert_array_equal(order[5], again[5])  # a pure function of (seed, step)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        pipeline.batch_order(np.arange(5), global_batch=8, seed=0)


def test_resuming_the_iterator_gives_the_same_batches(source):
    ds = pipeline.train_batches(source, np.arange(len(source)), global_batch=8,
                                image_size=16, seed=3)
    whole = [b["subject_id"] for _, b in zip(range(7), pipeline.iterate(ds), strict=False)]
    resumed = [b["subject_id"] for _, b in zip(range(3), pipeline.iterate(ds, start=4),
                                                strict=False)]
    for a, b in zip(whole[4:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_prefetch_keeps_the_order_and_makes_two_ahead():
    made = []

    def items():
        for i in range(5):
            made.append(i)
            yield i

    out = pipeline.prefetch(items(), 2)
    assert next(out) == 0 and made == [0, 1, 2]  # 1 and 2 are on their way
    assert list(out) == [1, 2, 3, 4] and made == [0, 1, 2, 3, 4]
    assert list(pipeline.prefetch(iter([]), 2)) == []


def test_load_all_keeps_order_and_labels(source):
    indices = np.array([7, 3, 30])
    data = pipeline.load_all(source, indices, 16)
    labels = pipeline.read_labels(source)
    np.testing.assert_array_equal(data["age"], labels["age"][indices])
    assert data["image"].shape == (3, 16, 16, 3)


def test_mask_regions_mark_the_pixels_the_mask_changed(paired_small_data_dir):
    name = "synthetic_masked_faces/paired_small"
    masked = pipeline.open_split(name, "photo_test", paired_small_data_dir)
    twins = pipeline.open_split(name, "unmasked_photo_test", paired_small_data_dir)
    twin_of = {p: i for i, p in enumerate(pipeline.read_labels(twins)["photo_id"])}
    ix = np.arange(len(masked))
    twin_ix = np.array([twin_of[p] for p in pipeline.read_labels(masked)["photo_id"]])
    regions = pipeline.mask_regions(masked, ix, 32)
    assert regions.shape == (len(ix), 32, 32) and regions.dtype == bool
    diff = np.abs(pipeline.load_all(masked, ix, 32)["image"].astype(int)
                  - pipeline.load_all(twins, twin_ix, 32)["image"]).sum(-1)
    assert diff[regions].mean() > 10 * diff[~regions].mean()  # JPEG noise outside
    # At the model's input size: the same part of the image, resized as the images are.
    half = pipeline.mask_regions(masked, ix, 16)
    assert half.shape == (len(ix), 16, 16) and abs(half.mean() - regions.mean()) < 0.03
    # A twin gets where a surgical mask would sit: the lower face.
    rows = np.nonzero(pipeline.mask_regions(twins, [0], 32)[0])[0]
    assert len(rows) and rows.min() > 8


def test_augment_is_seeded_bounded_and_changes_images():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)), jnp.uint8)
    a = pipeline.augment(jax.random.key(1), images)
    b = pipeline.augment(jax.random.key(1), images)
    c = pipeline.augment(jax.random.key(2), images)
    assert a.shape == images.shape and a.dtype == jnp.float32
    assert float(a.min()) >= 0 and float(a.max()) <= 255
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    plain = pipeline.augment(jax.random.key(1), images, flip=False, min_scale=1.0,
                             color_jitter=0.0)
    np.testing.assert_allclose(plain, images.astype(jnp.float32), atol=1e-3)


def test_normalize_standardises_per_channel():
    x = jnp.full((1, 2, 2, 3), 255, jnp.uint8)
    out = pipeline.normalize(x)
    np.testing.assert_allclose(out[0, 0, 0], (1 - np.array(pipeline.MEAN_RGB))
                               / np.array(pipeline.STDDEV_RGB), rtol=1e-6)
