"""Predicting new photos with a trained run: the Predictor, the command, bad files, faces."""

import io
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image
from test_train import tiny_config

from fgmask_jax import inference, predict, runs, train
from fgmask_jax.data import labels as labels_lib
from fgmask_jax.data import pipeline, synthetic
from fgmask_jax.inference import files, images
from fgmask_jax.inference import predictor as predictor_lib
from fgmask_jax.inference.files import predict_to_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = tuple(labels_lib.TASKS)


@pytest.fixture(scope="module")
def run_dir(small_data_dir, tmp_path_factory):
    """A tiny multi-task run, trained for a few steps."""
    workdir = str(tmp_path_factory.mktemp("run"))
    train.train_and_evaluate(tiny_config(small_data_dir, num_train_steps=4), workdir)
    return workdir


@pytest.fixture(scope="module")
def test_split_files(small_data_dir, tmp_path_factory):
    """The test split's images written out as the files they were stored as, in split order."""
    folder = tmp_path_factory.mktemp("test_split")
    source = pipeline.open_split("synthetic_masked_faces/small", "test", small_data_dir)
    paths, encoded = [], []
    for i in range(len(source)):
        data = source[i]["image"]
        suffix = ".png" if data[:4] == b"\x89PNG" else ".jpg"
        path = folder / f"{i:02d}{suffix}"
        path.write_bytes(data)
        paths.append(str(path))
        encoded.append(data)
    return paths, encoded


def _jpeg(array, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=95, **kwargs)
    return buf.getvalue()


def test_predictions_equal_the_runs_own_on_its_test_split(run_dir, test_split_files):
    paths, encoded = test_split_files
    predictor = predict.Predictor.from_workdir(run_dir, batch_size=8)
    assert predictor.tasks == labels_lib.TASKS
    results = predictor(paths)

    with np.load(os.path.join(run_dir, "predictions.npz")) as npz:
        for task, classes in labels_lib.TASKS.items():
            assert [r[task]["label"] for r in results] == [classes[k] for k in npz[f"pred_{task}"]]
    for r in results:
        for task, classes in labels_lib.TASKS.items():
            probs = r[task]["probabilities"]
            assert list(probs) == list(classes)
            assert abs(sum(probs.values()) - 1) < 1e-5
            assert r[task]["label"] == max(probs, key=probs.get)
        assert r["uncertain"] == (r["ood_score"] > predictor.ood_threshold)
    # The preprocessing is the training pipeline's, bit for bit.
    for path, data in zip(paths, encoded, strict=True):
        np.testing.assert_array_equal(images.load_image(path, 32), pipeline.decode_image(data, 32))
    # Arrays (RGB) give what their files give.
    arrays = [pipeline.read_image(data) for data in encoded[:3]]
    assert predictor(arrays) == results[:3]
    assert predictor(arrays[0]) == results[:1]


def test_ood_score_is_the_energy_of_the_temperature_scaled_logits(run_dir, test_split_files):
    from scipy.special import logsumexp

    run = runs.load(run_dir)
    assert set(run.temperatures) == set(TASKS)  # a finished run fitted them
    prepared = np.stack([images.load_image(p, 32) for p in test_split_files[0][:5]])
    logits = runs.make_model(run.config).apply(
        run.variables, pipeline.normalize(prepared, runs.compute_dtype(run.config)), train=False)
    expected = np.mean([-t * logsumexp(np.asarray(logits[task], np.float64) / t, axis=-1)
                        for task, t in run.temperatures.items()], axis=0)
    predictor = predict.Predictor.from_workdir(run_dir, batch_size=4)
    np.testing.assert_allclose(predictor.outputs(prepared)["ood_score"], expected, atol=1e-4)
    predictor.ood_threshold = float(np.median(expected))
    assert [r["uncertain"] for r in predictor(list(prepared))] == list(
        predictor.outputs(prepared)["ood_score"] > np.median(expected))


def test_the_runs_own_ood_threshold_flags_5_percent_of_its_held_out_faces(run_dir):
    run = runs.load(run_dir)
    with open(os.path.join(run_dir, "results.json")) as f:
        assert run.ood_threshold == json.load(f)["ood_threshold"]
    # Recomputed from the held-out validation faces the run fitted its temperature on.
    train_split, _ = pipeline.split_names(run.config.protocol)
    source = pipeline.open_split(run.config.dataset, train_split, pipeline.data_dir(run.config))
    _, val = train.fit.split_train(run.config, source, np.arange(len(source)))
    _, held, _ = train.fit.split_validation(run.config, source, val)
    faces = pipeline.load_all(source, held, run.config.image_size)["image"]
    predictor = predict.Predictor.from_workdir(run_dir, batch_size=8)
    scores = predictor.outputs(faces)["ood_score"]
    assert predictor.ood_threshold == run.ood_threshold
    assert run.ood_threshold == pytest.approx(np.quantile(scores, 0.95), abs=1e-4)
    with open(os.path.join(run_dir, "report.md")) as f:
        assert f"out-of-distribution threshold {run.ood_threshold:.3f}" in f.read()
    # A run finished before runs kept a threshold gets the constant.
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    old = os.path.join(os.path.dirname(run_dir), "old_run")
    shutil.copytree(run_dir, old)
    del results["ood_threshold"]
    with open(os.path.join(old, "results.json"), "w") as f:
        json.dump(results, f)
    assert runs.load(old).ood_threshold is None
    assert predict.Predictor.from_workdir(old).ood_threshold == predictor_lib.OOD_THRESHOLD


def test_array_forms_grayscale_rgba_and_16_bit_are_read_as_meant():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((40, 50, 1), 7, np.uint8)], -1)
    np.testing.assert_array_equal(images.as_rgb(rgba), rgb)
    gray = rgb[..., 0]
    np.testing.assert_array_equal(images.as_rgb(gray), np.stack([gray] * 3, -1))
    np.testing.assert_array_equal(images.as_rgb(rgb.astype(np.uint16) << 8), rgb)
    with pytest.raises(ValueError, match="dtype float32"):
        images.as_rgb(rgb.astype(np.float32))
    with pytest.raises(ValueError, match="1x1 pixels"):
        images.load_image(np.zeros((1, 1, 3), np.uint8), 32)

    # Files: EXIF orientation applied, 16-bit scaled, grayscale made 3 channels.
    upright = np.zeros((64, 40, 3), np.uint8)
    upright[:32] = (255, 0, 0)  # red on top
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # orientation 6: rotate 90 cw to show
    exif = Image.Image().getexif()
    exif[0x0112] = 6
    seen = pipeline.read_image(_jpeg(stored, exif=exif.tobytes()))
    assert seen.shape == (64, 40, 3)
    assert seen[:28, :, 0].min() > 200 and seen[36:, :, 0].max() < 60
    deep = (np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 32)
    ok, png = cv2.imencode(".png", deep)
    np.testing.assert_array_equal(pipeline.read_image(png.tobytes()),
                                  np.stack([(deep >> 8).astype(np.uint8)] * 3, -1))


def _bad_and_odd_files(folder, good: list[str]) -> dict[str, str | None]:
    """Writes the mixed folder; returns {name: expected error fragment, None if predicted}."""
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    expected = {}
    for i, path in enumerate(good):
        name = f"good_{i}{os.path.splitext(path)[1]}"
        (folder / name).write_bytes(open(path, "rb").read())
        expected[name] = None
    (folder / "empty.jpg").write_bytes(b"")
    expected["empty.jpg"] = "empty file"
    (folder / "notes.jpg").write_text("not a photo\n")
    expected["notes.jpg"] = "not a readable image"
    full = _jpeg(photo)
    (folder / "cut.jpg").write_bytes(full[: len(full) // 2])
    expected["cut.jpg"] = "not a readable image"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(folder / "dot.png")
    expected["dot.png"] = "1x1 pixels"
    cv2.imwrite(str(folder / "deep.png"), rng.integers(0, 65536, (48, 48), dtype=np.uint16))
    expected["deep.png"] = None
    Image.fromarray(photo[..., 0]).save(folder / "gray.jpg")
    expected["gray.jpg"] = None
    exif = Image.Image().getexif()
    exif[0x0112] = 6
    (folder / "turned.jpg").write_bytes(_jpeg(photo, exif=exif.tobytes()))
    expected["turned.jpg"] = None
    Image.fromarray(np.dstack([photo, photo[..., :1]])).save(folder / "clear.png")
    expected["clear.png"] = None
    Image.fromarray(photo).save(folder / "web.webp")
    expected["web.webp"] = None
    Image.fromarray(photo).save(folder / "old.bmp")
    expected["old.bmp"] = None
    (folder / "readme.txt").write_text("skipped: not an image by name")
    return expected


def test_command_predicts_every_good_image_and_lists_every_bad_one(run_dir, test_split_files,
                                                                   tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    expected = _bad_and_odd_files(photos, test_split_files[0][:3])
    # Relative paths, from another folder, and a batch the images do not fill evenly.
    proc = subprocess.run(
        [sys.executable, "-m", "fgmask_jax.predict",
         f"--workdir={os.path.relpath(run_dir, tmp_path)}", "--images=photos",
         "--out=preds.csv", "--batch_size=4"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    import csv

    with open(tmp_path / "preds.csv") as f:
        rows = list(csv.DictReader(f))
    assert [os.path.basename(r["file"]) for r in rows] == sorted(expected)
    assert all(os.path.isabs(r["file"]) for r in rows)
    for r in rows:
        name, reason = os.path.basename(r["file"]), expected[os.path.basename(r["file"])]
        if reason is None:
            assert r["error"] == "", name
            for task, classes in labels_lib.TASKS.items():
                assert r[task] in classes
                assert abs(sum(float(r[f"p_{task}_{c}"]) for c in classes) - 1) < 1e-4
            assert r["uncertain"] == ("true" if float(r["ood_score"]) > predict.OOD_THRESHOLD
                                      else "false"), name
        else:
            assert reason in r["error"] and r["gender"] == "", name
            assert r["ood_score"] == r["uncertain"] == "", name
            assert f"{name}: {r['error']}" in proc.stderr
    assert f"predict: {len(expected)} images with" in proc.stderr
    assert "images/s" in proc.stderr and "1 other file in the folders skipped" in proc.stderr

    # The CSV's good rows are the Python API's answers.
    good = [r for r in rows if not r["error"]]
    api = predict.Predictor.from_workdir(run_dir)([r["file"] for r in good])
    for r, a in zip(good, api, strict=True):
        for task in TASKS:
            assert r[task] == a[task]["label"]
        assert float(r["ood_score"]) == pytest.approx(a["ood_score"], abs=1e-5)


def test_a_path_that_does_not_exist_is_a_usage_error_that_writes_nothing(run_dir,
                                                                           test_split_files,
                                                                           tmp_path):
    (tmp_path / "preds.csv").write_bytes(b"earlier,rows\r\n")
    proc = subprocess.run(
        [sys.executable, "-m", "fgmask_jax.predict", f"--workdir={run_dir}",
         f"--images={test_split_files[0][0]},photos/missing.jpg", "--out=preds.csv"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert str(tmp_path / "photos" / "missing.jpg") in proc.stderr
    assert (tmp_path / "preds.csv").read_bytes() == b"earlier,rows\r\n"
    assert os.listdir(tmp_path) == ["preds.csv"]


def test_help_speaks_of_photos_and_flags_not_of_internals():
    proc = subprocess.run([sys.executable, "-m", "fgmask_jax.predict", "--help"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr
    for internal in ("pipeline", "read_image", "square_resize", "MIN_SIDE"):
        assert internal not in proc.stdout, internal
    for said in ("--min_face", "ood_score", "uncertain", "16 pixels", "exit", "docs/predicting.md"):
        assert said.lower() in proc.stdout.lower(), said


def test_out_is_replaced_only_once_every_row_is_written(run_dir, test_split_files, tmp_path,
                                                        monkeypatch):
    paths = test_split_files[0][:3]
    out = tmp_path / "preds.jsonl"
    out.write_text("earlier\n")
    whole = files.predict_files

    def stopped_after_one_row(*args, **kwargs):
        rows = whole(*args, **kwargs)
        yield next(rows)
        raise KeyboardInterrupt  # as Ctrl-C half-way

    monkeypatch.setattr(files, "predict_files", stopped_after_one_row)
    with pytest.raises(KeyboardInterrupt):
        predict_to_file(run_dir, paths, str(out), stderr=io.StringIO())
    assert out.read_text() == "earlier\n" and os.listdir(tmp_path) == ["preds.jsonl"]

    monkeypatch.undo()
    err = io.StringIO()
    assert predict_to_file(run_dir, paths[:1], str(out), stderr=err) == 0
    assert os.listdir(tmp_path) == ["preds.jsonl"]
    assert "predict: 1 image with" in err.getvalue()
    assert "predict: 1 of 1 image predicted" in err.getvalue()
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]

    # JSON lines round as the CSV does: the same numbers in both.
    assert predict_to_file(run_dir, paths[:1], str(tmp_path / "preds.csv"),
                           stderr=io.StringIO()) == 0
    import csv

    with open(tmp_path / "preds.csv") as f:
        (cells,) = list(csv.DictReader(f))
    assert row["ood_score"] == float(cells["ood_score"])
    for task, classes in labels_lib.TASKS.items():
        for c in classes:
            value = row["predictions"][task]["probabilities"][c]
            assert value == float(cells[f"p_{task}_{c}"]) == round(value, 6)


def test_missing_run_says_what_is_missing_and_the_way_out(tmp_path, run_dir):
    with pytest.raises(FileNotFoundError, match="no config.json.*fgmask_jax.main"):
        predict.Predictor.from_workdir(tmp_path)
    (tmp_path / "config.json").write_text(open(os.path.join(run_dir, "config.json")).read())
    with pytest.raises(FileNotFoundError, match=r"no best/<step> checkpoint"):
        predict.Predictor.from_workdir(tmp_path)
    classical = tmp_path / "lbp"
    classical.mkdir()
    (classical / "config.json").write_text(json.dumps({"method": "lbp", "tasks": ["gender"]}))
    with pytest.raises(ValueError, match="neural methods only"):
        predict.Predictor.from_workdir(classical)
    lopo = tmp_path / "lopo"
    for k in (1, 2):
        (lopo / f"fold_{k}").mkdir(parents=True)
    with pytest.raises(ValueError, match="fold=K.*folds here: 1, 2"):
        predict.Predictor.from_workdir(lopo)
    with pytest.raises(FileNotFoundError, match="fold_2 holds no finished run: no config.json"):
        predict.Predictor.from_workdir(lopo, fold=2)

    # The command: one line on stderr, status 2, no traceback.
    proc = subprocess.run(
        [sys.executable, "-m", "fgmask_jax.predict", f"--workdir={tmp_path / 'nothing'}",
         f"--images={run_dir}"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no such folder" in proc.stderr


def _photo(faces: list[np.ndarray]) -> np.ndarray:
    """A 520x360 photo: a smooth background, with each face pasted at 180 px."""
    h, w = 360, 520
    y, x = np.mgrid[0:h, 0:w] / w
    photo = np.stack([90 + 80 * x, 120 + 40 * y, 150 - 60 * x], -1).astype(np.uint8)
    for k, face in enumerate(faces):
        top, left = 70 + 20 * k, 40 + 260 * k
        photo[top : top + 180, left : left + 180] = cv2.resize(face, (180, 180))
    return photo


def test_faces_are_found_cropped_and_predicted_one_row_each(run_dir, tmp_path):
    pytest.importorskip("skimage")
    specs = synthetic.example_specs(60, 12, 0, 128)
    faces = [synthetic.render_example(specs[i])["image"] for i in (0, 2)]
    two, none = _photo(faces), _photo([])
    Image.fromarray(two).save(tmp_path / "two.png")
    Image.fromarray(none).save(tmp_path / "none.png")

    boxes = inference.detect_faces(two)
    assert len(boxes) == 2
    for box, left, top in zip(sorted(boxes, key=lambda b: b.x), (40, 300), (70, 90),
                              strict=True):  # inside its face
        assert left <= box.x and box.x + box.width <= left + 180
        assert top <= box.y and box.y + box.height <= top + 180
        crop = inference.crop_face(two, box)
        assert crop.shape[0] == crop.shape[1] and 150 <= crop.shape[0] <= 240
    assert inference.detect_faces(none) == []

    # The smaller face under --min_face: skipped, with its box and the reason.
    min_face = boxes[1].width + 1
    assert boxes[0].width >= min_face
    out = tmp_path / "faces.jsonl"
    err = io.StringIO()
    status = predict_to_file(run_dir, [str(tmp_path / "*.png")], str(out), batch_size=4,
                             faces="detect", min_face=min_face, stderr=err)
    assert status == 1  # a photo without a face was not predicted
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(os.path.basename(r["file"]), r["face"], r["error"]) for r in rows] == [
        ("none.png", None, "no face found"), ("two.png", 0, None),
        ("two.png", 1, f"{boxes[1].width} px wide: narrower than min_face={min_face} px")]
    for r, box in zip(rows[1:], boxes, strict=True):
        assert r["box"] == {"x": box.x, "y": box.y, "width": box.width, "height": box.height,
                            "score": box.score}
        assert box.score >= 4
    assert set(rows[1]["predictions"]) == set(TASKS) and rows[2]["predictions"] is None
    assert isinstance(rows[1]["uncertain"], bool) and rows[2]["uncertain"] is None
    assert (f"predict: skipped: {tmp_path / 'two.png'}, face 1 at x={boxes[1].x} "
            f"y={boxes[1].y}") in err.getvalue()
    assert "1 of 2 images predicted (1 face, 1 more skipped" in err.getvalue()

    # The Python API finds the same faces and gives the same answers.
    predictor = predict.Predictor.from_workdir(run_dir, batch_size=4)
    found = predictor.predict_faces(str(tmp_path / "two.png"), min_face=min_face)
    assert [f["box"] for f in found] == boxes[:1]
    assert found[0]["ood_score"] == pytest.approx(rows[1]["ood_score"], abs=1e-5)
    for task in TASKS:
        assert found[0][task]["label"] == rows[1]["predictions"][task]["label"]
    assert [f["box"] for f in predictor.predict_faces(two)] == boxes


def test_predictor_finds_the_one_face_of_a_real_photo_and_none_in_a_cup(run_dir):
    skimage_data = pytest.importorskip("skimage.data")
    predictor = predict.Predictor.from_workdir(run_dir, batch_size=4)
    photo = skimage_data.astronaut()
    (face,) = predictor.predict_faces(photo)  # the background's small false finds dropped
    box = face["box"]
    assert 160 <= box.x and box.x + box.width <= 290 and 50 <= box.y <= box.y + box.height <= 190
    assert box.score >= 4 and box.width >= 48
    # The face's prediction is the predictor's on the face's crop.
    assert {k: v for k, v in face.items() if k != "box"} == predictor(
        inference.crop_face(photo, box))[0]
    assert predictor.predict_faces(skimage_data.coffee()) == []


def test_the_weights_are_an_argument_of_the_compiled_program_not_constants():
    """ResNet-18's 11M parameters (45 MB): baked into the program they would make the lowered
    module as large; as an argument it stays small, whatever the weights. The Predictor of
    another run of that architecture lowers to the same module, hence the same persistent
    compilation cache key: it compiles from the cache."""
    import jax

    from fgmask_jax import config_lib, runs
    from fgmask_jax.inference import Predictor

    config = config_lib.neural_config("model=resnet18,size=32", tasks=tuple(TASKS))
    model = runs.make_model(config)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3)),
                                               train=False))
    rng = np.random.default_rng(0)  # random weights: no constant folding could shrink them
    variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)
    predictor = Predictor.from_variables(config, variables, batch_size=4)
    images = np.zeros((4, 32, 32, 3), np.uint8)
    module = predictor._fn.lower(*predictor._arguments(images)).as_text()
    assert len(module) < 1_000_000, len(module)
    other_run = jax.tree.map(lambda v: v + 1, variables)
    other = Predictor.from_variables(config, other_run, batch_size=4)
    assert other._fn.lower(*other._arguments(images)).as_text() == module
