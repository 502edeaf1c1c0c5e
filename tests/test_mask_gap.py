"""The mask-gap command on the paired 68-image set: four cells, gaps, errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

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
    assert all(r["status"] == "ran" and r["steps"] == 2 for r in out["runs"])
    acc = {(r["task"], r["train"], r["test"]): r for r in out["cells"]}
    assert len(acc) == len(TASKS) * 4  # (masked, unmasked) training x (masked, unmasked) test
    for (task, train, test), r in acc.items():  # the same photos, in two versions
        assert r["n"] == (17 if test == "masked" else 5), (task, train, test)
        assert r["low"] <= r["high"]
    # Each test file holds the model's answers on its split: the twins' labels are those of
    # the masked copies of the same photos.
    masked = np.load(tmp_path / "multitask_cnn" / "masked" / "test_masked.npz")
    twins = np.load(tmp_path / "multitask_cnn" / "masked" / "test_unmasked.npz")
    assert set(masked["subject_id"]) == set(twins["subject_id"])
    for t in TASKS:
        correct = (masked[f"label_{t}"] == masked[f"pred_{t}"]).mean()
        assert acc[t, "masked", "masked"]["value"] == pytest.approx(correct)
    assert len(out["gaps"]) == len(TASKS) * 2
    for g in out["gaps"]:
        assert g["value"] == pytest.approx(acc[g["task"], g["train"], "unmasked"]["value"]
                                           - acc[g["task"], g["train"], "masked"]["value"])
    for c in out["costs"]:
        assert c["value"] == pytest.approx(acc[c["task"], "unmasked", "unmasked"]["value"]
                                           - acc[c["task"], c["train"], "masked"]["value"])
    assert out["sizes"]["masked"]["photos"] == out["sizes"]["unmasked"]["photos"] == 15
    table = (tmp_path / "mask_gap.md").read_text()
    assert "| task | trained on | masked test | unmasked test | gap (unmasked − masked) |" \
        in table
    assert "| gender | unmasked twins |" in table and "--runlocal" in table
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
    n, subject = 60, np.repeat(np.arange(12), 5)
    labels = {t: rng.integers(0, k, n) for t, k in zip(TASKS, (4, 2, 3), strict=True)}
    accuracy = {}
    for cell in cells:
        for test in mask_gap.TESTS:
            folder = tmp_path / cell.folder
            folder.mkdir(parents=True, exist_ok=True)
            preds = {t: np.where(rng.random(n) < 0.7, y, 0) for t, y in labels.items()}
            accuracy[cell.folder, test] = (preds["gender"] == labels["gender"]).mean()
            np.savez(folder / f"test_{test}.npz", subject_id=subject,
                     **{f"label_{t}": y for t, y in labels.items()},
                     **{f"pred_{t}": p for t, p in preds.items()})
    rows, gaps, _ = mask_gap.score(str(tmp_path), cells, num_samples=100, seed=0)
    row = next(r for r in rows if (r["task"], r["train"], r["test"])
               == ("gender", "masked", "unmasked"))
    assert row["seeds"] == 2
    assert row["value"] == pytest.approx(np.mean(
        [accuracy[f, "unmasked"] for f in ("multitask_cnn/masked", "multitask_cnn.seed1/masked")]))
    assert row["low"] <= row["value"] <= row["high"]
    gap = next(g for g in gaps if (g["task"], g["train"]) == ("gender", "masked"))
    assert gap["value"] == pytest.approx(row["value"] - np.mean(
        [accuracy[f, "masked"] for f in ("multitask_cnn/masked", "multitask_cnn.seed1/masked")]))


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
