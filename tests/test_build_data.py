"""The build command: small builds, idempotence, and reading back without this project."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from fgmask_jax.data import build as build_data
from fgmask_jax.data import labels, splits

SMALL = "synthetic_masked_faces/small"
SPLIT_NAMES = ("train", "test", "subject_train", "subject_test", "photo_train", "photo_test")
DUMMY_ARCHIVE_DIR = (
    Path(__file__).resolve().parents[1] / "tfds_builder" / "fgnet_mask" / "dummy_data"
)

# Runs in a fresh interpreter that never imports fgmask_jax: TFDS must restore the
# builder from the files in data_dir alone, as in another project.
READER = """
import json, sys
import tensorflow_datasets as tfds

name, data_dir = sys.argv[1], sys.argv[2]
out = {}
for split in sys.argv[3].split(","):
    source = tfds.data_source(name, split=split, data_dir=data_dir)
    features = source.dataset_info.features  # np_dtype below: .dtype would import TensorFlow
    rows = []
    for ex in source:
        rows.append({
            "keys": sorted(ex),
            "shape": list(ex["image"].shape),
            "dtype": str(ex["image"].dtype),
            "filename": ex["filename"].decode(),
            **{k: int(ex[k]) for k in ("age", "age_group", "gender", "expression",
                                       "subject_id", "photo_id")},
        })
    out[split] = {
        "rows": rows,
        "names": {k: list(features[k].names) for k in ("age_group", "gender", "expression")},
        "image": [str(features["image"].np_dtype), list(features["image"].shape),
                  features["image"].encoding_format],
        "int32": [str(features[k].np_dtype) for k in ("age", "subject_id")],
    }
assert "fgmask_jax" not in sys.modules, "the reader imported fgmask_jax"
assert "tensorflow" not in sys.modules, "the reader imported tensorflow"
print(json.dumps(out))
"""


def read_without_project(name: str, data_dir: Path, cwd: Path) -> dict:
    """Every split of ``name`` as read by a process that knows only TFDS."""
    result = subprocess.run(
        [sys.executable, "-c", READER, name, str(data_dir), ",".join(SPLIT_NAMES)],
        cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_contract(read: dict, extra_keys: set[str]) -> list[dict]:
    """Asserts the features and both protocols' coverage; returns every row of the pair."""
    contract = {"image", "age", "age_group", "gender", "expression", "subject_id", "photo_id",
                "filename"}
    for split in SPLIT_NAMES:
        part = read[split]
        assert part["names"] == {k: list(v) for k, v in labels.TASKS.items()}
        assert part["image"] == ["uint8", [None, None, 3], "jpeg"]
        assert part["int32"] == ["int32", "int32"]
        for row in part["rows"]:
            assert set(row["keys"]) == contract | extra_keys
            assert row["dtype"] == "uint8" and row["shape"][2] == 3
            parsed = labels.parse_filename(row["filename"])
            assert (row["subject_id"], row["age"], row["gender"], row["expression"]) == (
                parsed.subject_id, parsed.age, parsed.gender, parsed.expression)
            assert row["age_group"] == parsed.age_group
    names = lambda s: [r["filename"] for r in read[s]["rows"]]  # noqa: E731
    everything = sorted(names("train") + names("test"))
    assert len(set(everything)) == len(everything)
    assert sorted(names("subject_train") + names("subject_test")) == everything
    assert sorted(names("photo_train") + names("photo_test")) == everything
    train, test = splits.study_split(len(everything), seed=42)
    assert names("test") == [everything[i] for i in test]
    subjects = {s: {r["subject_id"] for r in read[s]["rows"]} for s in SPLIT_NAMES}
    assert not subjects["subject_train"] & subjects["subject_test"]
    photos = {s: {r["photo_id"] for r in read[s]["rows"]} for s in SPLIT_NAMES}
    assert not photos["photo_train"] & photos["photo_test"]
    return read["train"]["rows"] + read["test"]["rows"]


def file_times(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_synthetic_build_idempotent_and_readable_without_project(tmp_path, capsys):
    data_dir = tmp_path / "data"
    builder = build_data.build(SMALL, str(data_dir))
    out = capsys.readouterr().out
    assert "Building synthetic_masked_faces/small/1.2.0" in out
    assert builder.is_prepared()
    counts = {s: builder.info.splits[s].num_examples for s in SPLIT_NAMES}
    assert counts == {"train": 45, "test": 15, "subject_train": 42, "subject_test": 18,
                      "photo_train": 45, "photo_test": 15}
    assert builder.info.file_format.value == "array_record"

    before = file_times(data_dir)
    again = build_data.build(SMALL, str(data_dir))
    out = capsys.readouterr().out
    assert "already built" in out and str(builder.data_path) in out
    assert again.is_prepared()
    assert file_times(data_dir) == before  # nothing rewritten

    read = read_without_project(SMALL, data_dir, cwd=tmp_path)
    rows = check_contract(read, extra_keys={"mask_kind", "landmarks"})
    assert len(rows) == 60
    assert all(r["shape"][:2] == [32, 32] for r in rows)


def test_fgnet_mask_dummy_archive_readable_without_project(tmp_path):
    data_dir = tmp_path / "data"
    builder = build_data.build("fgnet_mask", str(data_dir), manual_dir=str(DUMMY_ARCHIVE_DIR))
    # The sizes the TFDS harness test expects from this archive.
    counts = {s: builder.info.splits[s].num_examples for s in SPLIT_NAMES}
    assert counts == {"train": 9, "test": 3, "subject_train": 8, "subject_test": 4,
                      "photo_train": 8, "photo_test": 4}
    read = read_without_project("fgnet_mask", data_dir, cwd=tmp_path)
    assert len(check_contract(read, extra_keys=set())) == 12


def test_default_manual_dir_is_under_data_dir(tmp_path):
    data_dir = tmp_path / "data"
    manual = data_dir / "downloads" / "manual"
    manual.mkdir(parents=True)
    archive = DUMMY_ARCHIVE_DIR / "FGNET-MASK_dataset.zip"
    (manual / archive.name).write_bytes(archive.read_bytes())
    builder = build_data.build("fgnet_mask", str(data_dir))
    assert builder.info.splits["train"].num_examples == 9


def test_unknown_names_and_formats(tmp_path):
    with pytest.raises(ValueError, match="fgnet_mask, fgnet_paired, synthetic_masked_faces"):
        build_data.build("fgnet", str(tmp_path))
    with pytest.raises(ValueError, match="array_record, tfrecord"):
        build_data.build(SMALL, str(tmp_path), file_format="parquet")
    assert build_data.DATASETS == ("fgnet_mask", "fgnet_paired", "synthetic_masked_faces")
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None,
                    reason="TensorFlow is installed: tfrecord can be written")
def test_tfrecord_without_tensorflow_says_so(tmp_path):
    with pytest.raises(ModuleNotFoundError, match="tfrecord.*TensorFlow.*array_record"):
        build_data.build(SMALL, str(tmp_path), file_format="tfrecord")


def test_command_line(tmp_path):
    """The command builds, then reports the dataset already built; a bad name is a usage error."""
    command = [sys.executable, "-m", "fgmask_jax.build_data", f"--dataset={SMALL}",
               f"--data_dir={tmp_path}"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Built synthetic_masked_faces/small/1.2.0" in first.stdout
    assert "Drawing synthetic faces" in first.stderr  # the progress bar
    second = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert second.returncode == 0 and "already built" in second.stdout
    assert tfds.builder(SMALL, data_dir=str(tmp_path)).is_prepared()

    bad = subprocess.run(command[:3] + ["--dataset=nope", f"--data_dir={tmp_path}"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode != 0
    assert "unknown dataset 'nope'" in bad.stderr and "synthetic_masked_faces" in bad.stderr


def test_a_checkout_finds_its_builders_without_an_editable_install(tmp_path):
    """From a checkout's root, Python imports the checkout's package ahead of an installed
    copy; with a copy installed without -e (no mapping to tfds_builder/), the builders must
    still be found. Emulated: no site-packages .pth files (python -S), the checkout first."""
    import sysconfig

    repo = Path(__file__).resolve().parents[1]
    script = (f"import sys; sys.path[:0] = [{str(repo)!r}, "
              f"{sysconfig.get_paths()['purelib']!r}]\n"
              "from fgmask_jax.data import build\n"
              "build.check_name('synthetic_masked_faces/small')\n"
              "import fgmask_jax.tfds_builder.synthetic_masked_faces."
              "synthetic_masked_faces_dataset_builder as b; print(b.__file__)")
    result = subprocess.run([sys.executable, "-S", "-c", script], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().startswith(str(repo / "tfds_builder"))
