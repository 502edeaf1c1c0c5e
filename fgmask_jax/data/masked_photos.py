"""Masking a folder of face photos, with a manifest of the masked JPEGs and the photos skipped.

``mask_folder`` is the library of ``python -m fgmask_jax.masks.apply`` (whose docstring
describes the files it writes). Landmarks come from FG-NET's ``.pts`` files, matched to the
photos by file stem ignoring case (``001A02.JPG`` with ``001a02.pts``), or from a function
that finds the faces of each photo (by default dlib's detector, ``detector_landmarks``).
Each photo's copies are those of ``masks.copies.masked_copies``; the manifest records the
person and age of FG-NET names (``labels.parse_fgnet_stem``).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Callable, Sequence

import numpy as np
from absl import logging
from PIL import Image, ImageOps

from fgmask_jax import errors
from fgmask_jax.data.labels import IMAGE_SUFFIXES, parse_fgnet_stem
from fgmask_jax.masks import landmarks as landmarks_lib
from fgmask_jax.masks.copies import faces_to_mask, masked_copies
from fgmask_jax.masks.pts import read_pts
from fgmask_jax.masks.render import MASK_KINDS, LandmarkError

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("output", "source", "subject", "age", "mask_kind", "color")
SKIPPED_NAME = "skipped.csv"
SKIPPED_COLUMNS = ("source", "reason")
NO_FACE = "no face found"
_LISTED_MISSING = 20

# (image path, uint8[H, W, 3] RGB photo) -> float[68, 2] (x, y) landmarks of each face in it,
# iBUG-68 order; none when the photo shows no face.
LandmarksFn = Callable[[str, np.ndarray], Sequence[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class ManifestRow:
    """One masked JPEG: its name in the output folder and where it came from."""

    output: str
    source: str
    subject: str  # FG-NET person number ("1" for 001A02.JPG), "" for other names
    age: str  # years ("2" for 001A02.JPG), "" for other names
    mask_kind: str
    color: str  # "#rrggbb"


@dataclasses.dataclass(frozen=True)
class SkippedPhoto:
    """A photo that gave no masked JPEG, and why."""

    source: str  # its file name in the images folder
    reason: str


class PhotosSkippedError(ValueError):
    """Photos gave no masked JPEG; the others were masked and are in ``rows``."""

    def __init__(self, message: str, rows: list[ManifestRow], skipped: list[SkippedPhoto]):
        super().__init__(message)
        self.rows = rows
        self.skipped = skipped


def pair_images_with_pts(images_dir: str, pts_dir: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Photos of ``images_dir`` matched to ``.pts`` files of ``pts_dir`` by stem, any case.

    Returns:
      (pairs, missing): sorted (image path, pts path) pairs, and the sorted image paths that
      have no .pts file.

    Raises:
      FileNotFoundError: a folder does not exist.
      errors.DataError: (a ValueError) no photos at all, or two files whose stems differ
        only in case.
    """
    images = _images_by_stem(images_dir)
    pts = _files_by_stem(pts_dir, (".pts",))
    pairs, missing = [], []
    for stem in sorted(images):
        if stem in pts:
            pairs.append((images[stem], pts[stem]))
        else:
            missing.append(images[stem])
    return pairs, missing


def _images_by_stem(images_dir: str) -> dict[str, str]:
    images = _files_by_stem(images_dir, IMAGE_SUFFIXES)
    if not images:
        raise errors.DataError(
            f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder"
        )
    return images


def _files_by_stem(folder: str, suffixes: tuple[str, ...]) -> dict[str, str]:
    """Lower-case stem -> path of the files in ``folder`` with one of ``suffixes`` (any case)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no such folder")
    found: dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        stem, suffix = os.path.splitext(name)
        if suffix.lower() not in suffixes:
            continue
        path = os.path.join(folder, name)
        if stem.lower() in found:
            raise errors.DataError(
                f"{found[stem.lower()]} and {path} have the same name ignoring case: "
                "remove one, so that each photo has one landmark file and one output name"
            )
        found[stem.lower()] = path
    return found


def mask_folder(
    images_dir: str,
    pts_dir: str | None,
    out_dir: str,
    kinds: Sequence[str] = MASK_KINDS,
    copies: int = 1,
    seed: int = 0,
    skip_missing: bool = False,
    *,
    landmarks_fn: LandmarksFn | None = None,
) -> list[ManifestRow]:
    """Masks every photo of ``images_dir`` ``copies`` times into ``out_dir``, with a manifest.

    Landmarks come from the ``.pts`` files of ``pts_dir``, or, with ``pts_dir=None``, from
    ``landmarks_fn`` (by default dlib's detector: ``detector_landmarks()``), called with each
    photo upright as its EXIF orientation says; every face it returns is masked. With the
    detector that is every face of ``faces_to_mask``.

    Returns:
      The rows written to ``out_dir/manifest.csv``, one per JPEG. Photos that gave none
      are listed in ``out_dir/skipped.csv`` (source, reason).

    Raises:
      errors.DataError: (a ValueError) unknown kinds, copies < 1, ``out_dir`` is
        ``images_dir``, photos without a .pts file (unless ``skip_missing``; then nothing
        is written), a malformed .pts file, no photos, names that differ only in case.
      ValueError: both ``pts_dir`` and ``landmarks_fn`` given.
      FileNotFoundError: a folder does not exist.
      OSError: a photo that cannot be read with ``pts_dir``, or files that cannot be written.
      PhotosSkippedError: (a ValueError) with ``pts_dir=None``, photos where no face was
        found, that cannot be read or whose faces cannot take a mask, unless
        ``skip_missing``; raised after masking all the others.
      LandmarkError: landmarks of a .pts file that cannot place a mask, naming the file.
      ImportError: ``pts_dir=None`` without ``landmarks_fn``, and dlib is not installed.
    """
    _check_arguments(images_dir, out_dir, kinds, copies)
    if pts_dir is not None and landmarks_fn is not None:
        raise ValueError("give pts_dir or landmarks_fn, not both")
    if pts_dir is None:
        return _mask_with_landmarks_fn(
            images_dir, out_dir, kinds, copies, seed, skip_missing, landmarks_fn
        )
    return _mask_with_pts(images_dir, pts_dir, out_dir, kinds, copies, seed, skip_missing)


def _check_arguments(images_dir: str, out_dir: str, kinds: Sequence[str], copies: int) -> None:
    unknown = [kind for kind in kinds if kind not in MASK_KINDS]
    if unknown or not kinds:
        raise errors.DataError(
            f"kinds {list(kinds)!r}: each must be one of {', '.join(MASK_KINDS)}, at least one"
        )
    if copies < 1:
        raise errors.DataError(f"copies must be >= 1, got {copies}")
    if os.path.realpath(out_dir) == os.path.realpath(images_dir):
        raise errors.DataError(
            f"{out_dir}: refusing to write masked photos into the images folder; "
            "choose another output folder"
        )


def _mask_with_pts(
    images_dir, pts_dir, out_dir, kinds, copies, seed, skip_missing
) -> list[ManifestRow]:
    """``mask_folder`` with landmarks from the ``.pts`` files of ``pts_dir``."""
    pairs, missing = pair_images_with_pts(images_dir, pts_dir)
    if missing and not skip_missing:
        raise errors.DataError(
            f"{len(missing)} images in {images_dir} have no .pts file in {pts_dir}: "
            + _listed([os.path.basename(p) for p in missing])
            + "; pass --skip_missing to mask only the photos that have landmarks"
        )
    if missing:
        logging.warning("Skipping %d images without a .pts file.", len(missing))
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for number, (image_path, pts_path) in enumerate(pairs):
        with Image.open(image_path) as photo:
            # Not turned by EXIF: .pts coordinates are those of the pixels as stored.
            image = np.asarray(photo.convert("RGB"))  # grayscale and palette photos become RGB
        masked, bad = masked_copies(image, [read_pts(pts_path)], image_path, kinds, copies, seed)
        if bad:
            raise LandmarkError(f"{pts_path}: {bad[0]}; fix or remove this file")
        rows.extend(_save_copies(masked, image_path, out_dir))
        if (number + 1) % 200 == 0:
            logging.info("Masked %d of %d photos.", number + 1, len(pairs))
    write_manifest(rows, os.path.join(out_dir, MANIFEST_NAME))
    reason = f"no .pts file in {pts_dir}"
    write_skipped(
        [SkippedPhoto(os.path.basename(p), reason) for p in missing],
        os.path.join(out_dir, SKIPPED_NAME),
    )
    return rows


def detector_landmarks(
    detector: landmarks_lib.FaceLandmarkDetector | None = None,
) -> LandmarksFn:
    """A ``LandmarksFn``: the landmarks of the faces ``detector`` finds that ``faces_to_mask``
    keeps, largest first.

    Raises:
      ImportError: no ``detector`` given and dlib is not installed (the models load now,
        before any photo is looked at).
    """
    detector = detector or landmarks_lib.FaceLandmarkDetector()

    def landmarks_of_faces(image_path: str, image: np.ndarray) -> list[np.ndarray]:
        del image_path  # the detector looks only at the pixels
        return [face.landmarks for face in faces_to_mask(detector(image))]

    return landmarks_of_faces


def _mask_with_landmarks_fn(
    images_dir, out_dir, kinds, copies, seed, skip_missing, landmarks_fn
) -> list[ManifestRow]:
    """``mask_folder`` with ``pts_dir=None``."""
    images = _images_by_stem(images_dir)
    if landmarks_fn is None:
        landmarks_fn = detector_landmarks()
    os.makedirs(out_dir, exist_ok=True)
    rows, skipped = [], []
    for number, stem in enumerate(sorted(images)):
        found, reason = _mask_photo_with(images[stem], landmarks_fn, kinds, copies, seed)
        if found is None:
            skipped.append(SkippedPhoto(os.path.basename(images[stem]), reason))
            logging.warning("Skipping %s: %s.", images[stem], reason)
        else:
            rows.extend(_save_copies(found, images[stem], out_dir))
        if (number + 1) % 200 == 0:
            logging.info("Looked at %d of %d photos.", number + 1, len(images))
    write_manifest(rows, os.path.join(out_dir, MANIFEST_NAME))
    skipped_path = os.path.join(out_dir, SKIPPED_NAME)
    write_skipped(skipped, skipped_path)
    if skipped:
        listed = _listed([f"{s.source} ({s.reason})" for s in skipped])
        message = (
            f"{len(skipped)} of {len(images)} photos in {images_dir} gave no masked photo: "
            f"{listed}; all are listed in {skipped_path}"
        )
        if not skip_missing:
            raise PhotosSkippedError(
                f"{message}. The other {len(images) - len(skipped)} photos were masked; pass "
                "--skip_missing to accept photos without a face",
                rows,
                skipped,
            )
        logging.warning("%s.", message)
    return rows


def _mask_photo_with(image_path, landmarks_fn, kinds, copies, seed):
    """(masked copies, "") of one photo with ``landmarks_fn``'s faces, or (None, reason)."""
    try:
        with Image.open(image_path) as photo:
            # Upright, as a viewer shows it: the detector looks for upright faces.
            image = np.asarray(ImageOps.exif_transpose(photo).convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return None, f"unreadable image: {error}"
    faces = list(landmarks_fn(image_path, image))
    if not faces:
        return None, NO_FACE
    masked, bad = masked_copies(image, faces, image_path, kinds, copies, seed)
    if len(bad) == len(faces):
        return None, f"landmarks cannot place a mask: {bad[0]}"
    for index, error in bad.items():
        logging.warning(
            "%s: face %d of %d left unmasked: %s", image_path, index + 1, len(faces), error
        )
    return masked, ""


def _save_copies(masked, image_path, out_dir) -> list[ManifestRow]:
    """Writes one photo's masked copies as JPEGs; returns their manifest rows."""
    stem = os.path.splitext(os.path.basename(image_path))[0]
    try:
        subject, age = (str(n) for n in parse_fgnet_stem(stem)[:2])
    except ValueError:  # not an FG-NET name: no person or age to record
        subject, age = "", ""
    rows = []
    for copy, (kind, color, image) in enumerate(masked):
        output = f"{stem}_{kind}_{copy}.jpg"
        Image.fromarray(image).save(os.path.join(out_dir, output), quality=95)
        rows.append(
            ManifestRow(
                output=output,
                source=os.path.basename(image_path),
                subject=subject,
                age=age,
                mask_kind=kind,
                color="#{:02x}{:02x}{:02x}".format(*color),
            )
        )
    return rows


def _listed(names: Sequence[str]) -> str:
    """The first names, comma-separated, and how many more there are."""
    more = len(names) - _LISTED_MISSING
    return ", ".join(names[:_LISTED_MISSING]) + (f" and {more} more" if more > 0 else "")


def write_manifest(rows: Sequence[ManifestRow], path: str) -> None:
    """Writes ``rows`` as CSV with the header ``output,source,subject,age,mask_kind,color``."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(dataclasses.astuple(row) for row in rows)


def write_skipped(skipped: Sequence[SkippedPhoto], path: str) -> None:
    """Writes ``skipped`` as CSV ``source,reason``; with none, removes an old file there."""
    if not skipped:
        if os.path.isfile(path):  # from an earlier run into this folder: no longer true
            os.remove(path)
        return
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(SKIPPED_COLUMNS)
        writer.writerows(dataclasses.astuple(s) for s in skipped)
