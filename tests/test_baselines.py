"""Classical baselines: LBP against scikit-image, PCA against scikit-learn, the VGG-Face
loader, person-grouped cross-validation, leave-persons-out folds, and end-to-end runs."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from skimage.feature import local_binary_pattern
from sklearn.decomposition import PCA as SkPCA

from fgmask_jax import config_lib, models
from fgmask_jax.baselines import classifiers, eigenface, lbp, run, tiny_image, vgg_face

safetensors_numpy = pytest.importorskip("safetensors.numpy")


def _gray_test_images(rng) -> list[np.ndarray]:
    """uint8[B, H, W] batches that exercise ties: noise, few grey levels, ramps."""
    ramp = (np.arange(61)[:, None] + 2 * np.arange(53)[None, :]) // 3
    return [
        rng.integers(0, 256, (3, 29, 31)),
        rng.integers(120, 124, (3, 29, 31)),  # many equal neighbours
        np.stack([ramp % 256, (255 - ramp) % 256, (ramp * 7) % 256]),  # diagonals on the centre
    ]


def _skimage_codes(gray: np.ndarray, method: str) -> np.ndarray:
    return np.stack([local_binary_pattern(g, 8, 1, method) for g in gray]).astype(np.int32)


def test_lbp_circle_codes_equal_scikit_image():
    for gray in _gray_test_images(np.random.default_rng(0)):
        gray = gray.astype(np.uint8)
        ours = np.asarray(jax.jit(lbp.lbp_codes_gray)(jnp.asarray(gray)))
        reference = _skimage_codes(gray, "default")
        np.testing.assert_array_equal(ours[:, 1:-1, 1:-1], reference[:, 1:-1, 1:-1])
        np.testing.assert_array_equal(ours, reference)  # the border too (outside = 0)


def _numpy_square_codes(gray: np.ndarray) -> np.ndarray:
    """The 3x3-block LBP of interior pixels, written out pixel by pixel."""
    # Bit i: the neighbour at i * 45 degrees counter-clockwise from the right.
    offsets = [(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1)]
    b, h, w = gray.shape
    out = np.zeros((b, h - 2, w - 2), np.int32)
    for n in range(b):
        for r in range(1, h - 1):
            for c in range(1, w - 1):
                out[n, r - 1, c - 1] = sum(
                    (int(gray[n, r + dr, c + dc]) >= int(gray[n, r, c])) << i
                    for i, (dr, dc) in enumerate(offsets)
                )
    return out


def test_lbp_square_codes_match_the_3x3_block_and_differ_from_circle():
    gray = np.random.default_rng(1).integers(0, 256, (2, 17, 19)).astype(np.uint8)
    square = np.asarray(lbp.lbp_codes_gray(jnp.asarray(gray), "square"))[:, 1:-1, 1:-1]
    np.testing.assert_array_equal(square, _numpy_square_codes(gray))
    circle = _skimage_codes(gray, "default")[:, 1:-1, 1:-1]
    assert (square != circle).mean() > 0.05


def test_lbp_rejects_unknown_sampling():
    with pytest.raises(ValueError, match="sampling 'disc'"):
        lbp.lbp_codes_gray(jnp.zeros((1, 4, 4), jnp.uint8), "disc")


def test_uniform_codes_equal_scikit_image_nri_uniform():
    table = lbp.uniform_lookup()
    assert table.max() == lbp.NUM_UNIFORM_BINS - 1 == 58
    for gray in _gray_test_images(np.random.default_rng(2)):
        gray = gray.astype(np.uint8)
        codes = np.asarray(lbp.lbp_codes_gray(jnp.asarray(gray)))
        np.testing.assert_array_equal(table[codes], _skimage_codes(gray, "nri_uniform"))


def test_lbp_histograms():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (3, 26, 30, 3)).astype(np.uint8)
    study = np.asarray(lbp.study_histogram(jnp.asarray(images)))
    gray = np.asarray(lbp.grayscale(jnp.asarray(images)))
    for n in range(3):
        codes = _skimage_codes(gray[n : n + 1], "default")[0, 1:-1, 1:-1]
        expected = np.bincount(codes.ravel(), minlength=256) / codes.size
        np.testing.assert_allclose(study[n], expected, atol=1e-6)

    grid = lbp.uniform_grid_histogram(jnp.asarray(images), (3, 4))
    cells = np.asarray(grid).reshape(3, 12, 59)
    np.testing.assert_allclose(cells.sum(-1), 1.0, atol=1e-5)
    # The first cell is the top-left (8 x 7) block of the 24 x 28 interior.
    codes = lbp.uniform_lookup()[_skimage_codes(gray[:1], "default")[0, 1:-1, 1:-1]]
    top_left = np.bincount(codes[:8, :7].ravel(), minlength=59) / 56
    np.testing.assert_allclose(cells[0, 0], top_left, atol=1e-6)

    # Tie-heavy images through the fused, jitted feature: still scikit-image's codes.
    for gray in _gray_test_images(np.random.default_rng(10)):
        rgb = np.repeat(gray.astype(np.uint8)[..., None], 3, axis=-1)  # luma of (v, v, v) is v
        codes = _skimage_codes(gray.astype(np.uint8), "default")[:, 1:-1, 1:-1]
        expected = np.stack([np.bincount(c.ravel(), minlength=256) / c.size for c in codes])
        np.testing.assert_allclose(lbp.study_histogram(jnp.asarray(rgb)), expected, atol=1e-6)


def test_grayscale_is_bt601_luma():
    rgb = np.array([[[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]]], np.uint8)
    np.testing.assert_array_equal(
        np.asarray(lbp.grayscale(jnp.asarray(rgb)))[0, 0], [76, 150, 29, 18]
    )


def test_tiny_image_has_zero_mean_and_unit_norm():
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (4, 40, 36, 3)).astype(np.uint8)
    images[3] = 77  # a flat image has no direction: zeros, not NaN
    x = np.asarray(tiny_image.tiny_image(jnp.asarray(images), 16))
    assert x.shape == (4, 256)
    np.testing.assert_allclose(x[:3].mean(1), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(x[:3], axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(x[3], 0.0)


def test_eigenface_variance_equals_scikit_learn():
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (60, 24, 24, 3)).astype(np.uint8)
    x = np.asarray(eigenface.pixels(jnp.asarray(images), 12))
    pca = eigenface.fit_pca(x, 10)
    reference = SkPCA(n_components=10).fit(x.astype(np.float64))
    np.testing.assert_allclose(pca.explained_variance_ratio, reference.explained_variance_ratio_,
                               atol=1e-4)
    np.testing.assert_allclose(pca.explained_variance, reference.explained_variance_, atol=1e-4)
    whitened = np.asarray(eigenface.project(pca._replace(whiten=True), x))
    np.testing.assert_allclose(whitened.var(0, ddof=1), 1.0, atol=1e-3)


# --- VGG-Face weights ------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A full-size VGG-Face safetensors file (vgg_face_dag names, OIHW), random float16 weights."""
    rng = np.random.default_rng(6)
    tensors = {}
    for name, shape in vgg_face.expected_file_shapes().items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 10
        scale = np.sqrt(6.0 / fan_in)  # uniform He scale: activations keep their size
        tensors[name] = ((rng.random(shape, np.float32) - 0.5) * 2 * scale).astype(np.float16)
    tensors["fc8.weight"] = np.zeros((5, 4096), np.float16)  # the classifier: ignored
    path = str(tmp_path_factory.mktemp("vgg") / "vgg_face.safetensors")
    safetensors_numpy.save_file(tensors, path)
    return path, tensors


def test_vgg_face_loader_sets_the_trunk_weights(vgg_file):
    path, tensors = vgg_file
    params = vgg_face.load_vgg_face(path)
    images = jnp.asarray(np.random.default_rng(7).integers(0, 256, (2, 32, 32, 3)), jnp.uint8)

    # Layout: conv1_1 in Flax equals PyTorch's NCHW/OIHW convolution of the file's weight.
    x = images.astype(jnp.float32) - jnp.asarray(vgg_face.MEAN_RGB)
    flax_conv = models.Conv(64, (3, 3), padding=((1, 1), (1, 1))).apply(
        {"params": params["conv1_1"]}, x)
    torch_conv = lax.conv_general_dilated(
        x.transpose(0, 3, 1, 2), jnp.asarray(tensors["conv1_1.weight"], jnp.float32), (1, 1),
        ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"),
        precision=lax.Precision.HIGHEST,
    ) + jnp.asarray(tensors["conv1_1.bias"], jnp.float32)[:, None, None]
    np.testing.assert_allclose(flax_conv, torch_conv.transpose(0, 2, 3, 1), atol=1e-3)

    # Features: the trunk with the file's weights, fc7 L2-normalised.
    reference = {}
    for layer in vgg_face.flax_param_shapes():
        w = np.asarray(tensors[f"{layer}.weight"], np.float32)
        reference[layer] = {
            "kernel": w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T,
            "bias": np.asarray(tensors[f"{layer}.bias"], np.float32),
        }
    fc7 = vgg_face.trunk().apply({"params": reference}, x, train=False)
    expected = fc7 / np.linalg.norm(fc7, axis=-1, keepdims=True)
    features = vgg_face.fc7_features(params, images)
    assert features.shape == (2, 4096)
    assert float(jnp.abs(fc7).max()) > 0  # a live network, not all-zero features
    np.testing.assert_allclose(features, expected, atol=1e-5)


@pytest.mark.parametrize("tensors, message", [
    ({"conv1_1.weight": np.zeros((64, 3, 5, 5), np.float32)},
     r"'conv1_1.weight' has shape \(64, 3, 5, 5\), expected \(64, 3, 3, 3\)"),
    ({"conv1_1.weight": np.zeros((64, 3, 3, 3), np.float32),
      "conv1_1.bias": np.zeros(64, np.float32)},
     r"'conv1_2.weight' is missing \(expected shape \(64, 64, 3, 3\)\)"),
    ({"features.0.weight": np.zeros((64, 3, 3, 3), np.float32)},
     "unexpected parameter 'features.0.weight'"),
])
def test_vgg_face_loader_rejects_malformed_files(tmp_path, tensors, message):
    path = str(tmp_path / "bad.safetensors")
    safetensors_numpy.save_file(tensors, path)
    with pytest.raises(ValueError, match=message):
        vgg_face.load_vgg_face(path)


def test_vgg_face_loader_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="init_weights"):
        vgg_face.load_vgg_face(str(tmp_path / "none.safetensors"))


# --- cross-validation and leave-persons-out --------------------------------------------


def test_cv_folds_are_grouped_by_person_under_subject_protocols():
    rng = np.random.default_rng(8)
    subjects = rng.integers(0, 15, 200)
    labels = rng.integers(0, 3, 200)
    for protocol in ("subject", "lopo"):
        folds = classifiers.cv_folds(labels, subjects, protocol, 5, seed=0)
        assert len(folds) == 5
        for fit, val in folds:
            assert not set(subjects[fit]) & set(subjects[val])
        np.testing.assert_array_equal(np.sort(np.concatenate([v for _, v in folds])),
                                      np.arange(200))
    study = classifiers.cv_folds(labels, subjects, "study", 5, seed=0)
    shared = [set(subjects[fit]) & set(subjects[val]) for fit, val in study]
    assert all(shared)  # image folds: persons fall on both sides, as in the study
    for _, val in study:  # stratified: each fold's class shares near the overall ones
        np.testing.assert_allclose(np.bincount(labels[val], minlength=3) / len(val),
                                   np.bincount(labels, minlength=3) / 200, atol=0.03)


def test_lopo_folds_never_share_a_person():
    rng = np.random.default_rng(9)
    subjects = rng.integers(0, 12, 150)
    config = config_lib.load("configs/lbp.py:protocol=lopo")
    for n_folds in (0, 5):
        config.lopo_folds = n_folds
        folds = run.folds(config, subjects, np.zeros(150, bool))
        assert len(folds) == (len(np.unique(subjects)) if n_folds == 0 else n_folds)
        for train, test in folds:
            assert not set(subjects[train]) & set(subjects[test])
        np.testing.assert_array_equal(np.sort(np.concatenate([t for _, t in folds])),
                                      np.arange(150))
    config.lopo_folds = 200
    with pytest.raises(ValueError, match="lopo_folds=200"):
        run.folds(config, subjects, np.zeros(150, bool))


def test_vgg_face_config_without_weights_is_the_neural_vgg16():
    config = config_lib.load("configs/vgg_face.py:data=synthetic,runlocal")
    assert config.model == "vgg16" and "method" not in config
    config = config_lib.load("configs/vgg_face.py:weights=/w.safetensors,protocol=lopo")
    assert (config.method, config.init_weights, config.protocol) == (
        "vgg_face", "/w.safetensors", "lopo")
    with pytest.raises(ValueError, match="protocol='loo'"):
        config_lib.load("configs/lbp.py:protocol=loo")


# --- end to end ------------------------------------------------------------------------


@pytest.fixture
def small_data(small_data_dir):
    return small_data_dir


@pytest.mark.parametrize("spec", [
    "configs/lbp.py:data=synthetic,runlocal",
    "configs/lbp.py:data=synthetic,variant=uniform,sampling=square,protocol=subject,runlocal",
    "configs/tiny_image.py:data=synthetic,protocol=lopo,runlocal",
    "configs/eigenface.py:data=synthetic,protocol=subject,whiten,runlocal",
    "configs/vgg_face.py:data=synthetic,protocol=subject,runlocal,weights=",
])
def test_run_and_evaluate_end_to_end(spec, small_data, vgg_file, tmp_path):
    if spec.endswith("weights="):
        spec += vgg_file[0]
    config = config_lib.load(spec)
    if config.method == "vgg_face":
        config.grid = (1.0,)  # one C: logistic regressions on 4,096 features are the slow part
    config.dataset = "synthetic_masked_faces/small"
    config.data_dir = small_data
    config.image_size = 32
    results = run.run_and_evaluate(config, str(tmp_path))

    expected_n = {"study": 15, "subject": 18, "lopo": 60}[config.protocol]
    with open(tmp_path / "results.json") as f:
        saved = json.load(f)
    for task in config.tasks:
        summary = saved["test"][task]
        assert summary["n"] == expected_n
        assert np.sum(summary["confusion"]) == expected_n
        assert 0.0 <= summary["accuracy"] <= 1.0
        assert summary == results["test"][task]
        assert os.path.exists(tmp_path / f"confusion_test_{task}.png")
    report = (tmp_path / "report.md").read_text()
    assert f"protocol={config.protocol}" in report and "| gender | " in report
    assert json.loads((tmp_path / "config.json").read_text())["method"] == config.method
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["test/accuracy_gender"] == pytest.approx(saved["test"]["gender"]["accuracy"])


def test_cv_folds_are_grouped_by_photo_under_the_photo_protocol():
    rng = np.random.default_rng(10)
    photos = np.repeat(np.arange(60), rng.integers(3, 5, 60))  # 3 or 4 copies a photo
    subjects = photos // 6
    labels = rng.integers(0, 3, len(photos))
    folds = classifiers.cv_folds(labels, subjects, "photo", 5, seed=0, photo_ids=photos)
    assert len(folds) == 5
    for fit, val in folds:  # no photo's copies on both sides of a fold
        assert not set(photos[fit]) & set(photos[val])
    assert any(set(subjects[fit]) & set(subjects[val]) for fit, val in folds)  # not by person
    np.testing.assert_array_equal(np.sort(np.concatenate([v for _, v in folds])),
                                  np.arange(len(photos)))
    with pytest.raises(ValueError, match="give photo_ids"):
        classifiers.cv_folds(labels, subjects, "photo", 5, seed=0)


def test_run_and_evaluate_under_the_photo_protocol(paired_small_data_dir, tmp_path):
    config = config_lib.load("configs/lbp.py:data=synthetic_paired,protocol=photo,runlocal")
    config.dataset = "synthetic_masked_faces/paired_small"
    config.data_dir = paired_small_data_dir
    config.image_size = 32
    results = run.run_and_evaluate(config, str(tmp_path))
    assert {results["test"][t]["n"] for t in config.tasks} == {17}  # photo_test
    assert all(s["num_folds"] == 3 for sel in results["selection"].values() for s in sel)
    report = (tmp_path / "report.md").read_text()
    assert "protocol=photo" in report and "grouped by photo" in report
