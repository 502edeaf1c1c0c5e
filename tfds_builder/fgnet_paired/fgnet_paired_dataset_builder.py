"""The ``fgnet_paired`` TFDS dataset: FG-NET's photos, each unmasked and in masked copies.

FGNET-MASK holds only masked faces, so it cannot say what the mask costs. This data set
pairs every FG-NET photo (the unmasked "twin") with 3 or 4 masked copies of it, drawn
from the photo's 68 landmarks (FG-NET's ``.pts`` files) by ``fgmask_jax.masks.copies``,
the renderer and seeds of ``python -m fgmask_jax.masks.apply``: the copies of a photo are
those of ``masks.apply --kinds=surgical,n95,kn95,cloth --copies=4 --seed=0``, of which
each photo keeps its first 3 or 4 (drawn by its name; 3.4 a photo on average, as in
FGNET-MASK). These are this project's masks, not FGNET-MASK's.

FG-NET's names carry person and age only; gender and expression come from FGNET-MASK's
names (``NNNAxx_GG_EE``), matched on person, age and FG-NET's letter (``001A43a``), or on
person and age where FGNET-MASK's names have no letter and all its photos of that
person at that age agree. ``fgnet_labels.csv`` gives (or overrides) the labels of any
photo. The manual dir holds:

* ``FGNET.zip`` (FG-NET's images and points, unopened), or its extracted ``FGNET/``
  folder: images ``NNNAxx[l].JPG`` and ``.pts`` files, matched by name ignoring case, at
  any depth;
* ``FGNET-MASK_dataset.zip`` (the ``fgnet_mask`` archive: the labels), and/or
* ``fgnet_labels.csv``: ``photo,gender,expression`` rows (``001A43a,male,happy``).

The features are those of ``synthetic_masked_faces/paired`` (``photo_id``, ``mask_kind``
``none`` for a twin, ``landmarks``); the splits are ``fgnet_mask``'s six, of the masked
copies, and ``unmasked_<split>``: the twins of the photos in ``<split>``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import zlib
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tqdm import tqdm

from fgmask_jax.data import labels as labels_lib
from fgmask_jax.masks import MASK_KINDS, LandmarkError, parse_pts
from fgmask_jax.masks.copies import masked_copies
from fgmask_jax.tfds_builder.fgnet_mask import fgnet_mask_dataset_builder as fgnet_mask

FGNET_ARCHIVE = "FGNET.zip"
FGNET_FOLDER = "FGNET"
LABELS_NAME = "fgnet_labels.csv"
LABEL_COLUMNS = ("photo", "gender", "expression")
# The masks: those of `masks.apply --kinds=<KINDS> --copies=<MAX_COPIES> --seed=<SEED>`;
# each photo keeps its first 3 or 4 copies, 4 with probability COPIES_PER_PHOTO - 3.
KINDS = MASK_KINDS
MAX_COPIES = 4
COPIES_PER_PHOTO = 3.4
SEED = 0
JPEG_QUALITY = 95  # as masks.apply saves its copies; the twins are saved alike

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
fgnet_paired is built from FG-NET (1,002 photos of 82 persons, each with 68 landmarks in a
.pts file), which cannot be downloaded automatically: obtain FGNET.zip from its
distributors (FG-NET Aging Database, Lanitis et al.) yourself. Put in <manual_dir>:
  * {FGNET_ARCHIVE}, unopened, or its extracted folder {FGNET_FOLDER}/ (images/ and points/);
  * the labels: {fgnet_mask.ARCHIVE_NAME} (as for fgnet_mask: gender and expression from its
    file names) and/or {LABELS_NAME} with rows photo,gender,expression (001A43a,male,happy).
<manual_dir> defaults to <data_dir>/downloads/manual/ (the same folder as fgnet_mask's). Or:
  python -m fgmask_jax.build_data --dataset=fgnet_paired --data_dir=DIR --manual_dir=FOLDER
"""


class SourceError(ValueError):
    """FG-NET's files or the labels hold something the data set cannot be built from."""


@dataclasses.dataclass(frozen=True)
class Photo:
    """One FG-NET photo: where its image and landmarks are, and its labels."""

    stem: str  # FG-NET's name, e.g. 001A43a
    image: str  # member names in the FG-NET source
    points: str
    subject_id: int
    age: int
    letter: str
    gender: int = -1
    expression: int = -1

    @property
    def name(self) -> str:
        """The photo's FGNET-MASK name ``NNNAxx[l]_GG_EE``."""
        return labels_lib.photo_stem(self.subject_id, self.age, self.gender, self.expression,
                                     self.letter)


def num_copies(stem: str) -> int:
    """How many masked copies photo ``stem`` keeps: 3 or 4, drawn from its name (so
    adding photos changes no other), 4 with probability ``COPIES_PER_PHOTO - 3``."""
    rng = np.random.default_rng([SEED, zlib.crc32(stem.lower().encode())])
    base = int(COPIES_PER_PHOTO)
    return base + int(rng.uniform() < COPIES_PER_PHOTO - base)


def open_fgnet(manual_dir: epath.Path):
    """FG-NET's archive ``FGNET.zip`` in ``manual_dir``, else its folder ``FGNET/``.

    Raises:
      FileNotFoundError: neither is there (with the instructions).
    """
    archive, folder = manual_dir / FGNET_ARCHIVE, manual_dir / FGNET_FOLDER
    if archive.is_file():
        return fgnet_mask.ZipReader(
            archive, advice=f"Obtain {FGNET_ARCHIVE} again, or put its extracted folder "
            f"{FGNET_FOLDER}/ in {manual_dir} instead.")
    if folder.is_dir():
        return fgnet_mask.FolderReader(folder)
    raise FileNotFoundError(f"fgnet_paired: neither {archive} nor {folder}/ exists.\n"
                            f"{MANUAL_DOWNLOAD_INSTRUCTIONS}")


def scan_fgnet(source) -> tuple[list[Photo], list[str]]:
    """FG-NET's photos in ``source``, each with its ``.pts`` file, sorted by name.

    Images are ``NNNAxx[l]`` with an image suffix, points any ``.pts`` file; they are
    matched by name ignoring case. Other files are ignored.

    Returns:
      (photos, problems): the problems name each image that is misnamed, has no ``.pts``
      file, or shares its name with another.
    """
    images: dict[str, str] = {}
    points: dict[str, str] = {}
    problems: list[str] = []
    for name in fgnet_mask.member_names(source, FGNET_ARCHIVE):
        stem, suffix = os.path.splitext(name.replace("\\", "/").rsplit("/", 1)[-1])
        found = (images if suffix.lower() in labels_lib.IMAGE_SUFFIXES
                 else points if suffix.lower() == ".pts" else None)
        if found is None:
            continue
        if stem.lower() in found:
            problems.append(f"{name}: the same name (ignoring case) is also at "
                            f"{found[stem.lower()]}")
            continue
        found[stem.lower()] = name
    photos = []
    for key in sorted(images):
        stem = os.path.splitext(images[key].replace("\\", "/").rsplit("/", 1)[-1])[0]
        try:
            subject, age, letter = labels_lib.parse_fgnet_stem(stem)
        except ValueError as e:
            problems.append(f"{images[key]}: {e}")
            continue
        if key not in points:
            problems.append(f"{images[key]}: no .pts file named {key}.pts (any case)")
            continue
        photos.append(Photo(stem, images[key], points[key], subject, age, letter))
    return photos, problems


def read_label_table(path: epath.Path) -> dict[str, tuple[int, int]]:
    """``fgnet_labels.csv``: FG-NET name (upper case) -> (gender, expression) indices.

    Raises:
      SourceError: naming the file and line of a row it cannot read, and the format.
    """
    table: dict[str, tuple[int, int]] = {}
    fmt = (f"expected the header {','.join(LABEL_COLUMNS)}, then rows such as "
           f"001A43a,male,happy (gender {'/'.join(labels_lib.GENDERS)}, expression "
           f"{'/'.join(labels_lib.EXPRESSIONS)})")
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    if not rows or tuple(c.strip().lower() for c in rows[0]) != LABEL_COLUMNS:
        raise SourceError(f"{path}:1: {fmt}")
    for number, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        try:
            photo, gender, expression = (c.strip() for c in row)
            labels_lib.parse_fgnet_stem(photo)
            value = (labels_lib.GENDERS.index(gender.lower()),
                     labels_lib.EXPRESSIONS.index(expression.lower()))
        except ValueError:
            raise SourceError(f"{path}:{number}: cannot read {','.join(row)!r}: {fmt}") from None
        if table.setdefault(photo.upper(), value) != value:
            raise SourceError(f"{path}:{number}: {photo} is labelled twice, differently")
    return table


def fgnet_mask_labels(names: Sequence[str]) -> dict[tuple[int, int, str], set[tuple[int, int]]]:
    """(person, age, letter) -> the (gender, expression) pairs FGNET-MASK's file names
    give there; names that are not FGNET-MASK's are ignored."""
    found: dict[tuple[int, int, str], set[tuple[int, int]]] = {}
    for name in names:
        try:
            lab = labels_lib.parse_filename(name.replace("\\", "/").rsplit("/", 1)[-1])
        except ValueError:
            continue
        found.setdefault((lab.subject_id, lab.age, lab.letter), set()).add(
            (lab.gender, lab.expression))
    return found


def label_photos(photos: Sequence[Photo], table: dict[str, tuple[int, int]],
                 from_names: dict[tuple[int, int, str], set[tuple[int, int]]],
                 ) -> tuple[list[Photo], list[str]]:
    """Each photo with its gender and expression: from ``table`` (by FG-NET name), else
    from FGNET-MASK's names at its person, age and letter, else at its person and age
    (names without a letter), when those agree.

    Returns:
      (labelled photos, problems): a problem for each photo with no label or several.
    """
    labelled, problems = [], []
    for p in photos:
        if p.stem.upper() in table:
            gender, expression = table[p.stem.upper()]
        else:
            found = from_names.get((p.subject_id, p.age, p.letter)) or from_names.get(
                (p.subject_id, p.age, ""), set())
            if len(found) != 1:
                seen = ", ".join(f"{labels_lib.GENDERS[g]} {labels_lib.EXPRESSIONS[e]}"
                                 for g, e in sorted(found))
                problems.append(f"{p.stem}: " + (
                    f"FGNET-MASK's names at person {p.subject_id}, age {p.age} disagree "
                    f"({seen})" if found else
                    f"no FGNET-MASK name at person {p.subject_id}, age {p.age}"))
                continue
            ((gender, expression),) = found
        labelled.append(dataclasses.replace(p, gender=gender, expression=expression))
    return labelled, problems


def _problem_error(where: str, problems: list[str]) -> SourceError:
    return SourceError(
        f"{where}: {len(problems)} photo(s) cannot be used for fgnet_paired:\n"
        f"{fgnet_mask.listed(problems)}\n"
        f"Photos need an FG-NET name NNNAxx[l].JPG and a .pts file of the same name; a "
        f"photo's gender and expression can be given in {LABELS_NAME} in the manual dir "
        f"(rows photo,gender,expression such as 001A43a,male,happy). Then build again.")


def jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def render(photo: Photo, image_data: bytes, points: np.ndarray) -> list[dict]:
    """The photo's masked copies, then its unmasked twin, as dataset records (no
    ``photo_id`` yet).

    Raises:
      masks.LandmarkError: the landmarks cannot place a mask.
      Exception: whatever PIL raises for an image that does not decode.
    """
    with Image.open(io.BytesIO(image_data)) as image:
        # Not turned by EXIF: .pts coordinates are those of the pixels as stored.
        rgb = np.asarray(image.convert("RGB"))
    copies, bad = masked_copies(rgb, [points], photo.image, KINDS, num_copies(photo.stem), SEED)
    if bad:
        raise LandmarkError(bad[0])
    shared = {"age": photo.age, "age_group": labels_lib.age_group(photo.age),
              "gender": photo.gender, "expression": photo.expression,
              "subject_id": photo.subject_id, "landmarks": points.astype(np.float32)}
    records = [{"image": jpeg(image), "filename": labels_lib.copy_filename(photo.name, k),
                "mask_kind": kind, **shared} for k, (kind, _, image) in enumerate(copies)]
    records.append({"image": jpeg(rgb), "filename": labels_lib.twin_filename(photo.name),
                    "mask_kind": "none", **shared})
    return records


class Builder(tfds.core.GeneratorBasedBuilder):
    """FG-NET's photos, each unmasked and in 3 or 4 masked copies, with FGNET-MASK's labels."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: FG-NET's photos (twins) and 3.4 masked copies a photo "
        "(masks.apply's renderer, seed 0), labels from FGNET-MASK's names or "
        "fgnet_labels.csv, fgnet_mask's splits and their unmasked_* twins.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    pkg_dir_path = epath.Path(__file__).parent  # as in fgnet_mask: the package maps the folder

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=fgnet_mask.paired_features(),
            homepage="https://doi.org/10.1109/34.993553",  # FG-NET (Lanitis et al., 2002)
            disable_shuffling=True,  # records in file-name order, as in fgnet_mask
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        try:
            manual_dir = epath.Path(dl_manager.manual_dir)
        except AssertionError as e:  # TFDS: the manual dir is missing or empty
            raise FileNotFoundError(f"fgnet_paired: {e}") from None
        records = self._read(manual_dir)
        records.sort(key=lambda r: r["filename"])
        masked = [r for r in records if r["mask_kind"] != "none"]
        twins = [r for r in records if r["mask_kind"] == "none"]
        number = {n: i + 1 for i, n in enumerate(sorted({
            labels_lib.parse_filename(r["filename"]).photo for r in twins}))}
        for r in records:
            r["photo_id"] = number[labels_lib.parse_filename(r["filename"]).photo]
        photo_ids = [r["photo_id"] for r in masked]
        indices = fgnet_mask.split_indices(
            [r["filename"] for r in masked], [r["subject_id"] for r in masked], photo_ids)
        twin_indices = fgnet_mask.twin_split_indices(
            photo_ids, indices, [r["photo_id"] for r in twins])
        return {
            **{s: self._generate_examples([masked[i] for i in ix]) for s, ix in indices.items()},
            **{s: self._generate_examples([twins[i] for i in ix])
               for s, ix in twin_indices.items()},
        }

    def _read(self, manual_dir: epath.Path) -> list[dict]:
        """Every record, drawn in memory (a few hundred MB for FG-NET): each goes to several
        splits, and nothing is written unless every photo can be used."""
        table_path = manual_dir / LABELS_NAME
        table = read_label_table(table_path) if table_path.is_file() else {}
        from_names = {}
        if (manual_dir / fgnet_mask.ARCHIVE_NAME).is_file():
            labels_source = fgnet_mask.ZipReader(manual_dir / fgnet_mask.ARCHIVE_NAME)
            try:
                from_names = fgnet_mask_labels(fgnet_mask.member_names(labels_source))
            finally:
                labels_source.close()
        elif not table:
            raise FileNotFoundError(
                f"fgnet_paired: no labels in {manual_dir}: neither {fgnet_mask.ARCHIVE_NAME} "
                f"nor {LABELS_NAME}.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")
        source = open_fgnet(manual_dir)
        try:
            photos, problems = scan_fgnet(source)
            photos, unlabelled = label_photos(photos, table, from_names)
            problems += unlabelled
            if not photos and not problems:
                raise SourceError(f"{source.where}: no FG-NET photos found.\n"
                                  f"{MANUAL_DOWNLOAD_INSTRUCTIONS}")
            records = []
            for photo in tqdm(photos, desc="Masking FG-NET photos", unit=" photos",
                              leave=False):
                try:
                    points = parse_pts(source.read(photo.points), photo.points)
                    records += render(photo, source.read(photo.image), points)
                except Exception as e:  # a bad file: report it with the others
                    problems.append(f"{photo.image}: {type(e).__name__}: {e}")
        finally:
            source.close()
        if problems:
            raise _problem_error(source.where, problems)
        return records

    def _generate_examples(self, records: list[dict]) -> Iterator[tuple[str, dict]]:
        for record in records:
            yield record["filename"], record
