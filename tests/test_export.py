"""The serving artifact: written from a single-task run, run in a process with only jax + numpy
(and Pillow, for the serving example of docs/predicting.md)."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from jax import export as jax_export
from PIL import Image
from test_train import tiny_config

from fgmask_jax import errors, predict, train
from fgmask_jax.data import pipeline
from fgmask_jax.inference import export
from fgmask_jax.inference.images import load_image

DOCS = Path(__file__).resolve().parents[1] / "docs" / "predicting.md"

# The module docstring's loader, in a fresh interpreter that must not import flax or us.
LOADER = """
import json, sys
import numpy as np
from jax import export

folder, images_path, out_path = sys.argv[1:]
meta = json.load(open(f"{folder}/export.json"))
with open(f"{folder}/{meta['file']}", "rb") as f:
    model = export.deserialize(bytearray(f.read()))
probs = model.call(np.load(images_path))
np.savez(out_path, **{t: np.asarray(p) for t, p in probs.items()})
assert "flax" not in sys.modules and "fgmask_jax" not in sys.modules, sorted(sys.modules)
"""


@pytest.fixture(scope="module")
def single_task_run(small_data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    train.train_and_evaluate(
        tiny_config(small_data_dir, tasks=("gender",), loss_weights={"gender": 1.0},
                    num_train_steps=3), workdir)
    return workdir


def test_exported_model_gives_the_predictors_probabilities_with_only_jax(
        single_task_run, small_data_dir, tmp_path):
    meta = export.export_run(single_task_run, str(tmp_path / "served"))
    assert meta["tasks"] == {"gender": ["male", "female"]} and meta["image_size"] == 32
    assert json.loads((tmp_path / "served" / "export.json").read_text()) == meta
    assert "cpu" in meta["platforms"]

    source = pipeline.open_split("synthetic_masked_faces/small", "test", small_data_dir)
    images = np.stack([pipeline.decode_image(source[i]["image"], 32) for i in range(5)])
    np.save(tmp_path / "images.npy", images)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", LOADER, str(tmp_path / "served"), str(tmp_path / "images.npy"),
         str(tmp_path / "served.npz")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 0, proc.stderr

    ours = predict.Predictor.from_workdir(single_task_run, batch_size=4)
    expected = ours.outputs(images)
    with np.load(tmp_path / "served.npz") as served:
        assert set(served.files) == {"gender", "ood_score"}
        for key in served.files:
            np.testing.assert_allclose(served[key], expected[key], atol=1e-5)
    # The artifact's folder serves the Predictor too, with the same answers.
    again = predict.Predictor.from_workdir(tmp_path / "served", batch_size=4)
    np.testing.assert_allclose(again.probabilities(images)["gender"], expected["gender"],
                               atol=1e-5)
    assert again.ood_threshold == meta["ood_threshold"] == ours.ood_threshold
    assert [(r["gender"]["label"], r["uncertain"]) for r in again(list(images))] == [
        (r["gender"]["label"], r["uncertain"]) for r in ours(list(images))]


def test_an_export_computes_in_the_dtype_its_run_trained_in(single_task_run, small_data_dir,
                                                            tmp_path):
    """config.json stores the dtype a run trained in ("auto" resolved: float32 on CPU);
    export computes in it wherever it runs, and --dtype chooses another. The same weights
    as a run trained on an accelerator stores them (bfloat16) export a bfloat16 artifact,
    whose predictions agree with float32's."""
    assert json.loads((Path(single_task_run) / "config.json").read_text())["dtype"] == "float32"
    run = tmp_path / "trained_in_bf16"
    shutil.copytree(single_task_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    source = pipeline.open_split("synthetic_masked_faces/small", "test", small_data_dir)
    images = pipeline.load_all(source, np.arange(len(source)), 32)["image"]
    probs = {}
    for name, dtype in (("bfloat16", None), ("float32", "float32")):
        line = export.export_as("jax", str(run), str(tmp_path / name), dtype=dtype)
        assert f", {name}, " in line
        assert json.loads((tmp_path / name / "export.json").read_text())["dtype"] == name
        exported = jax_export.deserialize(
            bytearray((tmp_path / name / export.MODEL_FILE).read_bytes()))
        assert ("bf16" in exported.mlir_module()) == (name == "bfloat16")
        served = predict.Predictor.from_workdir(tmp_path / name, batch_size=16)
        probs[name] = served.probabilities(images)["gender"]
    assert np.abs(probs["bfloat16"] - probs["float32"]).max() < 0.02
    agree = np.mean(probs["bfloat16"].argmax(-1) == probs["float32"].argmax(-1))
    assert agree >= 0.9, agree  # the same label for most images
    with pytest.raises(errors.UserError, match="--dtype=bfloat16 with --format=onnx"):
        export.export_as("onnx", str(run), str(tmp_path / "onnx"), dtype="bfloat16")


def serving_example() -> str:
    """The serving example of docs/predicting.md: its Python block that defines `prepare`."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    (block,) = [b for b in blocks if "def prepare(" in b]
    return block


def test_the_docs_serving_example_runs_on_a_jpeg_with_jax_numpy_and_pillow_only(
        single_task_run, tmp_path):
    export.export_run(single_task_run, str(tmp_path / "served"))
    rng = np.random.default_rng(0)
    # Photos that shrink by uneven ratios (area averaging) and one that is enlarged (bilinear).
    shapes = {"photo.jpg": (97, 150), "wide.jpg": (61, 80), "small.jpg": (20, 26)}
    for name, (h, w) in shapes.items():
        y, x = np.mgrid[0:h, 0:w]
        photo = np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], -1)
        photo = np.clip(photo + rng.integers(-20, 20, photo.shape), 0, 255).astype(np.uint8)
        Image.fromarray(photo).save(tmp_path / name, quality=90)
    code = serving_example()
    assert code.count('photos = ["photo.jpg"]') == 1
    code = code.replace('photos = ["photo.jpg"]', f"photos = {list(shapes)}")
    code += textwrap.dedent("""
        np.savez("served.npz", prepared=images, **{k: np.asarray(v) for k, v in out.items()})
        import sys
        assert not {"fgmask_jax", "flax", "cv2"} & set(sys.modules), sorted(sys.modules)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("{'gender': ") == len(shapes), proc.stdout

    predictor = predict.Predictor.from_workdir(single_task_run, batch_size=4)
    ours = np.stack([load_image(tmp_path / name, 32) for name in shapes])
    expected = predictor.outputs(ours)
    with np.load(tmp_path / "served.npz") as served:
        # prepare()'s pixels are the pipeline's, to OpenCV's fixed-point rounding (enlarging).
        assert np.abs(served["prepared"].astype(int) - ours).max() <= 1
        np.testing.assert_array_equal(served["prepared"][:2], ours[:2])
        for key in ("gender", "ood_score"):
            np.testing.assert_allclose(served[key][:2], expected[key][:2], atol=1e-4)
            np.testing.assert_allclose(served[key][2:], expected[key][2:], atol=1e-3)


def test_export_of_a_missing_run_is_a_one_line_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fgmask_jax.export", f"--workdir={tmp_path}",
         f"--out={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no config.json" in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_onnx_model_gives_the_predictors_probabilities(single_task_run, small_data_dir, tmp_path):
    pytest.importorskip("jax2onnx")
    ort = pytest.importorskip("onnxruntime")
    path = export.export_onnx(single_task_run, str(tmp_path / "onnx"))
    assert path == str(tmp_path / "onnx" / "model.onnx")
    meta = json.loads((tmp_path / "onnx" / "onnx.json").read_text())
    assert meta["file"] == "model.onnx" and meta["outputs"] == ["gender"]
    assert meta["tasks"] == {"gender": ["male", "female"]} and meta["image_size"] == 32
    # Not an export.json: the folder is not mistaken for a StableHLO artifact.
    assert sorted(os.listdir(tmp_path / "onnx")) == ["model.onnx", "onnx.json"]

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (images_in,) = session.get_inputs()
    assert images_in.name == "images" and images_in.type == "tensor(uint8)"
    assert isinstance(images_in.shape[0], str) and images_in.shape[1:] == [32, 32, 3]
    assert [o.name for o in session.get_outputs()] == ["gender"]

    source = pipeline.open_split("synthetic_masked_faces/small", "test", small_data_dir)
    images = np.stack([pipeline.decode_image(source[i]["image"], 32) for i in range(5)])
    expected = predict.Predictor.from_workdir(single_task_run, batch_size=4).probabilities(images)
    for batch in (images, images[:1]):  # any batch size
        (probs,) = session.run(["gender"], {"images": batch})
        assert probs.dtype == np.float32 and probs.shape == (len(batch), 2)
        np.testing.assert_allclose(probs, expected["gender"][: len(batch)], atol=1e-4)
