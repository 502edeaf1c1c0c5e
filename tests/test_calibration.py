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


# --- per group, pooled folds, the temperature's own persons ------------------------------


def _hand_ece(probs, labels, num_bins=15):
    """ECE by a loop over the bins, as Guo et al. define it."""
    top, right = probs.max(-1), probs.argmax(-1) == labels
    total = 0.0
    for k in range(num_bins):
        low, high = k / num_bins, (k + 1) / num_bins
        member = (top > low) & (top <= high) if k else top <= high
        if member.any():
            total += member.sum() * abs(right[member].mean() - top[member].mean())
    return total / len(labels)


def _hand_nll(logits, labels, temperatures):
    z = logits / temperatures[:, None]
    log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels].mean()


def test_per_image_temperatures_and_nll_interval():
    logits, labels = _overconfident_logits(300, seed=11)
    t = np.where(np.arange(300) < 100, 0.5, 3.0)
    scaled = calibration.apply_temperature(logits, t)
    np.testing.assert_allclose(scaled[:100], logits[:100] / 0.5)
    np.testing.assert_allclose(scaled[100:], logits[100:] / 3.0)
    assert calibration.negative_log_likelihood(logits, labels, t) == pytest.approx(
        _hand_nll(logits, labels, t))
    with pytest.raises(ValueError, match="one per row"):
        calibration.apply_temperature(logits, t[:10])
    subjects = np.arange(300) // 5
    judged = calibration.judge(logits, labels, 2.0, subjects)
    low, high = judged["nll_scaled_interval"]
    assert low < judged["nll_scaled"] < high
    assert judged["ece_interval"] == list(calibration.ece_interval(
        calibration.softmax(logits), labels, subjects))


def test_calibration_by_group_rows_sum_to_the_whole():
    logits, labels = _overconfident_logits(240, seed=12)
    subjects = np.arange(240) // 4  # 60 persons
    age_group = (subjects % 3).astype(np.int64)  # codes 0, 1, 2 (no >40)
    kinds = np.array(["cloth", "n95", "surgical"])[np.arange(240) % 3]
    out = calibration.calibration_by_group(
        {"gender": logits}, {"gender": labels}, {"gender": 2.0}, subjects,
        {"age_group": age_group, "mask_kind": kinds},
        group_names={"age_group": ("<=10", "11-20", "21-40", ">40")}, num_bins=10)
    assert list(out["age_group"]) == ["<=10", "11-20", "21-40"]
    assert list(out["mask_kind"]) == ["cloth", "n95", "surgical"]
    for rows in out.values():
        assert sum(r["n"] for r in rows.values()) == 240
    row = out["age_group"]["11-20"]
    member = age_group == 1
    assert row["persons"] == 20
    cell = row["tasks"]["gender"]
    assert cell["ece"] == pytest.approx(_hand_ece(calibration.softmax(logits[member]),
                                                  labels[member], 10))
    assert cell["ece_scaled"] == pytest.approx(_hand_ece(
        calibration.softmax(logits[member] / 2.0), labels[member], 10))
    assert len(cell["ece_interval"]) == 2 and "reliability" not in cell
    with pytest.raises(ValueError, match=r"groups\['age_group'\]"):
        calibration.calibration_by_group({"gender": logits}, {"gender": labels},
                                         {"gender": 2.0}, subjects, {"age_group": age_group[:5]})


def _config(**overrides):
    import types

    return types.SimpleNamespace(**{"tasks": ("gender",), "split_seed": 0,
                                    "dataset": "fgnet_mask", **overrides})


def test_pooled_folds_each_take_their_own_temperature():
    from fgmask_jax.evaluation import report
    from fgmask_jax.train import fit, lopo

    # Two folds, interleaved by dataset index: fold 1 overconfident (its T = 3), fold 2
    # underconfident (its T = 0.4).
    (z1, y1), (z2, y2) = _overconfident_logits(120, seed=13), _overconfident_logits(80, seed=14)
    z2 = z2 / 20.0
    index1, index2 = np.arange(0, 240, 2)[:120], np.arange(1, 160, 2)
    folds = [{"index": index1, "subject_id": index1 // 4, "label_gender": y1,
              "pred_gender": z1.argmax(-1), "logits_gender": z1},
             {"index": index2, "subject_id": index2 // 4, "label_gender": y2,
              "pred_gender": z2.argmax(-1), "logits_gender": z2}]
    results = [{"calibration": {"gender": {"temperature": 3.0, "at_bound": False}},
                "calibration_subsets": {"split": True}},
               {"calibration": {"gender": {"temperature": 0.4, "at_bound": True}},
                "calibration_subsets": {"split": False}}]
    pooled = lopo.pool(folds, results, ("gender",))
    assert np.all(np.diff(pooled["index"]) > 0)
    groups = {"age_group": pooled["index"] % 4}
    out = lopo.pooled_calibration(_config(), pooled, results, groups)

    # By hand: each fold's logits over its own T, then every image pooled.
    z, y = np.concatenate([z1, z2]), np.concatenate([y1, y2])
    t = np.concatenate([np.full(120, 3.0), np.full(80, 0.4)])
    gender = out["tasks"]["gender"]
    assert gender["fold_temperatures"] == [3.0, 0.4] and gender["folds_at_bound"] == 1
    assert gender["n"] == 200
    assert gender["ece"] == pytest.approx(_hand_ece(calibration.softmax(z), y))
    assert gender["ece_scaled"] == pytest.approx(_hand_ece(calibration.softmax(z / t[:, None]), y))
    assert gender["nll_scaled"] == pytest.approx(_hand_nll(z, y, t))
    for single in (3.0, 0.4):  # neither fold's temperature alone gives the pooled NLL
        assert abs(gender["nll_scaled"] - _hand_nll(z, y, np.full(200, single))) > 1e-3
    assert "1 of 2 folds" in out["note"]
    assert sum(r["n"] for r in out["by_group"]["age_group"].values()) == 200
    assert out["by_group_skipped"] == {"mask_kind": "fgnet_mask does not record each "
                                                    "image's mask_kind"}
    md = report.calibration_group_section(out["by_group"], out["by_group_skipped"])
    assert "No table by mask_kind: fgnet_mask does not record" in md
    assert any(line.startswith("| <=10 | 60 | 60 |") for line in md.splitlines())
    assert "3.000 to 0.400" not in report.format_calibration(out["tasks"])
    assert "0.400 to 3.000 (2 folds)" in report.format_calibration(out["tasks"])
    # A fold without a temperature (an older run): no pooled calibration.
    assert lopo.pooled_calibration(_config(), lopo.pool(folds, [{}, results[1]], ("gender",)),
                                   results, groups) is None
    assert fit.CALIBRATION_GROUPS == ("age_group", "mask_kind")


def test_the_temperature_half_and_the_stop_half_share_no_person():
    from fgmask_jax.train import fit

    subjects = np.repeat(np.array([3, 8, 11, 14, 20, 21, 40]), [2, 3, 1, 4, 2, 2, 3])
    stop, held = fit.stop_temperature_split(subjects, seed=0)
    assert not set(subjects[stop]) & set(subjects[held])
    np.testing.assert_array_equal(np.sort(np.concatenate([stop, held])), np.arange(17))
    assert len(set(subjects[stop])) == 4 and len(set(subjects[held])) == 3  # stop: the larger
    again = fit.stop_temperature_split(subjects, seed=0)
    np.testing.assert_array_equal(again[0], stop)
    np.testing.assert_array_equal(again[1], held)
    draws = {tuple(sorted(set(subjects[fit.stop_temperature_split(subjects, s)[1]])))
             for s in range(8)}
    assert len(draws) > 1  # the split seed moves it
    assert fit.stop_temperature_split(np.array([1, 1, 2, 5]), seed=0) is None  # 3 persons


def test_split_validation_records_the_persons_or_why_it_could_not_split():
    from fgmask_jax.data import pipeline
    from fgmask_jax.train import fit

    class Source:
        def __init__(self, subjects):
            self.subjects = subjects

        def __len__(self):
            return len(self.subjects)

        def __getitems__(self, ix):
            return [{**{k: 0 for k in pipeline.LABEL_KEYS}, "subject_id": self.subjects[i]}
                    for i in ix]

    source = Source([7, 7, 9, 9, 9, 2, 5, 5, 6, 6])
    val = np.array([0, 1, 2, 3, 4, 6, 7, 8, 9])  # persons 7, 9, 5, 6
    stop, held, subsets = fit.split_validation(_config(split_seed=3), source, val)
    assert subsets["split"] and not set(stop) & set(held)
    assert set(stop) | set(held) == set(val)
    assert subsets["stop"]["images"] + subsets["temperature"]["images"] == 9
    assert sorted(subsets["stop"]["persons"] + subsets["temperature"]["persons"]) == [5, 6, 7, 9]
    assert "did not choose the checkpoint" in subsets["note"]
    stop, held, subsets = fit.split_validation(_config(), source, np.array([0, 2, 5]))
    assert not subsets["split"]
    np.testing.assert_array_equal(stop, held)
    assert subsets["note"].startswith("temperature fitted on the checkpoint-selection subset: "
                                      "too few persons to split (3 persons in validation")
