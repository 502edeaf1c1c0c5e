"""The fgnet_mask builder on small archives drawn here in the authors' naming.

The images are procedural (gradients and ellipses), never faces. The archive mixes
what a real download may hold: copies ``(k)``, upper-case ``.JPG``, ``.jpeg``, PNG,
grayscale and CMYK JPEGs, odd sizes, nested folders and OS junk.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from fgmask_jax.data import labels, splits
from fgmask_jax.tfds_builder.fgnet_mask import fgnet_mask_dataset_builder as fgnet_mask

# (member path, height, width, kind): kind is the PIL mode and format it is saved in.
IMAGES = [
    ("FGNET-MASK/001A02_01_01.jpg", 53, 37, "RGB-JPEG"),
    ("FGNET-MASK/001A02_01_01 (2).jpg", 40, 40, "RGB-JPEG"),
    ("FGNET-MASK/001A15_01_02.JPG", 61, 45, "RGB-JPEG"),
    ("FGNET-MASK/002A08_02_03.jpeg", 33, 29, "RGB-JPEG"),
    ("FGNET-MASK/002A33_02_01.png", 48, 36, "RGB-PNG"),
    ("FGNET-MASK/002A33_02_01 (1).jpg", 50, 42, "L-JPEG"),
    ("FGNET-MASK/sub/deeper/003A45_01_02.jpg", 44, 52, "RGB-JPEG"),
    ("FGNET-MASK/sub/003A10_01_05.jpg", 37, 53, "RGB-JPEG"),
    ("FGNET-MASK/004A22_02_02.jpg", 46, 38, "CMYK-JPEG"),
    ("FGNET-MASK/004A41_02_01 (3).jpg", 39, 47, "RGB-JPEG"),
    ("FGNET-MASK/005A11_01_01.jpg", 64, 48, "RGB-JPEG"),
    ("FGNET-MASK/005A40_01_03.jpg", 35, 35, "RGB-JPEG"),
]
JUNK = {
    "__MACOSX/FGNET-MASK/._001A02_01_01.jpg": b"\x00\x05\x16\x07 resource fork",
    "FGNET-MASK/.DS_Store": b"\x00\x00\x00\x01Bud1",
    "FGNET-MASK/Thumbs.db": b"\xd0\xcf\x11\xe0 not an image",
    "FGNET-MASK/.notes.txt": b"hidden",
}


def draw(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth procedural picture, uint8[height, width, 3]: a gradient and an ellipse."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = rng.uniform(40, 200, size=3)
    image = base + 50 * np.stack([x, y, x * y], -1)
    cy, cx = rng.uniform(0.3, 0.7, size=2)
    inside = ((x - cx * width / max(height, width)) ** 2 + (y - cy) ** 2) < 0.05
    image[inside] = rng.uniform(0, 255, size=3)
    return image.clip(0, 255).astype(np.uint8)


def encode(image: np.ndarray, kind: str) -> bytes:
    mode, fmt = kind.split("-")
    pil = Image.fromarray(image).convert(mode)
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt, quality=90)
    return buffer.getvalue()


def archive_files(extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """Member path -> bytes of the test archive (images, junk, then ``extra``)."""
    files = {path: encode(draw(h, w, i), kind) for i, (path, h, w, kind) in enumerate(IMAGES)}
    return {**files, **JUNK, **(extra or {})}


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name), data)
    return path


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def build(data_dir: Path, manual_dir: Path) -> fgnet_mask.Builder:
    builder = fgnet_mask.Builder(data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)),
        file_format="array_record",  # TFDS's default, tfrecord, needs TensorFlow
    )
    return builder


def read_split(data_dir: Path, split: str) -> list[dict]:
    """Every example of ``split``, ``filename`` as str (TFDS returns Text as bytes)."""
    source = tfds.data_source("fgnet_mask", split=split, data_dir=str(data_dir), download=False)
    return [{**ex, "filename": ex["filename"].decode()} for ex in source]


def assert_no_dataset(data_dir: Path) -> None:
    """Nothing of fgnet_mask was written under ``data_dir``, and reading it fails."""
    assert not fgnet_mask.Builder(data_dir=str(data_dir)).is_prepared()
    assert not [p for p in (data_dir / "fgnet_mask").rglob("*") if p.is_file()]
    # TFDS says "not found" or, having no dataset_info.json to read the format from,
    # that the default format (tfrecord) has no random access.
    with pytest.raises((tfds.core.DatasetNotFoundError, NotImplementedError)):
        tfds.data_source("fgnet_mask", split="train", data_dir=str(data_dir), download=False)


@pytest.fixture(params=["zip", "folder"])
def manual_dir(request, tmp_path) -> Path:
    manual = tmp_path / "manual"
    manual.mkdir()
    if request.param == "zip":
        write_zip(manual / fgnet_mask.ARCHIVE_NAME, archive_files())
    else:
        write_folder(manual, archive_files())
    return manual


def test_build_labels_splits_and_images(tmp_path, manual_dir):
    data_dir = tmp_path / "data"
    builder = build(data_dir, manual_dir)
    assert builder.name == "fgnet_mask"
    assert builder.info.features["age_group"].names == list(labels.AGE_GROUPS)
    assert builder.info.features["gender"].names == list(labels.GENDERS)
    assert builder.info.features["expression"].names == list(labels.EXPRESSIONS)

    by_split = {s: read_split(data_dir, s) for s in fgnet_mask.SPLITS}
    expected = {p.rsplit("/", 1)[-1]: (h, w, kind) for p, h, w, kind in IMAGES}
    names = sorted(expected)

    for split, examples in by_split.items():
        for ex in examples:
            parsed = labels.parse_filename(ex["filename"])
            assert ex["subject_id"] == parsed.subject_id, split
            assert ex["age"] == parsed.age
            assert ex["age_group"] == labels.age_group(parsed.age)
            assert ex["gender"] == parsed.gender
            assert ex["expression"] == parsed.expression
            h, w, kind = expected[ex["filename"]]
            assert ex["image"].dtype == np.uint8
            assert ex["image"].shape == (h, w, 3)
            if kind == "L-JPEG":  # grayscale became 3 equal channels
                assert (ex["image"][..., 0] == ex["image"][..., 2]).all()

    # Each protocol covers every image exactly once, as splits.py defines it.
    train, test = splits.study_split(len(names), seed=42)
    assert [e["filename"] for e in by_split["train"]] == [names[i] for i in train]
    assert [e["filename"] for e in by_split["test"]] == [names[i] for i in test]
    pair = [e["filename"] for s in ("subject_train", "subject_test") for e in by_split[s]]
    assert sorted(pair) == names
    subjects = {s: {e["subject_id"] for e in by_split[s]} for s in by_split}
    assert not subjects["subject_train"] & subjects["subject_test"]
    assert len(subjects["subject_test"]) == 2  # ceil(25% of 5 persons)
    # Copies of one photo (names that differ only in " (k)") share a photo id, and the
    # photo split keeps them together: 12 images of 10 photos, 3 photos in test.
    photo_of = {e["filename"]: e["photo_id"] for e in by_split["train"] + by_split["test"]}
    assert photo_of["001A02_01_01.jpg"] == photo_of["001A02_01_01 (2).jpg"]
    assert photo_of["002A33_02_01.png"] == photo_of["002A33_02_01 (1).jpg"]
    assert sorted(set(photo_of.values())) == list(range(1, 11))
    photos = {s: {e["photo_id"] for e in by_split[s]} for s in ("photo_train", "photo_test")}
    assert not photos["photo_train"] & photos["photo_test"] and len(photos["photo_test"]) == 3
    assert sorted(e["filename"] for s in photos for e in by_split[s]) == names
    for split in by_split:
        assert all(e["photo_id"] == photo_of[e["filename"]] for e in by_split[split]), split


def test_rgb_jpeg_kept_other_images_reencoded(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    files = archive_files()
    write_zip(manual / fgnet_mask.ARCHIVE_NAME, files)
    build(tmp_path / "data", manual)
    originals = {p.rsplit("/", 1)[-1]: (files[p], kind) for p, _, _, kind in IMAGES}
    for split in ("train", "test"):
        source = tfds.data_source(
            "fgnet_mask", split=split, data_dir=str(tmp_path / "data"), download=False,
            decoders={"image": tfds.decode.SkipDecoding()},
        )
        for i in range(len(source)):
            ex = source[i]
            original, kind = originals[ex["filename"].decode()]
            if kind == "RGB-JPEG":
                assert ex["image"] == original
            else:
                with Image.open(io.BytesIO(ex["image"])) as stored:
                    assert (stored.format, stored.mode) == ("JPEG", "RGB")


def test_bad_files_reported_together_and_nothing_written(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    good = archive_files()["FGNET-MASK/001A02_01_01.jpg"]
    bad = {
        "FGNET-MASK/006A20_01_01.jpg": b"\xff\xd8\xff\xe0 this is no jpeg",
        "FGNET-MASK/006A21_01_02.jpg": good[: len(good) // 2],  # truncated
        "FGNET-MASK/labels.csv": b"name,age\n",
        "FGNET-MASK/img_0001.jpg": good,
        "elsewhere/001A02_01_01.jpg": good,  # a second file of the same name
    }
    write_zip(manual / fgnet_mask.ARCHIVE_NAME, archive_files(bad))
    data_dir = tmp_path / "data"
    with pytest.raises(fgnet_mask.ArchiveError) as error:
        build(data_dir, manual)
    message = str(error.value)
    assert "5 file(s) cannot be used" in message
    for name in bad:
        assert name in message
    assert "does not decode" in message and "not an image file" in message
    assert "name does not follow NNNAxx_GG_EE" in message
    assert fgnet_mask.ARCHIVE_NAME in message  # the way out
    assert_no_dataset(data_dir)


def test_many_bad_names_listed_up_to_the_limit(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    bad = {f"FGNET-MASK/photo_{i:02d}.jpg": b"x" for i in range(25)}
    write_folder(manual, archive_files(bad))
    with pytest.raises(fgnet_mask.ArchiveError, match="(?s)25 file.*and 5 more"):
        build(tmp_path / "data", manual)


@pytest.mark.parametrize("member", ["../001A02_01_01.jpg", "/abs/001A02_01_01.jpg",
                                    "FGNET-MASK/a/../../001A02_01_01.jpg"])
def test_unsafe_members_refused(tmp_path, member):
    manual = tmp_path / "manual"
    manual.mkdir()
    write_zip(manual / fgnet_mask.ARCHIVE_NAME, {"001A03_01_01.jpg": encode(draw(9, 9, 0),
                                                                           "RGB-JPEG"),
                                                 member: b"anything"})
    with zipfile.ZipFile(manual / fgnet_mask.ARCHIVE_NAME) as archive:
        assert member in archive.namelist()  # zipfile stored the path as given
    with pytest.raises(fgnet_mask.ArchiveError, match="refusing 1 member") as error:
        build(tmp_path / "data", manual)
    assert repr(member) in str(error.value)
    assert_no_dataset(tmp_path / "data")


def test_missing_or_empty_manual_dir(tmp_path):
    for manual in (tmp_path / "absent", tmp_path / "empty"):
        if manual.name == "empty":
            manual.mkdir()
        with pytest.raises(FileNotFoundError) as error:
            build(tmp_path / "data", manual)
        assert str(manual) in str(error.value)
        assert fgnet_mask.ARCHIVE_NAME in str(error.value)
        assert "VatsaPatel9/Masked-Face-Analysis-via-Multi-Task-Deep-Learning" in str(error.value)
    junk_only = write_folder(tmp_path / "junk", JUNK)
    with pytest.raises(fgnet_mask.ArchiveError, match="no FGNET-MASK images"):
        build(tmp_path / "data", junk_only)
    assert_no_dataset(tmp_path / "data")


def test_corrupt_zip(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / fgnet_mask.ARCHIVE_NAME).write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(fgnet_mask.ArchiveError, match="not a readable zip"):
        build(tmp_path / "data", manual)


def test_interrupted_generation_leaves_nothing_that_loads(tmp_path, monkeypatch):
    manual = tmp_path / "manual"
    manual.mkdir()
    write_zip(manual / fgnet_mask.ARCHIVE_NAME, archive_files())
    data_dir = tmp_path / "data"
    generate = fgnet_mask.Builder._generate_examples

    def interrupted(self, *args, **kwargs):
        for i, item in enumerate(generate(self, *args, **kwargs)):
            if i == 2:
                raise RuntimeError("interrupted while writing")
            yield item

    monkeypatch.setattr(fgnet_mask.Builder, "_generate_examples", interrupted)
    with pytest.raises(RuntimeError, match="interrupted"):
        build(data_dir, manual)
    # TFDS wrote into a temporary folder and removed it: nothing is left to load.
    assert_no_dataset(data_dir)
    assert not [p for p in data_dir.rglob("*") if p.is_file() and "incomplete" in str(p)]

    monkeypatch.undo()
    builder = build(data_dir, manual)  # a later build starts cleanly
    assert builder.info.splits["train"].num_examples + builder.info.splits["test"].num_examples \
        == len(IMAGES)


def test_rgb_jpeg_applies_exif_rotation():
    image = Image.fromarray(draw(20, 30, 7))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: a viewer turns it 90 degrees clockwise
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    stored = fgnet_mask.rgb_jpeg(buffer.getvalue())
    assert stored != buffer.getvalue()
    with Image.open(io.BytesIO(stored)) as upright:
        assert upright.size == (20, 30)  # (width, height): turned upright
        assert upright.getexif().get(0x0112, 1) == 1
