"""Attribution maps on tiny models whose answer to "where does it look" is known."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgmask_jax import models
from fgmask_jax.evaluation import report, saliency, saliency_controls

H = W = 16


class TopHalfModel(nn.Module):
    """Two heads over a bias-free conv of the top half of the image (the bottom is zeroed).

    With ``kernel`` 1 the conv's feature map is zero on the bottom half too; a 3x3 conv's
    first bottom row still sees the last top row.
    """

    kernel: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        top = (jnp.arange(x.shape[1]) < x.shape[1] // 2)[None, :, None, None]
        k = (self.kernel, self.kernel)
        features = nn.Conv(6, k, use_bias=False, name="conv")(x * top)
        pooled = jnp.tanh(features).mean((1, 2))
        return {"gender": nn.Dense(2, name="gender")(pooled),
                "age_group": nn.Dense(4, name="age_group")(jnp.tanh(pooled))}


class SmallNonlinear(nn.Module):
    """Conv, softplus, pool, dense: a smooth nonlinear model for the completeness check."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.softplus(nn.Conv(8, (3, 3), name="conv")(x))
        h = nn.Dense(16)(h.mean((1, 2)))
        return {"expression": nn.Dense(3)(jnp.tanh(h))}


def _images(seed: int, batch: int = 3):
    return jax.random.uniform(jax.random.key(seed), (batch, H, W, 3))


def _top_half_model(kernel: int = 3):
    model = TopHalfModel(kernel)
    variables = model.init(jax.random.key(0), _images(0))
    return model, variables


def test_integrated_gradients_of_a_top_half_model_lie_on_the_top_half():
    model, variables = _top_half_model()
    x = _images(1)
    maps = saliency.integrated_gradients(functools.partial(model.apply), variables, x, steps=8)
    top = saliency.rows_above(H, W, H // 2)
    for task in ("gender", "age_group"):
        assert maps[task].shape == (3, H, W)
        share = saliency.region_share(maps[task], top)
        assert np.all(share > 0.95), (task, share)
        assert float(jnp.abs(maps[task]).sum()) > 0  # the map says something


def test_grad_cam_of_a_top_half_model_lies_on_the_top_half():
    model, variables = _top_half_model(kernel=1)
    x = _images(2)
    assert saliency.last_feature_map(model, variables, x) == ("conv",)
    maps = saliency.grad_cam(model, variables, x, targets={"gender": jnp.array([0, 1, 0])})
    top = saliency.rows_above(H, W, H // 2)
    for task in ("gender", "age_group"):
        assert maps[task].shape == (3, H, W) and float(maps[task].min()) >= 0
        nonzero = np.asarray(maps[task]).sum((1, 2)) > 0  # ReLU may zero a whole map
        assert nonzero.any()
        shares = saliency.region_share(maps[task], top)
        assert np.all(shares[nonzero] > 0.95), (task, shares)


def test_integrated_gradients_are_complete():
    model = SmallNonlinear()
    x = _images(3)
    variables = model.init(jax.random.key(4), x)
    apply_fn = functools.partial(model.apply)
    baseline = saliency.blurred(x, sigma=2.0)
    maps, targets = saliency.integrated_gradients(apply_fn, variables, x, baselines=baseline,
                                                  steps=64, return_targets=True)
    idx = targets["expression"][:, None]
    gap = (jnp.take_along_axis(apply_fn(variables, x)["expression"], idx, -1)
           - jnp.take_along_axis(apply_fn(variables, baseline)["expression"], idx, -1))[:, 0]
    np.testing.assert_allclose(maps["expression"].sum((1, 2)), gap, rtol=0.03)
    # Black baseline, log-probability of a chosen class: complete as well.
    chosen = jnp.array([2, 0, 1])
    maps = saliency.integrated_gradients(apply_fn, variables, x, targets={"expression": chosen},
                                         steps=64, score="log_prob")
    logp = lambda im: jax.nn.log_softmax(apply_fn(variables, im)["expression"])  # noqa: E731
    gap = (logp(x) - logp(jnp.zeros_like(x)))[jnp.arange(3), chosen]
    np.testing.assert_allclose(maps["expression"].sum((1, 2)), gap, rtol=0.03, atol=1e-4)


def test_grad_cam_on_the_study_cnn_reads_only_heads_on_its_layer():
    model = models.create_model("cnn", {"age_group": 4, "gender": 2}, head_depths={"gender": 1})
    x = _images(5, batch=2)
    variables = model.init(jax.random.key(6), x)
    assert saliency.last_feature_map(model, variables, x) == ("trunk", "conv3")
    maps = saliency.grad_cam(model, variables, x)
    assert maps["age_group"].shape == (2, H, W)
    assert float(jnp.abs(maps["gender"]).max()) == 0.0  # gender reads conv1, not conv3
    conv1 = saliency.grad_cam(model, variables, x, layer=("trunk", "conv1"))
    assert float(conv1["gender"].max()) > 0
    with pytest.raises(ValueError, match="no submodule"):
        saliency.grad_cam(model, variables, x, layer=("trunk", "conv9"))


def test_region_share_and_mean_map():
    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0], maps[0, 3, 3] = 3.0, -1.0  # 3/4 of the mass in the top-left quarter
    maps[1, 3, 3] = 5.0
    region = np.zeros((4, 4), bool)
    region[:2, :2] = True
    np.testing.assert_allclose(saliency.region_share(maps, region), [0.75, 0.0])
    per_image = np.stack([region, ~region])
    np.testing.assert_allclose(saliency.region_share(maps, per_image), [0.75, 1.0])
    assert np.isnan(saliency.region_share(np.zeros((1, 4, 4)), region)[0])
    mean = saliency.mean_map(maps)  # each map weighs the same
    assert mean[0, 0] == pytest.approx(0.375) and mean[3, 3] == pytest.approx(0.625)
    assert saliency.mean_map(maps, normalize=False)[3, 3] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="region"):
        saliency.region_share(maps, np.ones((3, 3), bool))


def test_blurred_keeps_constants_and_smooths():
    flat = jnp.full((1, 8, 8, 3), 0.4)
    np.testing.assert_allclose(saliency.blurred(flat, 1.5), flat, atol=1e-6)
    noise = _images(7, batch=1)
    smooth = saliency.blurred(noise, 1.5)
    assert smooth.shape == noise.shape and float(smooth.std()) < 0.5 * float(noise.std())
    tiny = saliency.blurred(jnp.ones((1, 2, 2, 1)), 3.0)  # radius larger than the image
    np.testing.assert_allclose(tiny, 1.0, atol=1e-6)


def test_summarize_attributions_in_padded_batches():
    model, variables = _top_half_model()
    images = np.asarray(_images(8, batch=5))
    top = saliency.rows_above(H, W, H // 2)
    out = saliency.summarize_attributions(
        functools.partial(model.apply), variables, images, batch_size=3, steps=8,
        regions={"top": top, "bottom": ~top})
    assert out["n"] == 5 and out["mean_image"].shape == (H, W, 3)
    assert out["areas"] == {"top": 0.5, "bottom": 0.5}
    for task in ("gender", "age_group"):
        assert out["maps"][task].shape == (H, W)
        assert out["maps"][task][H // 2:].max() < 0.05 * out["maps"][task].max()
        assert out["shares"][task]["top"].shape == (5,)
        assert np.all(out["shares"][task]["top"] > 0.95)
    # The same maps as one unpadded call.
    direct = saliency.integrated_gradients(functools.partial(model.apply), variables,
                                           images, steps=8)
    np.testing.assert_allclose(out["maps"]["gender"], saliency.mean_map(direct["gender"]),
                               rtol=1e-4, atol=1e-7)


# --- intervals and controls --------------------------------------------------------------


def _person_values(num_persons: int, per_person: int = 4, seed: int = 0):
    """float[N] of persons whose means differ (sd 0.1) plus image noise (sd 0.05)."""
    rng = np.random.default_rng(seed)
    subjects = np.repeat(np.arange(num_persons), per_person)
    values = 0.3 + rng.normal(0, 0.1, num_persons)[subjects] + rng.normal(0, 0.05, len(subjects))
    return values, subjects


def test_person_interval_covers_the_mean_and_shrinks_with_more_persons():
    widths = {}
    for persons in (8, 200):
        values, subjects = _person_values(persons)
        iv = saliency_controls.person_interval(values, subjects, seed=1)
        assert iv["low"] <= iv["value"] <= iv["high"]
        assert iv["value"] == pytest.approx(values.mean())
        assert (iv["n"], iv["persons"]) == (len(values), persons)
        widths[persons] = iv["high"] - iv["low"]
    assert widths[200] < 0.4 * widths[8]  # about sqrt(8 / 200) = 0.2 of it
    # nan is left out (an all-zero map's share); the rest is what it was without it.
    values, subjects = _person_values(8)
    with_nan = saliency_controls.person_interval(np.append(values, np.nan), np.append(subjects, 99),
                                        seed=1)
    assert with_nan == saliency_controls.person_interval(values, subjects, seed=1)
    empty = saliency_controls.person_interval(np.full(3, np.nan), np.arange(3))
    assert empty["n"] == 0 and np.isnan(empty["value"])


def test_share_intervals_drop_all_zero_maps_from_every_number():
    n, size = 6, 8
    maps = np.zeros((n, size, size))
    maps[:, :2] = 1.0  # all attribution on the top two rows
    maps[[1, 5]] = 0.0  # two all-zero maps
    region = np.zeros((n, size, size), bool)
    for i in range(n):
        region[i, :i + 1] = True  # image i's region: its top i + 1 rows
    subjects = np.array([0, 0, 1, 1, 2, 2])
    table = saliency_controls.share_intervals({"gender": maps}, {"top": region}, subjects, seed=0)
    row = table["gender"]["regions"]["top"]
    kept = np.array([0, 2, 3, 4])
    assert table["gender"]["images"] == n and table["gender"]["dropped"] == 2
    assert row["n"] == 4 and row["persons"] == 3
    assert row["value"] == pytest.approx(np.mean([0.5, 1, 1, 1]))
    # The pixel share is over the same four images, not all six.
    assert row["pixels"] == pytest.approx(((kept + 1) / size).mean())
    assert row["pixels"] != pytest.approx(region.mean())


def _face_maps(n: int, size: int, mask_top: np.ndarray, pull: float, seed: int):
    """Maps of a smooth blob at the face's centre, noisy, plus ``pull`` times the mask's
    rows (from ``mask_top`` to the bottom) where ``pull`` > 0."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    blob = np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (2 * (size / 5) ** 2))
    maps = blob * rng.uniform(0.5, 1.5, (n, 1, 1)) + rng.uniform(0, 0.05, (n, size, size))
    on = yy[None] >= mask_top[:, None, None]
    return maps + pull * on * blob.max(), on


def test_twin_control_sees_a_pull_of_the_mask_only_where_there_is_one():
    n, size = 60, 16
    rng = np.random.default_rng(0)
    subjects = np.repeat(np.arange(15), 4)
    mask_top = rng.integers(size // 2 - 2, size // 2 + 2, n)
    twins, on = _face_maps(n, size, mask_top, 0.0, seed=1)
    has_twin = np.ones(n, bool)
    has_twin[-1] = False
    # Centre-only attention: the masked copy's map is the twin's, up to noise.
    centred, _ = _face_maps(n, size, mask_top, 0.0, seed=2)
    out = saliency_controls.twin_control({"age_group": centred}, {"age_group": twins},
                                {"on the mask": on}, subjects, has_twin, seed=0)
    diff = out["age_group"]["regions"]["on the mask"]["difference"]
    assert diff["low"] < 0 < diff["high"], diff
    assert out["age_group"]["pairs"] == n - 1 and out["age_group"]["without_twin"] == 1
    # Attention that follows the mask: the difference is above 0.
    pulled, _ = _face_maps(n, size, mask_top, 0.3, seed=2)
    pulled[0] = 0.0  # an all-zero map drops its pair
    out = saliency_controls.twin_control({"age_group": pulled}, {"age_group": twins},
                                {"on the mask": on}, subjects, has_twin, seed=0)
    row = out["age_group"]["regions"]["on the mask"]
    assert row["difference"]["low"] > 0.05, row["difference"]
    assert row["masked"]["value"] > row["twin"]["value"]
    assert out["age_group"]["pairs"] == n - 2 and out["age_group"]["dropped"] == 1
    assert row["masked"]["n"] == row["twin"]["n"] == row["difference"]["n"] == n - 2


def test_twin_rows_link_photos_and_load_twins_reads_them(paired_small_data_dir):
    np.testing.assert_array_equal(saliency_controls.twin_rows([7, 3, 9, 3], [3, 5, 7]),
                                  [2, 0, -1, 0])
    from fgmask_jax.data import pipeline

    source = pipeline.open_split("synthetic_masked_faces/paired_small", "photo_test",
                                 paired_small_data_dir)
    indices = np.arange(min(6, len(source)))
    images, rows = saliency_controls.load_twins("synthetic_masked_faces/paired_small",
                                       paired_small_data_dir, source, indices, 32)
    assert (rows >= 0).all() and images.shape == (rows.max() + 1, 32, 32, 3)
    masked = pipeline.load_all(source, indices, 32)["image"].astype(np.float64)
    on = pipeline.mask_regions(source, indices, 32)
    twins = images[rows].astype(np.float64)
    # The twin is the photo before its mask: alike outside the mask, unlike on it.
    off_mask = np.abs(masked - twins).mean(-1)[~on].mean()
    on_mask = np.abs(masked - twins).mean(-1)[on].mean()
    assert on_mask > 4 * off_mask, (on_mask, off_mask)
    plain = pipeline.open_split("synthetic_masked_faces/paired_small", "unmasked_photo_test",
                                paired_small_data_dir)
    assert "unmasked twins themselves" in saliency_controls.load_twins(
        "synthetic_masked_faces/paired_small", paired_small_data_dir, plain, [0], 32)


def test_no_twins_in_a_dataset_without_them(small_data_dir):
    from fgmask_jax.data import pipeline

    source = pipeline.open_split("synthetic_masked_faces/small", "test", small_data_dir)
    why = saliency_controls.load_twins("synthetic_masked_faces/small", small_data_dir, source,
                                       [0, 1], 32)
    assert isinstance(why, str) and "has none" in why


def test_rank_correlation():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=(3, 5, 5))
    b = np.stack([a[0] * 2, -a[1], 1 - a[2]])  # same order, same |order|, reversed
    np.testing.assert_allclose(saliency_controls.rank_correlation(a, b), [1, 1, -1], atol=1e-12)
    ties = np.zeros((1, 2, 2))
    ties[0, 0, 0] = 1.0  # three tied zeros: their mean rank
    np.testing.assert_allclose(saliency_controls.rank_correlation(ties, ties), [1.0])
    assert np.isnan(saliency_controls.rank_correlation(np.zeros((1, 2, 2)), ties)[0])


def _cnn():
    model = models.create_model("cnn", {"age_group": 4, "gender": 2})
    variables = model.init(jax.random.key(6), _images(5, batch=2))
    return model, jax.device_get(variables)


def test_randomized_top_layers_change_the_maps_and_nothing_else():
    model, variables = _cnn()
    modules = saliency_controls.top_modules("cnn", variables)
    assert modules == [("heads",), ("trunk", "conv3")]
    randomized = saliency_controls.randomize_top(variables, modules, seed=0)
    assert saliency_controls.randomize_top(variables, modules, seed=0)["params"]["heads"]["gender"][
        "logits"]["kernel"].tobytes() == randomized["params"]["heads"]["gender"]["logits"][
        "kernel"].tobytes()  # a fixed seed draws the same
    for name in ("conv1", "conv2"):
        np.testing.assert_array_equal(randomized["params"]["trunk"][name]["kernel"],
                                      variables["params"]["trunk"][name]["kernel"])
    new = randomized["params"]["trunk"]["conv3"]["kernel"]
    assert isinstance(new, np.ndarray) and new.dtype == np.float32
    assert not np.allclose(new, variables["params"]["trunk"]["conv3"]["kernel"])
    x = _images(9, batch=4)
    before = saliency.grad_cam(model, variables, x)
    after = saliency.grad_cam(model, randomized, x)
    for task in before:
        assert not np.allclose(before[task], after[task])
        rho = saliency_controls.rank_correlation(before[task], after[task])
        assert np.nanmean(rho) < 0.9, (task, rho)
    with pytest.raises(ValueError, match="no variables"):
        saliency_controls.randomize_top(variables, [("trunk", "conv9")])


def test_controlled_shares_on_a_tiny_model_with_twins(tmp_path):
    model, variables = _cnn()
    n = 10
    x = np.asarray(_images(11, batch=n))
    top = saliency.rows_above(H, W, H // 2)
    twins = np.asarray(_images(12, batch=4))
    rows = np.array([0, 1, 2, 3, 0, 1, 2, 3, -1, 0])
    numbers, mean_maps = saliency_controls.controlled_shares(
        model, variables, x, np.arange(n) // 2, {"upper": top, "lower": ~top},
        model_name="cnn", twins=(twins, rows), batch_size=4, seed=0, control_images=6,
        ig_steps=4, ig_baseline=("black", np.full((1, 1, 1, 3), -2.0, np.float32)))
    assert set(mean_maps) == {"age_group", "gender"} and mean_maps["gender"].shape == (H, W)
    assert numbers["images"] == n and numbers["persons"] == 5
    assert numbers["twins"]["gender"]["without_twin"] == 1
    assert numbers["controls"] == {"images": 6, "persons": numbers["controls"]["persons"]}
    ig = numbers["integrated_gradients"]
    for task in ("age_group", "gender"):
        shares = [ig["shares"][task]["regions"][r]["value"] for r in ("upper", "lower")]
        assert sum(shares) == pytest.approx(1.0)  # two regions that tile the image
        row = ig["shares"][task]["regions"]["upper"]
        assert row["low"] <= row["value"] <= row["high"] and row["pixels"] == 0.5
        assert isinstance(ig["agreement"][task]["upper"]["agree"], bool)
    md = report.saliency_section(numbers, "saliency_test.png")
    for heading in ("## Where the model looks (test)", "### Control: the unmasked twins",
                    "#### Randomised top layers", "#### A second method: integrated gradients"):
        assert heading in md
    assert "| gender | 10 |" in md and "share upper [95% CI] (pixels)" in md
    import json

    json.dumps(saliency_controls.jsonable(numbers), allow_nan=False)  # strict JSON: nan as null
    without = dict(numbers, twins={"absent": "`x` has none."})
    assert "No control by unmasked twins: `x` has none." in report.saliency_section(
        without, "f.png")
