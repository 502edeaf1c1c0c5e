"""Calibration error and temperature scaling on predictors whose calibration is known."""

import numpy as np
import pytest

from fgmask_jax.evaluation import calibration


def _calibrated(n: int, num_classes: int, seed: int):
    """Probabilities from a Dirichlet, labels drawn from them: calibrated by construction."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(num_classes, 0.5), size=n)
    labels = (rng.random(n)[:, None] > probs.cumsum(-1)).sum(-1)
    return probs, np.minimum(labels, num_classes - 1)


def _overconfident_logits(n: int, seed: int, margin: float = 8.0, accuracy: float = 0.6):
    """3 classes; the top logit leads by ``margin`` (confidence ~0.999), right 60% of the time."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    right = rng.random(n) < accuracy
    top = np.where(right, labels, (labels + rng.integers(1, 3, n)) % 3)
    logits = rng.normal(0, 0.3, (n, 3))
    logits[np.arange(n), top] += margin
    return logits, labels


def test_calibrated_predictor_has_ece_near_zero():
    probs, labels = _calibrated(50_000, 4, seed=0)
    assert calibration.expected_calibration_error(probs, labels) < 0.02


def test_overconfident_predictor_has_large_ece():
    n = 20_000
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, n)
    right = rng.random(n) < 0.6
    top = np.where(right, labels, 1 - labels)
    probs = np.full((n, 2), 0.01)
    probs[np.arange(n), top] = 0.99
    ece = calibration.expected_calibration_error(probs, labels)
    assert ece > 0.3
    assert ece == pytest.approx(0.99 - right.mean(), abs=1e-9)  # one filled bin


def test_reliability_bins_count_and_average():
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.4, 0.6], [0.5, 0.5]])
    labels = np.array([0, 1, 1, 0])
    bins = calibration.reliability_bins(probs, labels, num_bins=5)
    np.testing.assert_array_equal(bins["count"], [0, 0, 2, 0, 2])  # 0.5 is in (0.4, 0.6]
    np.testing.assert_allclose(bins["confidence"][[2, 4]], [0.55, 0.925])
    np.testing.assert_allclose(bins["accuracy"][[2, 4]], [1.0, 0.5])
    assert np.isnan(bins["accuracy"][0])
    assert bins["edges"].shape == (6,)


def test_temperature_never_changes_the_argmax():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 3, (500, 4))
    for t in (0.05, 0.7, 1.0, 3.0, 20.0):
        np.testing.assert_array_equal(
            calibration.apply_temperature(logits, t).argmax(-1), logits.argmax(-1))
    with pytest.raises(ValueError, match="positive"):
        calibration.apply_temperature(logits, 0.0)


def test_fit_on_overconfident_logits_raises_t_and_lowers_ece_and_nll():
    val_logits, val_labels = _overconfident_logits(4000, seed=3)
    test_logits, test_labels = _overconfident_logits(4000, seed=4)
    info = calibration.fit_temperature_info(val_logits, val_labels)
    t = info["temperature"]
    assert t > 1 and not info["at_bound"]
    assert info["nll_scaled"] < info["nll"]
    before = calibration.expected_calibration_error(calibration.softmax(test_logits), test_labels)
    after = calibration.expected_calibration_error(
        calibration.softmax(calibration.apply_temperature(test_logits, t)), test_labels)
    assert before > 0.3 and after < 0.05
    assert (calibration.negative_log_likelihood(test_logits, test_labels, t)
            < calibration.negative_log_likelihood(test_logits, test_labels))


def test_fitted_temperature_is_the_nll_minimum():
    logits, labels = _overconfident_logits(2000, seed=5, margin=3.0, accuracy=0.8)
    t = calibration.fit_temperature(logits, labels)
    nll = calibration.negative_log_likelihood(logits, labels, t)
    for other in (t * 0.97, t * 1.03):
        assert nll < calibration.negative_log_likelihood(logits, labels, other)


def test_separable_data_stops_at_the_lowest_temperature():
    labels = np.arange(30) % 3
    logits = np.eye(3)[labels] * 2.0  # always right: the NLL falls as T -> 0
    info = calibration.fit_temperature_info(logits, labels, bounds=(0.1, 10.0))
    assert info["at_bound"] and info["temperature"] == pytest.approx(0.1)


def test_calibrate_tasks_per_task():
    val = {"gender": _overconfident_logits(3000, seed=6), "age_group": _calibrated(3000, 4, 7)}
    test = {"gender": _overconfident_logits(3000, seed=8), "age_group": _calibrated(3000, 4, 9)}
    logits = {"gender": val["gender"][0], "age_group": np.log(val["age_group"][0])}
    test_logits = {"gender": test["gender"][0], "age_group": np.log(test["age_group"][0])}
    out = calibration.calibrate_tasks(
        logits, {k: v[1] for k, v in val.items()}, test_logits, {k: v[1] for k, v in test.items()})
    assert set(out) == {"gender", "age_group"}
    assert out["gender"]["temperature"] > 1
    assert out["gender"]["ece_scaled"] < out["gender"]["ece"]
    # Log-probabilities of a calibrated predictor need no temperature.
    assert out["age_group"]["temperature"] == pytest.approx(1.0, abs=0.1)
    assert out["age_group"]["n"] == 3000
    assert out["age_group"]["reliability"]["count"].sum() == 3000
    flat = calibration.scalars(out)
    assert "reliability" not in flat["gender"] and "ece" in flat["gender"]
    with pytest.raises(KeyError, match="expression"):
        calibration.calibrate_tasks({}, {}, {"expression": test_logits["gender"]}, {})


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        calibration.expected_calibration_error(np.ones(3), np.zeros(3, int))
    with pytest.raises(ValueError, match="labels must lie"):
        calibration.expected_calibration_error(np.full((2, 2), 0.5), np.array([0, 2]))
    with pytest.raises(ValueError, match="bounds"):
        calibration.fit_temperature(np.zeros((2, 2)), np.zeros(2, int), bounds=(2.0, 1.0))


def test_calibration_section_writes_the_diagram_and_table(tmp_path):
    from fgmask_jax.evaluation import report

    logits, labels = _overconfident_logits(600, seed=10)
    out = calibration.calibrate_tasks({"gender": logits}, {"gender": labels},
                                      {"gender": logits}, {"gender": labels}, num_bins=10)
    (tmp_path / "report.md").write_text("# run\n")
    md = report.calibration_section(str(tmp_path), out)
    png = tmp_path / "reliability_test.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "10 equal-width bins" in md and "](reliability_test.png)" in md
    row = next(line for line in md.splitlines() if line.startswith("| gender"))
    assert f"{out['gender']['temperature']:.3f}" in row and f"{out['gender']['ece']:.3f}" in row
    report.append_sections(str(tmp_path), [md])
    text = (tmp_path / "report.md").read_text()
    assert text.startswith("# run\n") and "## Calibration (test)" in text


def test_ece_interval_resamples_persons_and_holds_the_ece():
    rng = np.random.default_rng(4)
    n, subjects = 600, np.repeat(np.arange(60), 10)
    logits = rng.normal(size=(n, 3)) * 2
    labels = np.where(rng.random(n) < 0.6, logits.argmax(-1), rng.integers(0, 3, n))
    probs = calibration.softmax(logits)
    ece = calibration.expected_calibration_error(probs, labels)
    low, high = calibration.ece_interval(probs, labels, subjects, num_samples=500)
    assert low < ece < high and high - low < 0.2
    # Persons whose images are all right or all wrong: resampling persons, not images,
    # gives the wider interval that such dependent images call for.
    person_right = rng.random(60) < 0.6
    labels = np.where(np.repeat(person_right, 10), logits.argmax(-1),
                      (logits.argmax(-1) + 1) % 3)
    by_person = calibration.ece_interval(probs, labels, subjects, num_samples=500)
    by_image = calibration.ece_interval(probs, labels, np.arange(n), num_samples=500)
    assert by_person[1] - by_person[0] > 1.2 * (by_image[1] - by_image[0])
