"""The mask-gap command on the paired 68-image set: four cells, gaps, errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from fgmask_jax.evaluation import bootstrap
from fgmask_jax.experiments import mask_gap

TASKS = ("age_group", "gender", "expression")
TINY = {"image_size": 32, "batch_size": 8, "num_train_steps": 2, "eval_every_steps": 2,
        "checkpoint_every_steps": 2, "warmup_epochs": 0.0, "log_every_steps": 1,
        "saliency_images": 0}


def test_mask_gap_trains_four_cells_and_its_gaps_are_their_differences(
        paired_small_data_dir, tmp_path):
    out = mask_gap.run_mask_gap(
        str(tmp_path), protocol="photo", methods=("multitask_cnn",), runlocal=True,
        one_copy=False, dataset="synthetic_masked_faces/paired_small",
        data_dir=paired_small_data_dir, neural_overrides=TINY, num_samples=100,
        command="python -m fgmask_jax.mask_gap --runlocal")
    assert [r["folder"] for r in out["runs"]] == ["multitask_cnn/masked",
                                                  "multitask_cnn/unmasked"]
    # TINY sets eval_every_steps=2 itself: kept, the same for both training sets.
    assert all(r["status"] == "ran" and r["steps"] == 2 and r["eval_every"] == 2
               and r["checks"] == 1 for r in out["runs"])
    acc = {(r["task"], r["train"], r["test"]): r for r in out["cells"]}
    assert len(acc) == len(TASKS) * 4  # (masked, unmasked) training x (masked, unmasked) test
    for (task, train, test), r in acc.items():  # the same photos, in two versions
        assert r["n"] == (17 if test == "masked" else 5), (task, train, test)
        assert r["photos"] == 5
        assert r["low"] <= r["high"]
    # Each test file holds the model's answers on its split: the twins' labels are those of
    # the masked copies of the same photos.
    masked = np.load(tmp_path / "multitask_cnn" / "masked" / "test_masked.npz")
    twins = np.load(tmp_path / "multitask_cnn" / "masked" / "test_unmasked.npz")
    assert set(masked["subject_id"]) == set(twins["subject_id"])
    from fgmask_jax.data import pipeline

    photo = pipeline.read_labels(pipeline.open_split(
        "synthetic_masked_faces/paired_small", "photo_test", paired_small_data_dir))["photo_id"]
    photo = photo[masked["index"]]
    for t in TASKS:  # each photo once: the mean over photos of its copies' share right
        right = masked[f"label_{t}"] == masked[f"pred_{t}"]
        per_photo = [right[photo == q].mean() for q in np.unique(photo)]
        assert acc[t, "masked", "masked"]["value"] == pytest.approx(np.mean(per_photo))
        assert acc[t, "masked", "masked"]["image_accuracy"] == pytest.approx(right.mean())
    assert len(out["gaps"]) == len(TASKS) * 2
    for g in out["gaps"]:
        assert g["value"] == pytest.approx(acc[g["task"], g["train"], "unmasked"]["value"]
                                           - acc[g["task"], g["train"], "masked"]["value"])
        assert 0 <= g["p"] <= g["p_holm"] <= 1
    for c in out["costs"]:
        assert c["value"] == pytest.approx(acc[c["task"], "unmasked", "unmasked"]["value"]
                                           - acc[c["task"], c["train"], "masked"]["value"])
    assert out["sizes"]["masked"]["photos"] == out["sizes"]["unmasked"]["photos"] == 15
    table = (tmp_path / "mask_gap.md").read_text()
    assert "| task | trained on | masked test | unmasked test | gap (unmasked − masked) " \
        "| excludes 0 | after Holm |" in table
    assert "| gender | unmasked twins |" in table and "--runlocal" in table
    assert "each test photo counts once" in table and "paired by photo" in table
    assert "of these 9 gaps and costs exclude" in table and "a check every" in table
    saved = json.loads((tmp_path / "mask_gap.json").read_text())
    assert len(saved["cells"]) == 12 and len(saved["gaps"]) == 6
    # A second call runs nothing again.
    again = mask_gap.run_mask_gap(
        str(tmp_path), protocol="photo", methods=("multitask_cnn",), runlocal=True,
        one_copy=False, dataset="synthetic_masked_faces/paired_small",
        data_dir=paired_small_data_dir, neural_overrides=TINY, num_samples=100)
    assert [r["status"] for r in again["runs"]] == ["skipped", "skipped"]
    assert [g["value"] for g in again["gaps"]] == [g["value"] for g in out["gaps"]]


def test_one_copy_per_photo_draws_one_image_of_every_photo():
    photos = np.array([3, 3, 3, 7, 7, 7, 7, 9, 9, 9])
    ix = mask_gap.one_copy_per_photo(photos, seed=1)
    assert sorted(photos[ix]) == [3, 7, 9]
    assert np.array_equal(ix, mask_gap.one_copy_per_photo(photos, seed=1))
    draws = {tuple(mask_gap.one_copy_per_photo(photos, seed=s)) for s in range(10)}
    assert len(draws) > 1  # a random copy, not always the first


def test_plan_cells():
    cells = mask_gap.plan("subject", methods=("multitask_cnn", "single_task_cnn"))
    assert [c.folder for c in cells] == [  # in the study's order of methods
        *(f"single_task_cnn/{task}/{t}" for task in TASKS for t in mask_gap.TRAININGS),
        *(f"multitask_cnn/{t}" for t in mask_gap.TRAININGS)]
    assert mask_gap.splits_of("photo") == {
        "train": "photo_train", "test": "photo_test",
        "unmasked_train": "unmasked_photo_train", "unmasked_test": "unmasked_photo_test"}


def test_seeds_are_scored_together_on_the_same_test_images(tmp_path):
    cells = mask_gap.plan("photo", methods=("multitask_cnn",), seeds=2, one_copy=False)
    assert [c.folder for c in cells] == ["multitask_cnn/masked", "multitask_cnn/unmasked",
                                         "multitask_cnn.seed1/masked",
                                         "multitask_cnn.seed1/unmasked"]
    rng = np.random.default_rng(0)
    subject = np.repeat(np.arange(12), 5)
    # Masked test: 60 images, 2 or 3 copies of 24 photos; unmasked: one twin of each.
    photo = np.repeat(np.arange(24), [3, 2] * 12)
    twin_subject = subject[np.unique(photo, return_index=True)[1]]
    labels = {t: rng.integers(0, k, 24) for t, k in zip(TASKS, (4, 2, 3), strict=True)}
    accuracy = {}
    for cell in cells:
        for test in mask_gap.TESTS:
            folder = tmp_path / cell.folder
            folder.mkdir(parents=True, exist_ok=True)
            ids = photo if test == "masked" else np.arange(24)
            y = {t: v[ids] for t, v in labels.items()}
            preds = {t: np.where(rng.random(len(ids)) < 0.7, v, 0) for t, v in y.items()}
            right = preds["gender"] == y["gender"]
            accuracy[cell.folder, test] = np.mean([right[ids == q].mean() for q in range(24)])
            np.savez(folder / f"test_{test}.npz", index=np.arange(len(ids)),
                     subject_id=subject if test == "masked" else twin_subject,
                     **{f"label_{t}": v for t, v in y.items()},
                     **{f"pred_{t}": p for t, p in preds.items()})
    rows, gaps, costs = mask_gap.score(str(tmp_path), cells,
                                       {"masked": photo, "unmasked": np.arange(24)},
                                       num_samples=100, seed=0)
    row = next(r for r in rows if (r["task"], r["train"], r["test"])
               == ("gender", "masked", "masked"))
    assert row["seeds"] == 2 and row["photos"] == 24 and row["n"] == 60
    assert row["value"] == pytest.approx(np.mean(
        [accuracy[f, "masked"] for f in ("multitask_cnn/masked", "multitask_cnn.seed1/masked")]))
    assert row["low"] <= row["value"] <= row["high"]
    gap = next(g for g in gaps if (g["task"], g["train"]) == ("gender", "masked"))
    assert gap["value"] == pytest.approx(np.mean(
        [accuracy[f, "unmasked"] - accuracy[f, "masked"]
         for f in ("multitask_cnn/masked", "multitask_cnn.seed1/masked")]))
    # Holm over the 6 gaps and 3 costs: adjusted p-values never below the raw ones.
    assert len(gaps) + len(costs) == 9
    assert all(d["p"] <= d["p_holm"] for d in gaps + costs)
    with pytest.raises(ValueError, match="has no 'index'"):
        mask_gap._photos_of({}, photo, "x.npz")


def test_differences_are_paired_by_photo_and_resample_persons():
    rng = np.random.default_rng(5)
    subject = np.repeat(np.arange(10), 6)  # 10 persons, 2 photos each, 3 copies a photo
    photo = np.repeat(np.arange(20), 3)
    masked = rng.random((1, 60)) < 0.6
    twins = rng.random((1, 20)) < 0.8
    twin_subject = np.repeat(np.arange(10), 2)
    d = bootstrap.difference_test((twins, twin_subject, np.arange(20)),
                                  (masked, subject, photo), num_samples=400, seed=1)
    per_photo = twins[0] - masked[0].reshape(20, 3).mean(1)
    assert d["value"] == pytest.approx(per_photo.mean())
    assert d["low"] <= d["value"] <= d["high"] and 0 <= d["p"] <= 1
    # A photo with more copies weighs no more: two copies of photo 0 added, both wrong.
    more = np.concatenate([masked, [[False, False]]], 1)
    heavier = bootstrap.difference_test(
        (twins, twin_subject, np.arange(20)),
        (more, np.append(subject, [0, 0]), np.append(photo, [0, 0])), num_samples=10)
    first = masked[0, :3].sum() / 5  # photo 0 now has 5 copies: its share right
    assert heavier["value"] == pytest.approx(
        per_photo.mean() + (masked[0, :3].mean() - first) / 20)
    # The same models on both sides: the seeds' draw is shared, so a model-wide shift
    # (each seed's masked accuracy moved by the same amount on both tests) cancels.
    seeds = rng.random((4, 60)) < np.linspace(0.3, 0.9, 4)[:, None]
    same = bootstrap.difference_test((seeds, subject), (seeds, subject), num_samples=200,
                                     same_models=True)
    assert same["low"] == same["high"] == same["value"] == 0 and same["p"] == 1
    apart = bootstrap.difference_test((seeds, subject), (seeds, subject), num_samples=200)
    assert apart["high"] - apart["low"] > 0.05
    with pytest.raises(ValueError, match="photo ids on one side only"):
        bootstrap.difference_test((twins, twin_subject, np.arange(20)), (masked, subject))


def test_holm_and_the_bootstrap_p_value():
    assert bootstrap.bootstrap_p_value(np.array([0.1, 0.2, 0.3, -0.1])) == 0.5
    assert bootstrap.bootstrap_p_value(np.array([0.1, 0.2, np.nan])) == 0.0
    assert bootstrap.bootstrap_p_value(np.zeros(5)) == 1.0
    assert np.isnan(bootstrap.bootstrap_p_value(np.array([np.nan])))
    out = bootstrap.holm([0.01, 0.04, 0.03, np.nan, 0.5])
    # Sorted 0.01, 0.03, 0.04, 0.5 against m = 4: 4 x 0.01, then max(., 3 x 0.03), ...
    assert np.allclose(out["adjusted"], [0.04, 0.09, 0.09, np.nan, 0.5], equal_nan=True)
    assert out["excludes_0"].tolist() == [True, False, False, False, False]
    assert out["tests"] == 4 and out["by_chance"] == pytest.approx(0.2)
    assert bootstrap.holm([])["tests"] == 0


def test_photo_accuracy_counts_each_photo_once():
    correct = np.array([[1, 1, 0, 1, 0, 0, 1]], bool)
    subject = np.array([0, 0, 0, 1, 1, 1, 1])
    photo = np.array([0, 0, 0, 1, 1, 2, 2])  # shares right: 2/3, 1/2, 1/2
    out = bootstrap.photo_accuracy(correct, subject, photo, num_samples=200)
    assert out["value"] == pytest.approx((2 / 3 + 0.5 + 0.5) / 3)
    assert (out["n"], out["photos"], out["persons"], out["seeds"]) == (7, 3, 2, 1)
    assert out["low"] <= out["value"] <= out["high"]
    assert mask_gap.photo_majority_rate(np.array([1, 1, 1, 0, 0, 0, 0]), photo) == \
        pytest.approx(2 / 3)


def test_every_training_set_gets_the_all_copies_schedule():
    import ml_collections

    small = ml_collections.ConfigDict({"eval_every_steps": 0, "warmup_epochs": 1.0})
    mask_gap.same_schedule(small, masked_per_epoch=71, own_per_epoch=21)
    assert small.eval_every_steps == 71  # checks every all-copies epoch, not its own
    assert int(small.warmup_epochs * 21) == 71  # the trainer's warmup, in steps
    asked = ml_collections.ConfigDict({"eval_every_steps": 5, "warmup_epochs": 0.0})
    mask_gap.same_schedule(asked, masked_per_epoch=71, own_per_epoch=21)
    assert (asked.eval_every_steps, asked.warmup_epochs) == (5, 0.0)
    assert [mask_gap.checks_of(355, e) for e in (71, 100)] == [5, 4]
    with pytest.raises(ValueError, match="twins must be those of the masked copies"):
        mask_gap.check_same_photos({"masked": np.array([1, 1, 2]),
                                    "unmasked": np.array([1, 3])})


@pytest.mark.parametrize("kwargs, message", [
    ({"protocol": "study"}, "protocol='study' is not one of: photo, subject"),
    ({"methods": ("lbp",)}, "methods ['lbp']: choose from multitask_cnn"),
    ({"data": "fgnet_mask"}, "only synthetic_paired and fgnet_paired have them"),
])
def test_bad_arguments_are_refused(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        mask_gap.run_mask_gap(str(tmp_path), **kwargs)


@pytest.mark.parametrize("args, message", [
    (["--methods=lbp"], "methods ['lbp']: choose from multitask_cnn"),
    (["--protocol=study"], "flag --protocol=study: value should be one of"),
])
def test_bad_arguments_are_one_line_errors_that_exit_2(args, message, tmp_path):
    result = subprocess.run([sys.executable, "-m", "fgmask_jax.mask_gap",
                             f"--workdir={tmp_path}", *args],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
