"""The synthetic builder's photo-aware data: the default configs' records kept, and
``paired_small``'s masked copies, unmasked twins and their splits, as a reader sees them."""

from __future__ import annotations

import hashlib
import itertools
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from fgmask_jax import masks
from fgmask_jax.data import build as build_data
from fgmask_jax.data import labels, splits, synthetic
from fgmask_jax.tfds_builder.synthetic_masked_faces import (
    synthetic_masked_faces_dataset_builder as builder_lib,
)

LABEL_KEYS = ("age", "age_group", "gender", "expression", "subject_id")
MASKED = ("train", "test", "subject_train", "subject_test", "photo_train", "photo_test")
PAIRS = {"study": ("train", "test"), "subject": ("subject_train", "subject_test"),
         "photo": ("photo_train", "photo_test")}

# Digests of records built by version 1.0.0 (before photo_id): every record of `small`,
# and the JPEG records of the first five examples of `default` (sorted JSON of file name,
# image sha256, labels and mask kind, in file-name order; see `_record_digest`).
SMALL_RECORDS = "86b08bab1896aaf695c08e8ed84da7706744c1ea54c35c6ffea6c1c03a9efc9f"
DEFAULT_FIRST_FIVE_RECORDS = "4b92e35eabd6589ca4145f7e23a7a3d9ca5bcb521103dfdf86ba3ba8ad151f63"


def _read(name: str, split: str, data_dir: str) -> list[dict]:
    """Every record of a split, images left as JPEG bytes, text as str."""
    source = tfds.data_source(name, split=split, data_dir=data_dir,
                              decoders={"image": tfds.decode.SkipDecoding()})
    rows = []
    for ex in source:
        row = {k: v.decode() if isinstance(v, bytes) and k != "image" else v
               for k, v in ex.items()}
        rows.append({k: v if k in ("image", "filename", "mask_kind", "landmarks") else int(v)
                     for k, v in row.items()})
    return rows


def _record_digest(rows: list[dict]) -> str:
    h = hashlib.sha256()
    for r in sorted(rows, key=lambda r: r["filename"]):
        h.update(json.dumps([r["filename"], hashlib.sha256(r["image"]).hexdigest(),
                             *[r[k] for k in LABEL_KEYS], r["mask_kind"]]).encode())
    return h.hexdigest()


def test_small_records_are_those_of_version_1_0_0(small_data_dir):
    name = "synthetic_masked_faces/small"
    rows = _read(name, "train", small_data_dir) + _read(name, "test", small_data_dir)
    assert _record_digest(rows) == SMALL_RECORDS
    assert sorted(r["photo_id"] for r in rows) == list(range(1, 61))  # each its own photo
    # With one image per photo, the photo-disjoint split is the study's.
    for masked, photo in (("train", "photo_train"), ("test", "photo_test")):
        assert [r["filename"] for r in _read(name, photo, small_data_dir)] == [
            r["filename"] for r in _read(name, masked, small_data_dir)]


def test_default_first_records_are_those_of_version_1_0_0():
    first = itertools.islice(synthetic.generate(3404, 82, seed=0, image_size=128), 5)
    h = hashlib.sha256()
    for example in first:
        record = builder_lib.encode_example(example)
        h.update(record["image"])
        rest = {k: v for k, v in record.items() if k not in ("image", "photo_id", "landmarks")}
        h.update(json.dumps(rest, sort_keys=True).encode())
    assert h.hexdigest() == DEFAULT_FIRST_FIVE_RECORDS


@pytest.fixture(scope="module")
def paired(tmp_path_factory) -> dict[str, list[dict]]:
    """paired_small, built once: {split: records}."""
    data_dir = str(tmp_path_factory.mktemp("paired"))
    name = "synthetic_masked_faces/paired_small"
    builder = build_data.build(name, data_dir)
    return {split: _read(name, split, data_dir) for split in builder.info.splits}


def test_paired_small_sizes_and_splits(paired):
    assert sorted(paired) == sorted([*MASKED, *(builder_lib.UNMASKED_PREFIX + s for s in MASKED)])
    masked = paired["train"] + paired["test"]
    assert len(masked) == 68 and len({r["photo_id"] for r in masked}) == 20
    for split in MASKED:
        assert all(r["mask_kind"] in masks.MASK_KINDS for r in paired[split]), split
        twins = paired[builder_lib.UNMASKED_PREFIX + split]
        assert all(r["mask_kind"] == synthetic.UNMASKED for r in twins)
        # For every photo of a masked split, its twin is in the matching unmasked split.
        assert [r["photo_id"] for r in twins] == sorted({r["photo_id"] for r in paired[split]})
        assert len({r["filename"] for r in paired[split]}) == len(paired[split])
    for protocol, (train, test) in PAIRS.items():
        assert sorted(r["filename"] for r in paired[train] + paired[test]) == sorted(
            r["filename"] for r in masked), protocol
    # The study's split stays a random split of images, so copies leak across it ...
    names = sorted(r["filename"] for r in masked)
    assert [r["filename"] for r in paired["test"]] == [names[i] for i in splits.study_split(68)[1]]
    leaked = {r["photo_id"] for r in paired["train"]} & {r["photo_id"] for r in paired["test"]}
    assert leaked
    # ... the photo and subject splits do not, and their unmasked mirrors neither.
    for prefix in ("", builder_lib.UNMASKED_PREFIX):
        for key, protocol in (("photo_id", "photo"), ("subject_id", "subject")):
            train, test = (paired[prefix + s] for s in PAIRS[protocol])
            assert not {r[key] for r in train} & {r[key] for r in test}, (prefix, protocol)
            if protocol == "photo":
                assert {r["photo_id"] for r in train + test} == set(range(1, 21))


def test_paired_small_copies_and_twins_agree(paired):
    by_photo: dict[int, list[dict]] = {}
    for r in paired["train"] + paired["test"] + paired["unmasked_photo_train"] + paired[
            "unmasked_photo_test"]:
        by_photo.setdefault(r["photo_id"], []).append(r)
    assert len(by_photo) == 20
    # The names say it too, as fgnet_mask reads them: copies differ only in " (k)".
    assert len({(p, labels.parse_filename(r["filename"]).photo)
                for p, rows in by_photo.items() for r in rows}) == 20
    for photo_id, rows in by_photo.items():
        kinds = [r["mask_kind"] for r in rows]
        assert kinds.count(synthetic.UNMASKED) == 1 and len(rows) in (4, 5), photo_id
        assert len(set(kinds)) == len(kinds)  # every copy another kind of mask
        assert len({tuple(r[k] for k in LABEL_KEYS) for r in rows}) == 1, photo_id
        assert len({r["landmarks"].tobytes() for r in rows}) == 1, photo_id  # one face
        twin = next(r for r in rows if r["mask_kind"] == synthetic.UNMASKED)
        assert twin["filename"].endswith(" (0).jpg")
        parsed = labels.parse_filename(twin["filename"])
        assert (parsed.subject_id, parsed.age, parsed.gender, parsed.expression) == (
            twin["subject_id"], twin["age"], twin["gender"], twin["expression"])
        assert len({r["image"] for r in rows}) == len(rows)
    assert np.mean([len(rows) - 1 for rows in by_photo.values()]) == pytest.approx(3.4)
