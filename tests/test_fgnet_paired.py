"""The fgnet_paired builder on a small FG-NET-like archive of drawn faces with .pts files.

The faces are the synthetic generator's (with their true landmarks), saved as FG-NET
saves its photos (``FGNET/images/001A02.JPG``, ``FGNET/points/001a02.pts``, grayscale
ones among them); the labels come from a stand-in FGNET-MASK archive's file names and
``fgnet_labels.csv``.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from fgmask_jax import masks
from fgmask_jax.data import build as build_data
from fgmask_jax.data import labels, pipeline, synthetic
from fgmask_jax.data import masked_photos as apply_lib
from fgmask_jax.experiments import mask_gap
from fgmask_jax.tfds_builder.fgnet_mask import fgnet_mask_dataset_builder as fgnet_mask
from fgmask_jax.tfds_builder.fgnet_paired import fgnet_paired_dataset_builder as fgnet_paired

SIZE = 48
# FG-NET name, gender, expression (indices into labels.GENDERS / EXPRESSIONS).
PHOTOS = [
    ("001A02", 0, 0), ("001A05", 0, 1), ("001A43a", 0, 0), ("001A43b", 0, 2),
    ("002A10", 1, 1), ("002A30a", 1, 0), ("002A30b", 1, 0), ("003A15", 0, 2),
    ("003A20", 0, 0), ("004A08", 1, 0), ("004A33", 1, 1), ("005A12", 0, 0),
    ("005A50a", 0, 0), ("005A50b", 0, 1),
]
TRUTH = {stem: (g, e) for stem, g, e in PHOTOS}
# FGNET-MASK's names of those photos: with FG-NET's letter (001A43a/b), without it where
# the photos at one age agree (002A30) or disagree (005A50: fgnet_labels.csv settles it).
FGNET_MASK_NAMES = [
    "001A02_01_01.jpg", "001A02_01_01 (1).jpg", "001A05_01_02.jpg", "001A43a_01_01.jpg",
    "001A43b_01_03.jpg", "002A10_02_02.jpg", "002A30_02_01.jpg", "002A30_02_01 (1).jpg",
    "003A15_01_03.jpg", "003A20_01_01 (2).jpg", "004A08_02_01.jpg", "004A33_02_02.jpg",
    "005A12_01_01.jpg", "005A50_01_01.jpg", "005A50_01_02.jpg",
]
LABEL_TABLE = "photo,gender,expression\n005A50a,male,happy\n005A50b,male,neutral\n"
TASKS = ("age_group", "gender", "expression")


def draw_photo(stem: str, gender: int, expression: int) -> tuple[np.ndarray, np.ndarray]:
    """A drawn face for FG-NET photo ``stem``: (uint8[SIZE, SIZE + 12, 3], float32[68, 2])."""
    subject_id, age, letter = apply_lib.parse_fgnet_stem(stem)
    rng = np.random.default_rng([subject_id, age, ord(letter or "_")])
    params = synthetic.sample_face_params(
        synthetic.sample_subject(subject_id, gender, seed=0), age, expression, rng)
    face, landmarks = synthetic.render_face(params, rng, SIZE)
    # FG-NET's photos are not square: 6 px more on each side.
    wide = np.pad(face, ((0, 0), (6, 6), (0, 0)), mode="edge")
    return wide, landmarks + np.float32([6, 0])


def fgnet_files(photos=PHOTOS) -> dict[str, bytes]:
    """Member path -> bytes of a stand-in FGNET.zip: images, points, and what to ignore."""
    files = {"FGNET/Data_files/readme.txt": b"not a photo", "__MACOSX/FGNET/._x": b"junk"}
    for i, (stem, gender, expression) in enumerate(photos):
        image, landmarks = draw_photo(stem, gender, expression)
        buffer = io.BytesIO()
        Image.fromarray(image).convert("L" if i % 4 == 1 else "RGB").save(
            buffer, format="JPEG", quality=90)  # FG-NET holds grayscale photos too
        files[f"FGNET/images/{stem}.JPG"] = buffer.getvalue()
        files[f"FGNET/points/{stem.lower()}.pts"] = masks.format_pts(landmarks, "\r\n").encode()
    return files


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def write_manual_dir(root: Path, fgnet=None, names=FGNET_MASK_NAMES,
                     table: str | None = LABEL_TABLE) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_zip(root / fgnet_paired.FGNET_ARCHIVE, fgnet_files() if fgnet is None else fgnet)
    if names is not None:
        write_zip(root / fgnet_mask.ARCHIVE_NAME, {f"FGNET-MASK/{n}": b"\xff\xd8" for n in names})
    if table is not None:
        (root / fgnet_paired.LABELS_NAME).write_text(table)
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[str, Path]:
    """(data_dir, manual_dir) of fgnet_paired built from the 14 drawn photos."""
    root = tmp_path_factory.mktemp("fgnet_paired")
    manual = write_manual_dir(root / "manual")
    build_data.build("fgnet_paired", str(root / "tfds"), str(manual))
    return str(root / "tfds"), manual


def read(data_dir: str, split: str) -> list[dict]:
    source = tfds.data_source("fgnet_paired", split=split, data_dir=data_dir)
    return [source[i] for i in range(len(source))]


def test_copies_twins_labels_and_splits(built):
    data_dir, _ = built
    splits = {s: read(data_dir, s) for s in (*fgnet_mask.SPLITS,
                                             *(f"unmasked_{s}" for s in fgnet_mask.SPLITS))}
    masked = splits["train"] + splits["test"]
    twins = splits["unmasked_photo_train"] + splits["unmasked_photo_test"]
    assert len(twins) == len(PHOTOS) and {t["mask_kind"] for t in twins} == {b"none"}
    assert len(masked) == sum(fgnet_paired.num_copies(s) for s, _, _ in PHOTOS)
    for twin in twins:
        name = labels.parse_filename(twin["filename"].decode())
        stem = name.photo.split("_")[0]
        stem = next(s for s, _, _ in PHOTOS if s.upper() == stem)
        # Labels: FGNET-MASK's names (with or without the letter) and fgnet_labels.csv.
        assert (twin["gender"], twin["expression"]) == TRUTH[stem], stem
        assert twin["age"] == apply_lib.parse_fgnet_stem(stem)[1]
        copies = [m for m in masked if m["photo_id"] == twin["photo_id"]]
        assert len(copies) == fgnet_paired.num_copies(stem) in (3, 4)
        assert len({c["mask_kind"] for c in copies}) == len(copies)  # each another mask
        for c in copies:
            for key in ("subject_id", "age", "age_group", "gender", "expression"):
                assert c[key] == twin[key], key
            np.testing.assert_array_equal(c["landmarks"], twin["landmarks"])
            # The twin and its copy differ inside the mask's region, barely outside it.
            a, b = twin["image"].astype(int), c["image"].astype(int)
            assert a.shape == b.shape == (SIZE, SIZE + 12, 3)
            region = masks.mask_region(c["landmarks"], a.shape[:2], c["mask_kind"].decode())
            near = np.zeros_like(region)  # the region and 3 px around it (JPEG blocks, loops)
            for dy in range(-3, 4):
                for dx in range(-3, 4):
                    near |= np.roll(region, (dy, dx), (0, 1))
            inside = np.abs(a - b)[region].mean()
            outside = np.abs(a - b)[~near].mean()
            assert inside > 10 * outside and outside < 2, (stem, inside, outside)
    # fgnet_mask's splits of the masked copies, and each one's twins.
    for pair in (("photo_train", "photo_test"), ("subject_train", "subject_test")):
        key = "photo_id" if pair[0].startswith("photo") else "subject_id"
        sides = [{r[key] for r in splits[s]} for s in pair]
        assert not sides[0] & sides[1] and len(splits[pair[0]]) + len(splits[pair[1]]) == \
            len(masked)
    for split in fgnet_mask.SPLITS:
        assert {t["photo_id"] for t in splits[f"unmasked_{split}"]} == \
            {r["photo_id"] for r in splits[split]}


def test_copies_are_those_of_masks_apply(built, tmp_path):
    data_dir, manual = built
    with zipfile.ZipFile(manual / fgnet_paired.FGNET_ARCHIVE) as archive:
        archive.extractall(tmp_path)
    apply_lib.mask_folder(str(tmp_path / "FGNET/images"), str(tmp_path / "FGNET/points"),
                          str(tmp_path / "masked"), kinds=fgnet_paired.KINDS,
                          copies=fgnet_paired.MAX_COPIES, seed=fgnet_paired.SEED)
    records = read(data_dir, "train") + read(data_dir, "test")
    assert records
    for r in records:
        name = r["filename"].decode()
        stem = labels.parse_filename(name).photo.split("_")[0]
        stem = next(s for s, _, _ in PHOTOS if s.upper() == stem)
        copy = int(name.rsplit("(", 1)[1][:-5]) if "(" in name else 0
        from_apply = tmp_path / "masked" / f"{stem}_{r['mask_kind'].decode()}_{copy}.jpg"
        np.testing.assert_array_equal(r["image"], np.asarray(Image.open(from_apply)))


def test_mask_gap_runs_on_fgnet_paired(built, tmp_path):
    data_dir, manual = built
    tiny = {"image_size": 32, "batch_size": 8, "num_train_steps": 2, "eval_every_steps": 2,
            "checkpoint_every_steps": 2, "warmup_epochs": 0.0, "log_every_steps": 1,
            "saliency_images": 0}
    out = mask_gap.run_mask_gap(
        str(tmp_path), protocol="photo", methods=("multitask_cnn",), one_copy=False,
        data="fgnet_paired", data_dir=data_dir, manual_dir=str(manual),
        neural_overrides=tiny, num_samples=50)
    test_photos = len({r["photo_id"] for r in read(data_dir, "photo_test")})
    assert out["sizes"]["unmasked_test"]["images"] == test_photos
    assert len(out["cells"]) == 2 * 2 * len(TASKS) and len(out["gaps"]) == 2 * len(TASKS)
    report = (tmp_path / "mask_gap.md").read_text()
    assert "FG-NET with drawn masks" in report and "not FGNET-MASK's own" in report


def test_every_problem_is_reported_and_nothing_is_written(tmp_path):
    files = fgnet_files(PHOTOS[:5])
    del files["FGNET/points/001a05.pts"]
    files["FGNET/images/portrait.jpg"] = files["FGNET/images/001A02.JPG"]
    files["FGNET/points/portrait.pts"] = files["FGNET/points/001a02.pts"]
    files["FGNET/points/002a10.pts"] = b"version: 1\nn_points: 3\n{\n1 2\n}\n"
    names = [n for n in FGNET_MASK_NAMES if not n.startswith("001A43b")]
    manual = write_manual_dir(tmp_path / "manual", fgnet=files, names=names)
    with pytest.raises(fgnet_paired.SourceError) as error:
        build_data.build("fgnet_paired", str(tmp_path / "tfds"), str(manual))
    message = str(error.value)
    for expected in ("4 photo(s) cannot be used", "001A05.JPG: no .pts file named 001a05.pts",
                     "portrait.jpg: 'portrait': not an FG-NET photo name",
                     "001A43b: no FGNET-MASK name at person 1, age 43",
                     "002a10.pts: declares n_points: 3 but holds 1", "fgnet_labels.csv"):
        assert expected in message, message
    assert not list((tmp_path / "tfds").rglob("*.array_record*"))


def test_labels_disagreeing_without_a_table_are_named(tmp_path):
    manual = write_manual_dir(tmp_path / "manual", table=None)
    with pytest.raises(fgnet_paired.SourceError,
                       match=r"005A50a: FGNET-MASK's names at person 5, age 50 disagree "
                             r"\(male happy, male neutral\)"):
        build_data.build("fgnet_paired", str(tmp_path / "tfds"), str(manual))


@pytest.mark.parametrize("table, message", [
    ("photo,sex,expression\n", r"fgnet_labels.csv:1: expected the header"),
    ("photo,gender,expression\n001A02,male,smiling\n", r"fgnet_labels.csv:2: cannot read"),
    ("photo,gender,expression\n001B02,male,happy\n", r"fgnet_labels.csv:2: cannot read"),
    ("photo,gender,expression\n001A02,male,happy\n001a02,male,neutral\n",
     r"fgnet_labels.csv:3: 001a02 is labelled twice"),
])
def test_label_table_mistakes_name_file_and_line(tmp_path, table, message):
    path = tmp_path / fgnet_paired.LABELS_NAME
    path.write_text(table)
    with pytest.raises(fgnet_paired.SourceError, match=message):
        fgnet_paired.read_label_table(path)


def test_missing_sources_are_explained(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / fgnet_paired.LABELS_NAME).write_text(LABEL_TABLE)
    with pytest.raises(FileNotFoundError, match=r"neither .*FGNET.zip nor .*FGNET/ exists"):
        build_data.build("fgnet_paired", str(tmp_path / "tfds"), str(manual))
    (manual / fgnet_paired.LABELS_NAME).unlink()
    write_zip(manual / fgnet_paired.FGNET_ARCHIVE, fgnet_files(PHOTOS[:1]))
    with pytest.raises(FileNotFoundError, match=r"no labels in .*FGNET-MASK_dataset.zip nor "
                                                r"fgnet_labels.csv"):
        build_data.build("fgnet_paired", str(tmp_path / "tfds"), str(manual))


def test_mask_regions_match_the_masks_at_the_models_input(built):
    data_dir, _ = built
    copies = pipeline.open_split("fgnet_paired", "photo_test", data_dir)
    twins = pipeline.open_split("fgnet_paired", "unmasked_photo_test", data_dir)
    regions = pipeline.mask_regions(copies, range(len(copies)), 24)
    a = pipeline.load_all(copies, np.arange(len(copies)), 24)
    b = pipeline.load_all(twins, np.arange(len(twins)), 24)
    twin_of = {p: i for i, p in enumerate(pipeline.read_labels(twins)["photo_id"])}
    twin = b["image"][[twin_of[p] for p in pipeline.read_labels(copies)["photo_id"]]]
    diff = np.abs(a["image"].astype(float) - twin.astype(float)).mean(-1)
    # Centre-cropped and resized as the images are: the pixels that changed are the region's.
    assert regions.shape == (len(copies), 24, 24)
    assert diff[regions].mean() > 10 * diff[~regions].mean()
