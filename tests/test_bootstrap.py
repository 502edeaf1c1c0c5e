"""The person bootstrap: agreement with metrics.summarize, coverage, width, determinism, speed."""

import time

import numpy as np
import pytest

from fgmask_jax.evaluation import bootstrap, metrics


def _noisy_predictions(rng, n_persons=40, per_person=6, num_classes=3, error=0.3):
    """Labels, predictions (wrong with probability ``error``) and subject ids, int64[N] each."""
    subject = np.repeat(np.arange(n_persons), per_person)
    y = rng.integers(0, num_classes, subject.size)
    wrong = rng.random(subject.size) < error
    pred = np.where(wrong, (y + rng.integers(1, num_classes, subject.size)) % num_classes, y)
    return y, pred, subject


def test_metrics_from_confusions_equal_summarize():
    rng = np.random.default_rng(0)
    for num_classes in (2, 3, 4):
        y = rng.integers(0, num_classes, 50)
        pred = rng.integers(0, num_classes - 1, 50)  # one class never predicted
        y[y == 0] = 1  # and class 0 never true
        cm = metrics.confusion_matrix(y, pred, num_classes)
        ours = bootstrap.metrics_from_confusions(cm[None])
        reference = metrics.summarize(y, pred, num_classes)
        for m in bootstrap.METRICS:
            assert ours[m].shape == (1,)
            assert ours[m][0] == pytest.approx(reference[m], abs=1e-12)


def test_point_values_are_summarize_and_intervals_contain_them():
    y, pred, subject = _noisy_predictions(np.random.default_rng(1))
    out = bootstrap.person_bootstrap(y, pred, subject, 3, num_samples=500)
    reference = metrics.summarize(y, pred, 3)
    assert out["n"] == y.size and out["persons"] == 40 and out["num_samples"] == 500
    assert out["majority_rate"] == reference["majority_rate"]
    for m in bootstrap.METRICS:
        r = out[m]
        assert r["value"] == reference[m]
        assert r["low"] < r["value"] < r["high"]
        assert 0.05 < r["high"] - r["low"] < 0.5


def test_a_perfect_predictor_has_the_interval_one_to_one():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 300)
    out = bootstrap.person_bootstrap(y, y, rng.integers(0, 30, 300), 4, num_samples=200)
    for m in bootstrap.METRICS:
        assert (out[m]["value"], out[m]["low"], out[m]["high"]) == (1.0, 1.0, 1.0)


def test_one_image_per_person_matches_an_image_bootstrap_in_distribution():
    rng = np.random.default_rng(3)
    n = 400
    y, pred, _ = _noisy_predictions(rng, n_persons=n, per_person=1, error=0.25)
    out = bootstrap.person_bootstrap(y, pred, np.arange(n), 3, num_samples=4000, seed=5)
    # A plain bootstrap over images, written out draw by draw.
    draws = np.random.default_rng(11).integers(0, n, (4000, n))
    image_acc = (y[draws] == pred[draws]).mean(1)
    low, high = np.percentile(image_acc, [2.5, 97.5])
    acc = out["accuracy"]
    assert acc["low"] == pytest.approx(low, abs=0.01)
    assert acc["high"] == pytest.approx(high, abs=0.01)
    # And both agree with the binomial standard error of the accuracy.
    se = np.sqrt(acc["value"] * (1 - acc["value"]) / n)
    assert (acc["high"] - acc["low"]) == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_intervals_widen_when_fewer_persons_carry_the_same_images():
    y, pred, _ = _noisy_predictions(np.random.default_rng(4), n_persons=600, per_person=1)
    many = bootstrap.person_bootstrap(y, pred, np.arange(600), 3, num_samples=1000)
    # The same images, now 20 persons of 30 images each, whose errors cluster by person.
    order = np.argsort(y == pred, kind="stable")
    few_subjects = np.empty(600, np.int64)
    few_subjects[order] = np.repeat(np.arange(20), 30)
    few = bootstrap.person_bootstrap(y, pred, few_subjects, 3, num_samples=1000)
    for m in bootstrap.METRICS:
        assert few[m]["value"] == many[m]["value"]
        width_few = few[m]["high"] - few[m]["low"]
        width_many = many[m]["high"] - many[m]["low"]
        assert width_few > 2 * width_many, (m, width_few, width_many)


def test_a_person_drawn_twice_counts_twice():
    # Three persons of one image each: A right, B and C wrong. A sample's accuracy is
    # k/3 with k ~ Binomial(3, 1/3): P = 8/27, 12/27, 6/27, 1/27 for 0, 1/3, 2/3, 1. Had
    # a person drawn twice counted once, {A, A, B} would score 1/2, and 1/3 would only
    # come from {A, B, C} (6/27), putting the 65th percentile at 1/2.
    y = np.array([0, 0, 0])
    pred = np.array([0, 1, 1])
    subject = np.array([3, 5, 9])
    out = bootstrap.person_bootstrap(y, pred, subject, 2, num_samples=20000, confidence=0.3)
    assert out["accuracy"]["value"] == pytest.approx(1 / 3)
    assert out["accuracy"]["low"] == out["accuracy"]["high"] == pytest.approx(1 / 3)
    out = bootstrap.person_bootstrap(y, pred, subject, 2, num_samples=20000, confidence=0.9)
    assert (out["accuracy"]["low"], out["accuracy"]["high"]) == (0.0, pytest.approx(2 / 3))


def test_the_same_seed_gives_the_same_intervals_and_another_seed_others():
    y, pred, subject = _noisy_predictions(np.random.default_rng(6))
    a = bootstrap.person_bootstrap(y, pred, subject, 3, seed=1)
    b = bootstrap.person_bootstrap(y, pred, subject, 3, seed=1)
    c = bootstrap.person_bootstrap(y, pred, subject, 3, seed=2)
    assert a == b
    assert a["macro_f1"] != c["macro_f1"]


def test_a_thousand_samples_over_3404_images_take_well_under_a_second():
    rng = np.random.default_rng(7)
    y, pred, subject = _noisy_predictions(rng, n_persons=82, per_person=42, num_classes=4)
    y, pred, subject = y[:3404], pred[:3404], subject[:3404]
    bootstrap.person_bootstrap(y, pred, subject, 4, num_samples=10)  # warm up
    t0 = time.perf_counter()
    bootstrap.person_bootstrap(y, pred, subject, 4, num_samples=1000)
    assert time.perf_counter() - t0 < 0.5


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="one length"):
        bootstrap.person_bootstrap([0, 1], [0], [0, 1], 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        bootstrap.person_bootstrap([0, 2], [0, 1], [0, 1], 2)
    with pytest.raises(ValueError, match="no images"):
        bootstrap.person_bootstrap([], [], [], 2)
    with pytest.raises(ValueError, match="confidence=1.5"):
        bootstrap.person_bootstrap([0], [0], [0], 2, confidence=1.5)


def test_training_seeds_add_their_spread_and_one_seed_changes_nothing():
    rng = np.random.default_rng(3)
    y, subject = rng.integers(0, 3, 240), rng.integers(0, 40, 240)
    one = np.where(rng.random(240) < 0.7, y, (y + 1) % 3)
    other = np.where(rng.random(240) < 0.6, y, (y + 2) % 3)
    alone = bootstrap.person_bootstrap(y, one, subject, 3, num_samples=400)
    assert bootstrap.person_bootstrap(y, one[None], subject, 3, num_samples=400) == alone
    # Twice the same model: the same numbers, no spread.
    twice = bootstrap.person_bootstrap(y, np.stack([one, one]), subject, 3, num_samples=400)
    for m in bootstrap.METRICS:
        assert twice[m] == {**alone[m], "sd": 0.0}
    # Two models: their mean, their spread, and an interval around the mean.
    both = bootstrap.person_bootstrap(y, np.stack([one, other]), subject, 3, num_samples=400)
    accuracies = [(one == y).mean(), (other == y).mean()]
    assert both["seeds"] == 2
    assert both["accuracy"]["value"] == pytest.approx(np.mean(accuracies))
    assert both["accuracy"]["sd"] == pytest.approx(np.std(accuracies, ddof=1))
    assert both["accuracy"]["low"] < np.mean(accuracies) < both["accuracy"]["high"]
    # The paired difference of two sides with seeds: their mean accuracies.
    d = bootstrap.difference_test((np.stack([one == y, other == y]), subject),
                                  (other == y, subject), num_samples=400)
    assert d["value"] == pytest.approx(np.mean(accuracies) - accuracies[1])
    assert d["low"] < d["value"] < d["high"]


def test_the_two_level_interval_covers_a_known_difference_and_widens_with_seed_spread():
    # 200 simulated comparisons of two methods on 30 persons of 8 images each, 3 training
    # seeds a side: a person's difficulty is shared by both methods, each seed shifts its
    # side's accuracy (sd 2.5 points, about what our networks' seeds show), and each image
    # is right or wrong at random given those. The true difference is 10 points.
    rng = np.random.default_rng(0)
    persons, per_person, seeds, delta = 30, 8, 3, 0.10
    subject = np.repeat(np.arange(persons), per_person)

    def side(accuracy, person, seed_sd):
        p = np.clip(accuracy + person[None] + rng.normal(0, seed_sd, (seeds, 1)), 0, 1)
        return rng.random((seeds, subject.size)) < p

    def persons_only(correct):  # the seeds' images side by side: no seed is drawn again
        return correct.reshape(-1), np.tile(subject, seeds)

    two_level, one_level, wider = 0, 0, 0
    for s in range(200):
        person = rng.uniform(-0.15, 0.15, persons)[subject]
        a, b = side(0.65 + delta, person, 0.025), side(0.65, person, 0.025)
        d = bootstrap.difference_test((a, subject), (b, subject), num_samples=500, seed=s)
        flat = bootstrap.difference_test(persons_only(a), persons_only(b), num_samples=500,
                                         seed=s)
        assert d["value"] == pytest.approx(flat["value"])
        two_level += d["low"] <= delta <= d["high"]
        one_level += flat["low"] <= delta <= flat["high"]
        wider += d["high"] - d["low"] > flat["high"] - flat["low"]
    assert 0.90 <= two_level / 200 <= 0.99  # 0.98 here
    assert one_level < two_level  # persons alone miss the seeds' spread (0.86 here)
    assert wider == 200
    # Seeds that agree image for image add nothing: the interval is the persons-only one.
    same = np.repeat(a[:1], seeds, axis=0)
    agree = bootstrap.difference_test((same, subject), (b[:1], subject), num_samples=500)
    stacked = bootstrap.difference_test(persons_only(same), (b[0], subject), num_samples=500)
    for key in ("value", "low", "high"):
        assert agree[key] == pytest.approx(stacked[key], abs=1e-12)
