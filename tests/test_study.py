"""The study command on the 60-image synthetic set: runs, outputs, skipping finished runs."""

import csv
import math
import os
import shutil

import numpy as np
import pytest

from fgmask_jax import errors
from fgmask_jax.data import splits
from fgmask_jax.evaluation import bootstrap, metrics, tables
from fgmask_jax.experiments import compare, leak, study

TASKS = ("age_group", "gender", "expression")
# Tiny neural runs at 32 px: a handful of steps each.
TINY = {"image_size": 32, "batch_size": 8, "num_train_steps": 2, "eval_every_steps": 2,
        "checkpoint_every_steps": 2, "warmup_epochs": 0.0, "log_every_steps": 1,
        "saliency_images": 0}
METHODS = ("lbp", "eigenface", "single_task_cnn", "multitask_resnet")


def _run(workdir, data_dir, methods=METHODS, **kwargs):
    return study.run_study(str(workdir), data="synthetic", protocol="study", runlocal=True,
                           methods=methods, resnet="resnet_tiny",
                           dataset="synthetic_masked_faces/small", data_dir=data_dir,
                           neural_overrides=TINY, num_samples=200, **kwargs)


def _mtimes(workdir):
    return {os.path.join(root, name): os.path.getmtime(os.path.join(root, name))
            for root, _, names in os.walk(workdir) for name in names
            if name in ("results.json", "predictions.npz")}


def test_study_runs_writes_table_csv_plot_and_skips_finished_runs(small_data_dir, tmp_path):
    out = _run(tmp_path, small_data_dir)

    folders = [r["folder"] for r in out["runs"]]
    assert folders == ["lbp", "eigenface", *(f"single_task_cnn/{t}" for t in TASKS),
                       "multitask_resnet"]
    assert all(r["status"] == "ran" and r["seconds"] > 0 for r in out["runs"])
    for f in folders:
        assert os.path.exists(tmp_path / f / "results.json")
    # One row per method x task x metric, in the CSV too (plus the majority-class floor).
    assert len(out["rows"]) == len(METHODS) * len(TASKS) * len(bootstrap.METRICS)
    with open(tmp_path / "study.csv") as f:
        table = list(csv.DictReader(f))
    keys = [(r["method"], r["task"], r["metric"]) for r in table]
    assert len(keys) == len(set(keys)) == len(out["rows"]) + len(TASKS)
    assert {k[0] for k in keys} == {*METHODS, "majority_class"}
    for r in out["rows"]:
        folder = tmp_path / (f"{r['method']}/{r['task']}" if r["method"] == "single_task_cnn"
                             else r["method"])
        assert 0 <= r["value"] <= 1 and r["n"] == 15
        if os.path.exists(folder / "predictions.npz"):
            assert r["low"] <= r["value"] <= r["high"], r
            assert r["persons"] > 1
        else:  # a run without per-image predictions gets no interval, and says so
            assert math.isnan(r["low"]) and math.isnan(r["high"])
    report = (tmp_path / "study.md").read_text()
    assert "synthetic data" in report and "protocol=study" in report
    assert "| multi-task ResNet |" in report and "| *majority class (floor)* |" in report
    assert "resnet_tiny at 32 px, 2 steps" in report
    assert "set on every neural run: image_size=32, batch_size=8, num_train_steps=2" in report
    for method in METHODS:
        has_predictions = all(os.path.exists(tmp_path / f / "predictions.npz")
                              for f in folders if f.startswith(method))
        said = f"{study.TITLES[method]} (`{method}" in report and \
            "no per-image predictions" in report
        assert said != has_predictions, method
    with open(tmp_path / "study.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # A second call runs nothing again: the runs' files keep their times.
    before = _mtimes(tmp_path)
    again = _run(tmp_path, small_data_dir)
    assert [r["status"] for r in again["runs"]] == ["skipped"] * len(folders)
    assert _mtimes(tmp_path) == before
    assert again["runs"][0]["seconds"] == out["runs"][0]["seconds"]  # kept from study.json
    assert [(r["method"], r["task"], r["metric"], r["value"]) for r in again["rows"]] == \
        [(r["method"], r["task"], r["metric"], r["value"]) for r in out["rows"]]
    # The best neural method against the best classical one, on the same persons.
    assert {d["task"] for d in out["paired"]} == set(TASKS)
    assert all(d["comparison"] == "best neural vs best classical" for d in out["paired"])
    assert "## Paired comparisons" in report
    assert all(0 <= d["p"] <= d["p_holm"] <= 1 for d in out["paired"])
    assert "After Holm's step-down correction over all 3 comparisons" in report
    # The four methods not asked for are named, with the reason, under the accuracy table.
    assert out["left_out"] == {m: study.LEFT_OUT for m in study.METHODS if m not in METHODS}
    assert report.index("- VGG-Face: not run: not in --methods") < report.index(
        "## Paired comparisons")

    # A second training seed: only the new seed trains, on the same splits.
    shutil.copytree(tmp_path, tmp_path.parent / "one_seed")
    two = _run(tmp_path, small_data_dir, seeds=2, methods=("lbp", "multitask_resnet"))
    status = {r["folder"]: r["status"] for r in two["runs"]}
    assert status == {"lbp": "skipped", "multitask_resnet": "skipped",
                      "multitask_resnet.seed1": "ran"}
    import json

    seeds = [json.loads((tmp_path / f / "config.json").read_text())["seed"]
             for f in ("multitask_resnet", "multitask_resnet.seed1")]
    assert seeds == [0, 1]
    accuracy = {(r["method"], r["task"]): r for r in two["rows"] if r["metric"] == "accuracy"}
    for task in TASKS:
        both = [json.loads((tmp_path / f / "results.json").read_text())["test"][task]
                for f in ("multitask_resnet", "multitask_resnet.seed1")]
        r = accuracy["multitask_resnet", task]
        assert r["seeds"] == 2
        assert r["value"] == pytest.approx(np.mean([b["accuracy"] for b in both]))
        assert r["sd"] == pytest.approx(np.std([b["accuracy"] for b in both], ddof=1))
        assert accuracy["lbp", task]["seeds"] == 1  # deterministic given the split: once
    report = (tmp_path / "study.md").read_text()
    assert "training seeds: each neural method trained 2 times" in report and " ± " in report

    # Set against the study before its second seed, run for run: the same runs differ by 0,
    # the ResNet by its two seeds' mean minus its first seed.
    compared = compare.compare_studies(str(tmp_path), str(tmp_path.parent / "one_seed"),
                                       num_samples=50)
    rows = {(r["method"], r["task"]): r for r in compared["rows"]}
    assert set(rows) == {(m, t) for m in METHODS for t in TASKS}
    for (method, task), r in rows.items():
        if method == "multitask_resnet":
            assert r["seeds"] == [2, 1]
            assert r["value"] == pytest.approx(accuracy[method, task]["value"] - r["theirs"])
        else:
            assert r["seeds"] == [1, 1] and r["value"] == 0 and r["low"] == r["high"] == 0
    assert "| multi-task ResNet | gender |" in (tmp_path / "compare.md").read_text()


def test_lopo_runs_every_method_over_every_image_with_the_same_folds(small_data_dir, tmp_path):
    out = study.run_study(str(tmp_path), data="synthetic", protocol="lopo", runlocal=True,
                          methods=("lbp", "multitask_cnn"),
                          dataset="synthetic_masked_faces/small", data_dir=small_data_dir,
                          neural_overrides=TINY, lopo_folds=2, num_samples=100)
    assert [r["folder"] for r in out["runs"]] == ["lbp", "multitask_cnn"]
    assert {r["n"] for r in out["rows"]} == {60}  # every image predicted once, by each method
    # The neural method's folds test the persons the classical method's folds test.
    everyone = np.load(tmp_path / "lbp" / "predictions.npz")["subject_id"]
    expected = [set(everyone[test]) for _, test in splits.person_folds(everyone, 2, seed=0)]
    tested = [set(np.load(tmp_path / "multitask_cnn" / f"fold_{k}" / "predictions.npz")
                  ["subject_id"]) for k in (1, 2)]
    assert tested == expected
    report = (tmp_path / "study.md").read_text()
    assert "protocol=lopo" in report and "leave persons out" in report
    assert "2 folds of persons" in report and " not run |" not in report  # no empty cell
    # The six methods not asked for are named with the reason, not silently missing.
    assert "Not in this table (6 of the eight methods)" in report
    assert "- single-task ResNet: not run: not in --methods" in report


def _write_run(folder, rng, n_persons=12, per_person=5, error=0.3):
    """A run folder as the trainer leaves it: results.json and predictions.npz."""
    import json

    os.makedirs(folder)
    subject = np.repeat(np.arange(100, 100 + n_persons), per_person)
    arrays, results = {"subject_id": subject}, {}
    for task, k in (("age_group", 4), ("gender", 2), ("expression", 3)):
        y = rng.integers(0, k, subject.size)
        pred = np.where(rng.random(subject.size) < error, rng.integers(0, k, subject.size), y)
        arrays[f"label_{task}"], arrays[f"pred_{task}"] = y, pred
        results[task] = metrics.summarize(y, pred, k)
    np.savez(os.path.join(folder, "predictions.npz"), **arrays)
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump({"test": results}, f)
    return arrays, results


def test_summarize_run_bootstraps_the_saved_predictions(tmp_path):
    arrays, results = _write_run(tmp_path / "run", np.random.default_rng(0))
    s = study.summarize_run(str(tmp_path / "run"), TASKS, num_samples=300, seed=3)
    assert s["intervals"] and s["note"] is None
    for task in TASKS:
        direct = bootstrap.person_bootstrap(arrays[f"label_{task}"], arrays[f"pred_{task}"],
                                            arrays["subject_id"], 4 if task == "age_group"
                                            else 2 if task == "gender" else 3,
                                            num_samples=300, seed=3)
        r = s["tasks"][task]
        assert r["persons"] == 12 and r["n"] == 60
        for m in bootstrap.METRICS:
            assert r[m] == direct[m]
            assert r[m]["value"] == results[task][m]
            assert r[m]["low"] < r[m]["value"] < r[m]["high"]


def test_summarize_run_without_predictions_gives_no_interval(tmp_path):
    _write_run(tmp_path / "run", np.random.default_rng(1))
    os.remove(tmp_path / "run" / "predictions.npz")
    s = study.summarize_run(str(tmp_path / "run"), TASKS)
    assert not s["intervals"] and "no per-image predictions" in s["note"]
    assert all(math.isnan(s["tasks"][t][m]["low"]) for t in TASKS for m in bootstrap.METRICS)


def test_predictions_of_another_run_are_refused(tmp_path):
    _write_run(tmp_path / "a", np.random.default_rng(2))
    _write_run(tmp_path / "b", np.random.default_rng(3))
    os.replace(tmp_path / "b" / "predictions.npz", tmp_path / "a" / "predictions.npz")
    with pytest.raises(ValueError, match="different runs"):
        study.summarize_run(str(tmp_path / "a"), TASKS)


def _write_study(workdir, runs: dict, subject, labels):
    """A study folder as run_study leaves it: study.json and, per run folder, its
    predictions ``runs[folder]`` of ``labels`` (the same for every task) and results.json."""
    import json

    for folder, pred in runs.items():
        os.makedirs(workdir / folder)
        np.savez(workdir / folder / "predictions.npz", subject_id=subject,
                 **{f"{k}_{t}": v for t in TASKS for k, v in (("label", labels), ("pred", pred))})
        (workdir / folder / "results.json").write_text("{}")
    (workdir / "study.json").write_text(json.dumps({"runs": {f: {} for f in runs}}))


def test_compare_studies_gives_the_known_difference_and_refuses_other_images(tmp_path):
    subject = np.repeat(np.arange(20), 10)
    labels = np.tile(np.arange(2), 100)
    wrong = 1 - labels
    # Two seeds here, right on all images and on the first half of each person's; one seed
    # in the other study, right on a fifth of each person's images: +55 points.
    half = np.where(np.tile(np.arange(10) < 5, 20), labels, wrong)
    fifth = np.where(np.tile(np.arange(10) < 2, 20), labels, wrong)
    _write_study(tmp_path / "big", {"multitask_cnn": labels, "multitask_cnn.seed1": half,
                                    "lbp": labels}, subject, labels)
    _write_study(tmp_path / "small", {"multitask_cnn": fifth, "eigenface": labels},
                 subject, labels)
    out = compare.compare_studies(str(tmp_path / "big"), str(tmp_path / "small"),
                                  num_samples=200)
    assert [(r["method"], r["task"]) for r in out["rows"]] == [("multitask_cnn", t)
                                                               for t in TASKS]
    for r in out["rows"]:
        assert r["value"] == pytest.approx(0.75 - 0.2) and r["seeds"] == [2, 1]
        assert 0 < r["low"] < r["value"] < r["high"] and r["excludes_0_holm"]
    assert "+55.0" in out["markdown"] and "3 still exclude 0" in out["markdown"]
    # A run without its per-image predictions is named, not compared.
    os.remove(tmp_path / "small" / "multitask_cnn" / "predictions.npz")
    out = compare.compare_studies(str(tmp_path / "big"), str(tmp_path / "small"))
    assert out["rows"] == [] and out["unpaired"] == [f"multi-task CNN, {t}" for t in TASKS]
    assert "Not compared, for want of a run's per-image predictions" in out["markdown"]
    # Another study's test images (another protocol or split): refused, naming both runs.
    _write_study(tmp_path / "other", {"multitask_cnn": labels}, subject[::-1], labels)
    with pytest.raises(errors.DataError, match=r"other/multitask_cnn.*predicted other test "
                       r"images \(subject_id differs\).*same test images"):
        compare.compare_studies(str(tmp_path / "big"), str(tmp_path / "other"))
    _write_study(tmp_path / "lone", {"eigenface": labels}, subject, labels)
    with pytest.raises(errors.UserError, match=r"no method finished in both .*big \(lbp, "
                       r"multitask_cnn\) and .*lone \(eigenface\)"):
        compare.compare_studies(str(tmp_path / "big"), str(tmp_path / "lone"))
    with pytest.raises(errors.UserError, match="holds no study.json"):
        compare.compare_studies(str(tmp_path / "big"), str(tmp_path))


def test_plan_names_runs_and_their_configs():
    runs = study.plan("synthetic", "study", runlocal=True)
    assert [r.folder for r in runs] == [
        "lbp", "tiny_image", "vgg_face", "eigenface",
        *(f"single_task_cnn/{t}" for t in TASKS), *(f"single_task_resnet/{t}" for t in TASKS),
        "multitask_cnn", "multitask_resnet"]
    config = study.make_config(runs[-1])
    assert (config.model, config.runlocal, config.num_epochs) == ("resnet18", True, 8.0)
    vgg = study.make_config(runs[2])
    assert (vgg.model, vgg.image_size, vgg.num_epochs) == ("vgg16", 32, 2.0)
    assert study.make_config(runs[4]).tasks == ("age_group",)
    full = study.plan("fgnet_mask", "subject")
    config = study.make_config(full[-1])
    assert (config.model, config.protocol, config.dataset) == ("resnet152", "subject",
                                                               "fgnet_mask")
    lopo = study.plan("synthetic", "lopo", runlocal=True)
    assert [r.folder for r in lopo] == [r.folder for r in runs]
    assert {study.make_config(r).protocol for r in lopo} == {"lopo"}
    assert {study.make_config(r).lopo_folds for r in lopo} == {5}  # runlocal's, for all
    assert {study.make_config(r, lopo_folds=7).lopo_folds for r in lopo} == {7}
    # Without runlocal the classical configs alone take one fold per person; the study
    # gives every method the neural default, so that all are tested on the same folds.
    assert {study.make_config(r).lopo_folds for r in study.plan("synthetic", "lopo")} == {10}
    with pytest.raises(ValueError, match="choose from lbp"):
        study.plan("synthetic", "study", methods=("lbp", "svm"))
    with pytest.raises(ValueError, match="no key 'epochs'"):
        study.make_config(runs[-1], neural_overrides={"epochs": 2})
    shorter = study.make_config(runs[-1], neural_overrides=[("num_train_steps", "7"),
                                                             ("augment.flip", "false")])
    assert shorter.num_train_steps == 7 and shorter.augment.flip is False
    assert study.make_config(runs[0], neural_overrides={"num_train_steps": 7}).method == "lbp"


def test_plan_with_pretrained_trunks():
    runs = study.plan("synthetic", "subject", runlocal=True, resnet="resnet50",
                      pretrained_resnet="/w/resnet50.pth", pretrained_vgg_face="/w/vgg.safetensors")
    configs = {r.folder: study.make_config(r) for r in runs}
    for folder in ("multitask_resnet", "single_task_resnet/gender"):
        assert (configs[folder].model, configs[folder].pretrained) == ("resnet50",
                                                                       "/w/resnet50.pth")
    assert configs["multitask_cnn"].pretrained == ""
    assert configs["vgg_face"].init_weights == "/w/vgg.safetensors"


# --- several protocols: the copy leak -------------------------------------------------


def test_leak_table_puts_protocols_side_by_side_and_computes_the_inflation(
        paired_small_data_dir, tmp_path):
    out = leak.run_comparison(
        str(tmp_path), ("study", "photo", "subject"), data="synthetic_paired", runlocal=True,
        methods=("lbp", "eigenface"), dataset="synthetic_masked_faces/paired_small",
        data_dir=paired_small_data_dir, neural_overrides={**TINY, "saliency_images": 0},
        num_samples=100, command="python -m fgmask_jax.study --protocol=study,photo,subject")
    for p in ("study", "photo", "subject"):  # each protocol's own study, in its folder
        assert (tmp_path / p / "study.md").exists()
        assert f"protocol={p}" in (tmp_path / p / "study.md").read_text()
    acc = {(r["method"], r["task"], r["protocol"]): r["value"] for r in out["rows"]}
    assert len(acc) == 2 * len(TASKS) * 3
    assert {r["n"] for r in out["rows"] if r["protocol"] == "photo"} == {17}  # photo_test
    assert len(out["inflation"]) == 2 * len(TASKS) * 2
    for r in out["inflation"]:  # study minus the other protocol, from the per-protocol runs
        assert r["value"] == pytest.approx(acc[r["method"], r["task"], "study"]
                                           - acc[r["method"], r["task"], r["versus"]])
        assert r["low"] <= r["high"]
    assert out["leak"]["with_copy_in_train"] > 0  # copies of a test photo were trained on
    table = (tmp_path / "leak.md").read_text()
    assert "| method | task | study | photo | subject | study − photo | study − subject |" \
        in table
    assert "| LBP | gender |" in table and "| Eigenface | expression |" in table
    assert "| *majority class (floor)* | age_group |" in table  # each protocol's own
    assert "over all 12 inflations" in table  # Holm's correction, under the main table
    assert all(r["p"] <= r["p_holm"] for r in out["inflation"])
    assert "study − photo, balanced acc." in table
    assert "--protocol=study,photo,subject" in table
    with open(tmp_path / "leak.csv") as f:
        kinds = [r["kind"] for r in csv.DictReader(f)]
    assert kinds.count("accuracy") == 18 and kinds.count("inflation") == 12
    import json

    saved = json.loads((tmp_path / "leak.json").read_text())
    assert saved["setting"]["protocols"] == ["study", "photo", "subject"]
    # A second call reuses every finished run; the persons control trains only its own.
    again = leak.run_comparison(
        str(tmp_path), ("study", "photo", "subject"), data="synthetic_paired", runlocal=True,
        methods=("lbp",), dataset="synthetic_masked_faces/paired_small",
        data_dir=paired_small_data_dir, neural_overrides={**TINY, "saliency_images": 0},
        num_samples=100, persons_control=True)
    assert all(r["status"] == "skipped" for s in again["studies"].values() for r in s["runs"])
    control = again["control"]
    k = control["persons"]
    assert [r["folder"] for r in control["runs"]] == [f"study_{k}persons/lbp",
                                                      f"photo_{k}persons/lbp"]
    subject = np.load(tmp_path / "subject" / "lbp" / "predictions.npz")["subject_id"]
    for p in ("study", "photo"):  # tested on the drawn persons only, as many as subject's
        tested = np.load(tmp_path / f"{p}_{k}persons" / "lbp" / "predictions.npz")
        assert set(tested["subject_id"]) <= set(
            np.load(tmp_path / p / "lbp" / "predictions.npz")["subject_id"])
        assert control["sizes"][p]["test_persons"] == len(set(tested["subject_id"]))
    assert k > len(set(subject))  # subject tests the persons it did not train on
    assert len(control["inflation"]) == 2 * len(TASKS)
    table = (tmp_path / "leak.md").read_text()
    assert f"## Control: study, photo trained on {k} persons" in table
    assert "| LBP | gender |" in table and f"study@{k} − subject" in table
    assert table.index("## Control") < table.index("## What ran")


def test_a_difference_test_is_the_difference_with_a_paired_interval():
    rng = np.random.default_rng(4)
    subject = np.repeat(np.arange(30), 6)
    a = rng.random(subject.size) < 0.8
    b = a & (rng.random(subject.size) < 0.9)  # b is a with some answers lost
    d = bootstrap.difference_test((a, subject), (b, subject), num_samples=500)
    assert d["value"] == pytest.approx(a.mean() - b.mean())
    assert 0 <= d["low"] <= d["value"] <= d["high"]  # paired: a never below b per person
    # Persons on one side only count only there; the point value is still the difference.
    e = bootstrap.difference_test((a, subject), (b[:60], subject[:60]), num_samples=200)
    assert e["value"] == pytest.approx(a.mean() - b[:60].mean())


def test_leak_control_draws_persons_with_the_split_seed():
    from fgmask_jax.experiments import leak_control

    subjects = np.repeat([3, 5, 8, 13, 21, 34], 4)
    persons = leak_control.draw_persons(subjects, 4, seed=0)
    assert len(persons) == 4 and set(persons) <= set(subjects)
    assert np.array_equal(persons, leak_control.draw_persons(subjects, 4, seed=0))
    assert len({tuple(leak_control.draw_persons(subjects, 4, seed=s)) for s in range(8)}) > 1
    train, test = leak_control.cut_indices(subjects, np.array([3, 5, 99]), persons)
    assert set(subjects[train]) == set(persons) and len(train) == 16
    assert set(np.array([3, 5, 99])[test]) <= set(persons)
    with pytest.raises(ValueError, match="needs as many; the split has 6"):
        leak_control.draw_persons(subjects, 7, seed=0)
    with pytest.raises(ValueError, match="add subject"):
        leak.run_comparison("/nonexistent", ("study", "photo"), persons_control=True)
    with pytest.raises(ValueError, match="give several"):
        leak.run_protocols("/nonexistent", ("study",), data="synthetic", persons_control=True)


def test_holm_decisions_and_report_lines():
    diffs = [{"low": 0.01, "high": 0.2, "p": 0.004, "name": "a"},
             {"low": 0.001, "high": 0.1, "p": 0.04, "name": "b"},
             {"low": -0.1, "high": 0.1, "p": 0.8, "name": "c"},
             {"low": math.nan, "high": math.nan, "p": math.nan, "name": "d"}]
    bootstrap.with_holm(diffs)
    assert [d["excludes_0"] for d in diffs] == [True, True, False, False]
    assert [d["excludes_0_holm"] for d in diffs] == [True, False, False, False]
    line = tables.holm_sentence(diffs[:3], "differences", lambda d: d["name"])
    assert line.startswith("2 of these 3 differences exclude 0; with 95% intervals about 0.1")
    assert line.endswith("1 still excludes 0: a.")


def test_leak_table_gives_the_seeds_sd_of_a_network_and_none_of_a_classical_method(tmp_path):
    def row(method, protocol, value, seeds, sd):
        return {"method": method, "task": "gender", "protocol": protocol, "value": value,
                "low": value - 0.05, "high": value + 0.05, "n": 100, "persons": 20,
                "seeds": seeds, "sd": sd}

    rows = [row("lbp", "study", 0.8, 1, math.nan), row("lbp", "subject", 0.7, 1, math.nan),
            row("multitask_cnn", "study", 0.9, 3, 0.012),
            row("multitask_cnn", "subject", 0.75, 3, 0.034)]
    inflation = [{"method": m, "task": "gender", "versus": "subject", "value": v, "low": 0.01,
                  "high": 0.2, "p": 0.01} for m, v in (("lbp", 0.1), ("multitask_cnn", 0.15))]
    bootstrap.with_holm(inflation)
    setting = {"protocols": ["study", "subject"], "data": "synthetic_paired",
               "dataset": "synthetic_masked_faces/paired", "num_samples": 100,
               "runlocal": True, "seeds": 3, "seconds": {"study": 1.0, "subject": 1.0},
               "descriptions": {}}
    tables.write_leak_markdown(str(tmp_path / "leak.md"), rows, inflation, setting,
                               study.WORDING)
    text = (tmp_path / "leak.md").read_text()
    assert "| LBP | gender | 80.0 [75.0, 85.0] | 70.0 [65.0, 75.0] | +10.0 [+1.0, +20.0] |" \
        in text
    assert ("| multi-task CNN | gender | 90.0 [85.0, 95.0] ± 1.2 | 75.0 [70.0, 80.0] ± 3.4 | "
            "+15.0 [+1.0, +20.0] |") in text
    assert "each network trained 3 times on the same splits (config.seed 0..2)" in text
    tables.write_leak_csv(str(tmp_path / "leak.csv"), rows, inflation)
    with open(tmp_path / "leak.csv") as f:
        saved = [(r["method"], r["seeds"], r["sd"]) for r in csv.DictReader(f)
                 if r["kind"] == "accuracy"]
    assert saved == [("lbp", "1", ""), ("lbp", "1", ""), ("multitask_cnn", "3", "0.012000"),
                     ("multitask_cnn", "3", "0.034000")]


def test_runlocal_is_the_configs_variant_and_weights_must_exist(tmp_path):
    runs = study.plan("synthetic", "lopo", runlocal=True)
    assert all(r.overrides == () for r in runs)  # the variant alone shrinks the runs
    assert [r.method for r in runs if "runlocal" not in r.spec] == []
    with pytest.raises(ValueError, match="no such weights file for VGG-Face"):
        study.prepare("synthetic", "lopo", pretrained_vgg_face=str(tmp_path / "vgg.st"))
    with pytest.raises(ValueError, match="no such weights file for the ResNets"):
        study.prepare("synthetic", "lopo", pretrained_resnet=str(tmp_path / "r.pth"))
    # A file for a method that does not run is not needed.
    runs, _ = study.prepare("synthetic", "lopo", methods=("lbp",),
                            pretrained_vgg_face=str(tmp_path / "vgg.st"))
    assert [r.folder for r in runs] == ["lbp"]


@pytest.mark.parametrize("protocols, data, message", [
    (("photo", "subject"), "synthetic_paired", "study among them"),
    (("study", "study"), "synthetic_paired", "study among them"),
    (("study", "photo"), "synthetic",
     "protocol=photo needs data=synthetic_paired, fgnet_mask or fgnet_paired"),
    (("study", "nope"), "synthetic_paired", "protocol='nope' is not one of"),
])
def test_bad_protocols_are_refused_before_anything_runs(protocols, data, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        leak.run_comparison(str(tmp_path), protocols, data=data)
    assert not list(tmp_path.iterdir())


def test_bad_protocols_are_one_line_errors_that_exit_2(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "fgmask_jax.study",
                             f"--workdir={tmp_path}", "--protocol=study,photo"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1, result.stderr
    assert "protocol=photo needs data=synthetic_paired, fgnet_mask or fgnet_paired" in result.stderr


def test_data_that_cannot_be_built_stops_before_any_folder_is_made(tmp_path):
    # fgnet_paired's archives are not in the (empty) manual dir.
    with pytest.raises(errors.UserError, match="FGNET.zip"):
        leak.run_comparison(str(tmp_path / "w"), ("study", "photo"), data="fgnet_paired",
                             methods=("lbp",), data_dir=str(tmp_path / "tfds"))
    assert not (tmp_path / "w").exists()
