"""Attribution maps on tiny models whose answer to "where does it look" is known."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgmask_jax import models
from fgmask_jax.evaluation import saliency

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


def test_saliency_section_writes_the_plot_and_shares(tmp_path):
    from fgmask_jax.evaluation import report

    maps = np.zeros((2, H, W))
    maps[:, :4] = 1.0
    top = saliency.rows_above(H, W, H // 2)
    md = report.saliency_section(
        str(tmp_path), np.full((H, W, 3), 0.5), {"gender": saliency.mean_map(maps)},
        shares={"gender": {"top half": saliency.region_share(maps, top),
                           "bottom half": saliency.region_share(maps, ~top)}},
        areas={"top half": 0.5, "bottom half": 0.5})
    assert (tmp_path / "saliency_test.png").read_bytes()[:4] == b"\x89PNG"
    assert "| gender | 2 | 100.0% / 100.0% | 0.0% / 0.0% |" in md
    assert "| (share of the pixels) | | 50.0% | 50.0% |" in md


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
