"""The whole run, end to end on the 60-image synthetic set: report, resume, failures."""

import json
import os

import jax
import numpy as np
import pytest

from fgmask_jax import checkpointing, config_lib, train
from fgmask_jax.data import pipeline

TASKS = ("age_group", "gender", "expression")


def tiny_config(data_dir, **overrides):
    c = config_lib.neural_config("data=synthetic,model=resnet_tiny,size=32", tasks=TASKS)
    c.dataset = "synthetic_masked_faces/small"
    c.data_dir = data_dir
    c.batch_size = 8
    c.num_train_steps = 6
    c.eval_every_steps = 3
    c.checkpoint_every_steps = 3
    c.warmup_epochs = 0.0
    c.log_every_steps = 2
    c.saliency_images = 0  # the report's saliency section is tested once, below
    c.update(overrides)
    return c


def _numpy(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def final_state(workdir):
    """(step, state as numpy, meta) of the run's newest checkpoint, whatever devices and
    processes saved it."""
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
    step = ckpt.latest_step()
    state, meta = ckpt.restore_here(step)
    ckpt.close()
    return step, jax.tree.map(_numpy, state), meta


def test_train_and_evaluate_writes_metrics_checkpoints_and_report(small_data_dir, tmp_path):
    results = train.train_and_evaluate(
        tiny_config(small_data_dir, saliency_images=256, profile_steps=(2, 3)), str(tmp_path))

    assert results["steps"] == 6
    # The profiler's trace of steps 2..3, for TensorBoard's profile plugin or Perfetto.
    traces = [n for _, _, names in os.walk(tmp_path / "profile") for n in names]
    assert any(n.endswith(".xplane.pb") for n in traces), traces
    test = results["test"]
    assert set(test) == set(TASKS)
    assert sum(test["gender"]["confusion"][0]) + sum(test["gender"]["confusion"][1]) == 15
    for r in test.values():
        assert r["n"] == 15 and 0 <= r["accuracy"] <= 1 and np.isfinite(r["loss"])
    names = set(os.listdir(tmp_path))
    assert {"config.json", "metrics.jsonl", "report.md", "results.json", "tensorboard"} <= names
    assert {f"confusion_test_{t}.png" for t in TASKS} <= names
    assert os.listdir(tmp_path / "tensorboard")
    assert json.loads((tmp_path / "config.json").read_text())["model"] == "resnet_tiny"
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "train/loss" in x] == [2, 4, 6]
    assert [x["step"] for x in lines if "val/accuracy_gender" in x] == [3, 6]
    assert any("test/macro_f1_expression" in x for x in lines)
    report = (tmp_path / "report.md").read_text()
    assert "| gender | 15 |" in report and "majority rate" in report
    assert final_state(tmp_path)[0] == 6
    # Calibration (temperature fitted on the validation persons that did not pick the
    # checkpoint, or with too few of them on all) per task and per age group and mask kind.
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["calibration"]) == set(TASKS)
    for c in saved["calibration"].values():
        assert c["temperature"] > 0 and 0 <= c["ece"] <= 1 and c["n"] == 15
        assert c["ece_interval"][0] <= c["ece_interval"][1]
    subsets = saved["calibration_subsets"]
    assert subsets["note"] in report
    if subsets["split"]:
        assert not set(subsets["stop"]["persons"]) & set(subsets["temperature"]["persons"])
    for group in ("age_group", "mask_kind"):
        rows = saved["calibration_by_group"][group]
        assert sum(r["n"] for r in rows.values()) == 15
    assert "## Calibration (test)" in report and (tmp_path / "reliability_test.png").exists()
    assert "## Calibration by subgroup (test)" in report and "### by mask_kind" in report
    gender = saved["subgroups"]["gender"]
    assert sum(g["n"] for g in gender.values()) == 15
    assert "## Accuracy by subgroup (test)" in report
    # Grad-CAM of every head over the test images: a figure and the shares of the regions.
    assert "## Where the model looks (test)" in report and (tmp_path / "saliency_test.png").exists()
    looks = report.split("## Where the model looks")[1]
    assert "| age_group | 15 |" in looks
    assert "share on the mask" in looks and "share above the mask" in looks  # from landmarks
    # The predictor applies the run's temperatures.
    from fgmask_jax import runs

    temperatures = runs.load(str(tmp_path)).temperatures
    assert temperatures == {t: c["temperature"] for t, c in saved["calibration"].items()}


class _Preempted(Exception):
    pass


def test_resumed_run_ends_where_an_uninterrupted_one_does(small_data_dir, tmp_path,
                                                          monkeypatch):
    config = tiny_config(small_data_dir)
    train.train_and_evaluate(config, str(tmp_path / "whole"))

    # The same run, preempted while computing step 5 (after the checkpoint at step 3).
    real_steps = train.Steps

    class PreemptedSteps(real_steps):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            real_train, calls = self.train, []

            def train_step(state, batch, signum=None, seen=None):
                calls.append(1)
                if len(calls) == 5:
                    raise _Preempted
                return real_train(state, batch, signum, seen)

            self.train = train_step

    monkeypatch.setattr(train.fit, "Steps", PreemptedSteps)
    with pytest.raises(_Preempted):
        train.train_and_evaluate(config, str(tmp_path / "split"))
    monkeypatch.setattr(train.fit, "Steps", real_steps)
    assert final_state(tmp_path / "split")[0] == 3
    resumed = train.train_and_evaluate(config, str(tmp_path / "split"))

    step_a, state_a, meta_a = final_state(tmp_path / "whole")
    step_b, state_b, meta_b = final_state(tmp_path / "split")
    assert step_a == step_b == 6 and meta_a == meta_b
    jax.tree.map(np.testing.assert_array_equal, state_a, state_b)  # bitwise
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert resumed["test"]["age_group"]["accuracy"] == whole["test"]["age_group"]["accuracy"]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(small_data_dir, tmp_path):
    train.train_and_evaluate(tiny_config(small_data_dir, num_train_steps=3), str(tmp_path))
    bad = tiny_config(small_data_dir, num_train_steps=6, log_every_steps=5)
    bad.loss_weights["gender"] = float("nan")
    # Found on the device at step 4, read by the host at its next log step.
    with pytest.raises(FloatingPointError, match=r"at step 4 \(seen at step 5\); the last "
                       "good checkpoint is step 3"):
        train.train_and_evaluate(bad, str(tmp_path))
    step, state, _ = final_state(tmp_path)
    assert step == 3
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


def test_the_host_reads_the_device_only_at_log_validation_and_checkpoint_steps(
        small_data_dir, tmp_path, monkeypatch):
    calls, reads, waits, stops = [], [], [], []
    real_steps, real_wait = train.Steps, jax.block_until_ready

    class CountedSteps(real_steps):
        def train(self, *args, **kwargs):
            calls.append(1)
            state, scalars = super().train(*args, **kwargs)
            stops.append(scalars["stop"])
            return state, scalars

    def counted(fn):
        return lambda *args, **kwargs: (reads.append(len(calls)), fn(*args, **kwargs))[1]

    def wait(x):  # a wait on a step's "stop" scalar is pacing; anything else is a read
        made = [i + 1 for i, s in enumerate(stops) if s is x]
        (waits.append((len(calls), made[0])) if made else reads.append(len(calls)))
        return real_wait(x)

    monkeypatch.setattr(train.fit, "Steps", CountedSteps)
    monkeypatch.setattr(jax, "device_get", counted(jax.device_get))
    monkeypatch.setattr(jax, "block_until_ready", wait)
    config = tiny_config(small_data_dir, num_train_steps=8, log_every_steps=4,
                         eval_every_steps=8, checkpoint_every_steps=8)
    train.train_and_evaluate(config, str(tmp_path))
    assert len(calls) == 8
    # The first step (timed), then only the log step 4 and the last step.
    assert set(reads) - {0} == {1, 4, 8}
    # Between them the host runs loop.RUN_AHEAD (2) steps ahead of the device, never fewer.
    assert waits == [(step, step - 2) for step in range(3, 9)]


def test_damaged_latest_checkpoint_falls_back_to_the_one_before(small_data_dir, tmp_path,
                                                                caplog):
    # Validation only at the last step: best/ holds step 6, checkpoints/ holds 3 and 6.
    config = tiny_config(small_data_dir, eval_every_steps=6)
    first = train.train_and_evaluate(config, str(tmp_path))
    assert checkpointing.Checkpointer(str(tmp_path / "best")).all_steps() == [6]
    state_dir = tmp_path / "checkpoints" / "6" / "state"
    for root, _, files in os.walk(state_dir):
        for name in files:
            if not name.startswith("_"):  # keep metadata, damage the array data
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"\0garbage")
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
    abstract = checkpointing.abstract_like(ckpt.restore(3, None)[0])
    with caplog.at_level("WARNING"):
        restored, meta = ckpt.restore_latest(abstract)
    ckpt.close()
    assert meta["step"] == 3
    assert "checkpoints/6 does not restore" in caplog.text
    assert any(n.startswith("6.damaged-") for n in os.listdir(tmp_path / "checkpoints"))
    # Rerunning the same command resumes from step 3 and passes step 6 again, where best/
    # already holds a checkpoint: it is replaced, and the run ends as the first one did.
    again = train.train_and_evaluate(config, str(tmp_path))
    assert again["steps"] == 6 and again["best_step"] == 6
    assert again["test"] == first["test"]
    assert checkpointing.Checkpointer(str(tmp_path / "best")).all_steps() == [6]


def test_lopo_trains_one_model_per_fold_and_pools_every_image(small_data_dir, tmp_path,
                                                             monkeypatch):
    config = tiny_config(small_data_dir, protocol="lopo", lopo_folds=3, num_train_steps=2,
                         eval_every_steps=2, checkpoint_every_steps=2)
    real_fit_and_test, calls = train.fit_and_test, []

    def recording_fit_and_test(config, workdir, train_source, train_ix, test_source, test_ix,
                               **kwargs):
        subjects = pipeline.read_labels(train_source)["subject_id"]
        calls.append((subjects[train_ix], subjects[test_ix]))
        return real_fit_and_test(config, workdir, train_source, train_ix, test_source,
                                 test_ix, **kwargs)

    monkeypatch.setattr(train.fit, "fit_and_test", recording_fit_and_test)
    results = train.train_and_evaluate(config, str(tmp_path))

    assert len(calls) == 3
    for train_subjects, test_subjects in calls:  # no person on both sides of a fold
        assert not set(train_subjects) & set(test_subjects)
        assert len(train_subjects) + len(test_subjects) == 60
    assert sorted(np.concatenate([t for _, t in calls]).tolist()) == \
        sorted(np.concatenate(calls[0]).tolist())  # every image tested exactly once
    pooled = np.load(tmp_path / "predictions.npz")
    assert len(pooled["subject_id"]) == 60
    for task in TASKS:
        r = results["test"][task]
        assert r["n"] == 60 and np.isfinite(r["loss"])
        assert r["accuracy"] == np.mean(pooled[f"label_{task}"] == pooled[f"pred_{task}"])
        assert sum(f["test"][task]["n"] for f in results["folds"]) == 60
    assert results["steps"] == 6
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["folds"] == 3 and saved["test"]["gender"]["n"] == 60
    assert "leave-persons-out over 3 folds" in (tmp_path / "report.md").read_text()
    # Pooled calibration: each fold's own temperature on its own images.
    pooled_calibration = saved["pooled_calibration"]
    for task in TASKS:
        c = pooled_calibration["tasks"][task]
        assert c["n"] == 60 and c["fold_temperatures"] == [
            f["calibration"][task]["temperature"] for f in results["folds"]]
    assert sum(r["n"] for r in pooled_calibration["by_group"]["age_group"].values()) == 60
    assert "## Calibration (pooled folds)" in (tmp_path / "report.md").read_text()

    # Run again: the finished folds are read back, not trained again.
    calls.clear()
    again = train.train_and_evaluate(config, str(tmp_path))
    assert not calls
    assert again["test"] == results["test"]
    # Other folds in the same workdir would pool the wrong images: refused, before training.
    config.lopo_folds = 2
    with pytest.raises(ValueError, match=r"lopo_folds=3, not 2: .* delete .*/fold_\* to train"):
        train.train_and_evaluate(config, str(tmp_path))
    assert not calls


def test_evaluation_outputs_are_assembled_by_dataset_index(small_data_dir):
    from fgmask_jax import runs
    from fgmask_jax.train.evaluate import evaluate, host_eval_batches

    config = tiny_config(small_data_dir)
    source = pipeline.open_split(config.dataset, "test", small_data_dir)
    tx, _ = train.make_optimizer(config, 10, 100)
    steps = train.Steps(runs.make_model(config), tx, config, train.make_mesh())
    state = steps.init(jax.random.key(0))

    def outputs(indices):
        batches = host_eval_batches(steps, source, indices, config)
        return evaluate(steps, state, batches, config, return_outputs=True)

    in_order = np.arange(len(source))
    metrics, out = outputs(in_order)
    shuffled_metrics, shuffled = outputs(np.random.default_rng(0).permutation(in_order))
    np.testing.assert_array_equal(shuffled["index"], in_order)
    np.testing.assert_array_equal(shuffled["label_gender"],
                                  pipeline.read_labels(source)["gender"])
    for name, value in out.items():
        np.testing.assert_allclose(shuffled[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    for task, summary in metrics.items():
        assert shuffled_metrics[task].pop("loss") == pytest.approx(summary.pop("loss"))
        assert shuffled_metrics[task] == summary
    with pytest.raises(RuntimeError, match="evaluated more than once"):
        outputs(np.concatenate([in_order[:3], in_order[:3]]))


@pytest.mark.parametrize("protocol", ["study", "subject", "photo"])
def test_the_training_seed_keeps_the_split_and_the_split_seed_moves_it(protocol):
    labels = {"subject_id": np.repeat(np.arange(20), 3), "photo_id": np.arange(60) // 2}

    def validation(**seeds):
        return train.fit_val_indices(labels, tiny_config("", protocol=protocol, **seeds))[1]

    np.testing.assert_array_equal(validation(seed=5), validation())
    assert not np.array_equal(validation(split_seed=5), validation())


def test_placement_takes_the_config_or_the_free_memory():
    config = tiny_config("", data_on_device=None, workers=None)
    assert config_lib.load("configs/multitask.py").data_on_device is None  # auto by default
    on, workers, why = pipeline.placement(config, 60)
    assert on and workers == pipeline.auto_workers() and "MiB, within 25%" in why
    on, _, why = pipeline.placement(config, 10**12)  # 3 PB of images
    assert not on and "more than 25%" in why
    config.update(data_on_device=False, workers=3)
    assert pipeline.placement(config, 60) == (False, 3, "config.data_on_device=False")
    assert [pipeline.auto_workers(n) for n in (1, 2, 4, 16, 64)] == [0, 0, 2, 8, 8]


def test_checkpoints_on_time_and_best_with_the_next_one(small_data_dir, tmp_path):
    # checkpoint_every_secs=0: a checkpoint at every log (2, 4, 6) and validation (3, 6) step.
    config = tiny_config(small_data_dir, checkpoint_every_steps=0, checkpoint_every_secs=0.0,
                         keep_checkpoints=10, early_stopping_metric="accuracy",
                         data_on_device=True, workers=0)
    results = train.train_and_evaluate(config, str(tmp_path / "often"))
    ckpt = checkpointing.Checkpointer(str(tmp_path / "often" / "checkpoints"))
    assert ckpt.all_steps() == [2, 3, 4, 6]
    best = checkpointing.Checkpointer(str(tmp_path / "often" / "best"), 1)
    assert best.all_steps() == [results["best_step"]]
    state, meta = best.restore(results["best_step"], None)
    assert meta["step"] == results["best_step"] == int(state["step"])
    # A long interval: only the last step is saved, and best/ with it. This run decodes on
    # the host: the same batches, so the same model as the run with its data on the device.
    config.update(checkpoint_every_secs=3600.0, data_on_device=False)
    again = train.train_and_evaluate(config, str(tmp_path / "rarely"))
    jax.tree.map(np.testing.assert_array_equal, final_state(tmp_path / "often")[1],
                 final_state(tmp_path / "rarely")[1])
    assert again["validation"] == results["validation"]
    assert checkpointing.Checkpointer(str(tmp_path / "rarely" / "checkpoints")).all_steps() == [6]
    assert checkpointing.Checkpointer(str(tmp_path / "rarely" / "best")).all_steps() == [
        again["best_step"]]
    assert again["test"] == results["test"]
    timing = json.loads((tmp_path / "rarely" / "results.json").read_text())["timing"]
    assert timing["first_step_s"] > 0 and timing["train_images_per_s"] > 0


def test_every_checkpoint_finds_its_best_state_after_a_crash_between_the_two_saves(
        small_data_dir, tmp_path, monkeypatch):
    from fgmask_jax.train import loop

    # Every validation is a new best (3, 6, 9); the run dies as it saves checkpoints/9,
    # after best/9 is written.
    scores = iter(range(100))
    monkeypatch.setattr(loop.evaluate_lib, "selection_score", lambda *_: next(scores))
    real_save = checkpointing.Checkpointer.save

    def save(self, step, state, meta):
        if step == 9 and self.directory.endswith("checkpoints"):
            raise _Preempted
        real_save(self, step, state, meta)

    monkeypatch.setattr(checkpointing.Checkpointer, "save", save)
    config = tiny_config(small_data_dir, num_train_steps=9)
    with pytest.raises(_Preempted):
        train.train_and_evaluate(config, str(tmp_path))
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
    best = checkpointing.Checkpointer(str(tmp_path / "best"))
    assert ckpt.all_steps() == [3, 6] and best.all_steps() == [3, 6, 9]
    for step in ckpt.all_steps():  # each checkpoint's best state is there
        assert ckpt.restore_here(step)[1]["best_step"] in best.all_steps()

    monkeypatch.setattr(checkpointing.Checkpointer, "save", real_save)
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["best_step"] == 9
    best = checkpointing.Checkpointer(str(tmp_path / "best"))
    assert best.all_steps() == [9]  # once finished, the best state alone


def _files(folder) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(root, n), folder): open(os.path.join(root, n), "rb").read()
            for root, _, names in os.walk(folder) for n in names}


def test_a_rerun_may_not_change_the_state_but_may_train_longer(small_data_dir, tmp_path):
    train.train_and_evaluate(tiny_config(small_data_dir, num_train_steps=3), str(tmp_path))
    before = _files(tmp_path)
    with pytest.raises(config_lib.ConfigError, match=r"model='resnet_tiny', not 'cnn'.*"
                                                     r"new --workdir"):
        train.train_and_evaluate(tiny_config(small_data_dir, model="cnn", num_train_steps=3),
                                 str(tmp_path))
    assert _files(tmp_path) == before  # nothing renamed, rewritten or deleted

    # A run saved before config.split_seed existed drew its splits with its seed: the same.
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["split_seed"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(config_lib.ConfigError, match=r"split_seed=0, not 3"):
        train.train_and_evaluate(tiny_config(small_data_dir, split_seed=3), str(tmp_path))

    longer = train.train_and_evaluate(tiny_config(small_data_dir), str(tmp_path))
    assert longer["steps"] == 6
    assert json.loads((tmp_path / "config.json").read_text())["num_train_steps"] == 3
    history = [json.loads(line) for line in open(tmp_path / "config_history.jsonl")]
    assert history[-1]["changes"] == {"num_train_steps": {"was": 3, "now": 6}}


def test_a_batch_that_does_not_divide_over_the_devices_names_the_sizes_that_do():
    mesh = train.make_mesh(jax.devices()[:4])
    with pytest.raises(config_lib.ConfigError, match=r"batch_size=6 does not divide over the "
                                                     r"4 devices .*use 4 or 8"):
        train.check_batch(6, mesh)
    with pytest.raises(config_lib.ConfigError, match="batch_size=3 .* use 4 "):
        train.check_batch(3, mesh)
    train.check_batch(8, mesh)


def test_a_checkpoint_of_another_shape_is_named_and_kept(tmp_path):
    ckpt = checkpointing.Checkpointer(str(tmp_path))
    ckpt.save(1, {"w": np.zeros(3, np.float32), "b": np.zeros((), np.float32)}, {"step": 1})
    ckpt.close()
    other = {"w": jax.ShapeDtypeStruct((4,), np.float32), "b": jax.ShapeDtypeStruct((), np.float32)}
    ckpt = checkpointing.Checkpointer(str(tmp_path))
    with pytest.raises(config_lib.ConfigError, match=r"1 holds a state of another shape .*\(w "
                                                     r"is \(3,\) there, \(4,\) here\)"):
        ckpt.restore_latest(other)
    assert os.listdir(tmp_path) == ["1"]  # nothing set aside


def test_a_failure_of_the_machine_sets_no_checkpoint_aside(tmp_path, monkeypatch):
    ckpt = checkpointing.Checkpointer(str(tmp_path))
    ckpt.save(1, {"w": np.zeros(3, np.float32)}, {"step": 1})
    ckpt.wait()

    def times_out(*args):
        raise TimeoutError("storage did not answer")

    monkeypatch.setattr(ckpt, "restore", times_out)
    with pytest.raises(TimeoutError):
        ckpt.restore_latest({"w": jax.ShapeDtypeStruct((3,), np.float32)})
    ckpt.close()
    assert os.listdir(tmp_path) == ["1"]
