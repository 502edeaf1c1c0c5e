"""Mask a folder of face photos using their FG-NET landmark files.

  python -m fgmask_jax.masks.apply --images=FGNET/images --pts=FGNET/points --out=masked \\
      --kinds=surgical,n95,kn95,cloth --copies=3 --seed=0

Photos are matched to ``.pts`` files by file stem, ignoring case (FG-NET pairs
``001A02.JPG`` with ``001a02.pts``; ``001A43a.JPG``, a second photo at age 43, with
``001a43a.pts``). Each photo gives ``--copies`` masked JPEGs named ``<stem>_<kind>_<copy>.jpg``;
the kinds of one photo's copies are consecutive in ``--kinds`` from a start drawn by seed, so
copies differ in kind and kinds are spread evenly. ``manifest.csv`` in the output folder has
one row per JPEG: ``output,source,subject,age,mask_kind,color`` (subject and age read from
FG-NET names ``NNNAxx[a]``, empty for other names; color as ``#rrggbb``).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import zlib
from collections.abc import Sequence

import numpy as np
from absl import app, flags, logging
from PIL import Image

from fgmask_jax.masks.pts import read_pts
from fgmask_jax.masks.render import MASK_KINDS, LandmarkError, mask_color, render_mask

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("output", "source", "subject", "age", "mask_kind", "color")
_FGNET_STEM = re.compile(r"^(?P<subject>\d+)[Aa](?P<age>\d+)[A-Za-z]?$")
_LISTED_MISSING = 20

_IMAGES = flags.DEFINE_string(
    "images", None, "Folder of face photos (.jpg, .jpeg, .png, .bmp), e.g. FG-NET's images/."
)
_PTS = flags.DEFINE_string(
    "pts",
    None,
    "Folder of 68-point .pts landmark files, one per photo, matched by file stem "
    "ignoring case (001A02.JPG <-> 001a02.pts).",
)
_OUT = flags.DEFINE_string(
    "out", None, "Folder for the masked JPEGs and manifest.csv (created; must not be --images)."
)
_KINDS = flags.DEFINE_list(
    "kinds", list(MASK_KINDS), f"Mask kinds to use, comma-separated, from {','.join(MASK_KINDS)}."
)
_COPIES = flags.DEFINE_integer(
    "copies",
    1,
    "Masked versions of each photo; copies of one photo get different kinds "
    "while copies <= number of kinds.",
    lower_bound=1,
)
_SEED = flags.DEFINE_integer(
    "seed",
    0,
    "Seed of kinds, colours and patterns; the same seed gives the same files.",
    lower_bound=0,
)
_SKIP_MISSING = flags.DEFINE_bool(
    "skip_missing", False, "Skip photos that have no .pts file instead of stopping with a list."
)


@dataclasses.dataclass(frozen=True)
class ManifestRow:
    """One masked JPEG: its name in the output folder and where it came from."""

    output: str
    source: str
    subject: str  # FG-NET person number ("1" for 001A02.JPG), "" for other names
    age: str  # years ("2" for 001A02.JPG), "" for other names
    mask_kind: str
    color: str  # "#rrggbb"


def pair_images_with_pts(images_dir: str, pts_dir: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Photos of ``images_dir`` matched to ``.pts`` files of ``pts_dir`` by stem, any case.

    Returns:
      (pairs, missing): sorted (image path, pts path) pairs, and the sorted image paths that
      have no .pts file.

    Raises:
      FileNotFoundError: a folder does not exist.
      ValueError: no photos at all, or two files whose stems differ only in case.
    """
    images = _files_by_stem(images_dir, IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    pts = _files_by_stem(pts_dir, (".pts",))
    pairs, missing = [], []
    for stem in sorted(images):
        if stem in pts:
            pairs.append((images[stem], pts[stem]))
        else:
            missing.append(images[stem])
    return pairs, missing


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
            raise ValueError(
                f"{found[stem.lower()]} and {path} have the same name ignoring case: "
                "remove one, so that each photo has one landmark file"
            )
        found[stem.lower()] = path
    return found


def mask_folder(
    images_dir: str,
    pts_dir: str,
    out_dir: str,
    kinds: Sequence[str] = MASK_KINDS,
    copies: int = 1,
    seed: int = 0,
    skip_missing: bool = False,
) -> list[ManifestRow]:
    """Masks every photo of ``images_dir`` ``copies`` times into ``out_dir``, with a manifest.

    Returns:
      The rows written to ``out_dir/manifest.csv``, one per JPEG.

    Raises:
      ValueError: unknown kinds, copies < 1, ``out_dir`` is ``images_dir``, photos without
        landmarks (unless ``skip_missing``), a malformed .pts file.
      LandmarkError: landmarks that cannot place a mask, naming the .pts file.
    """
    unknown = [kind for kind in kinds if kind not in MASK_KINDS]
    if unknown or not kinds:
        raise ValueError(
            f"kinds {list(kinds)!r}: each must be one of {', '.join(MASK_KINDS)}, at least one"
        )
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    if os.path.realpath(out_dir) == os.path.realpath(images_dir):
        raise ValueError(
            f"{out_dir}: refusing to write masked photos into the images folder; "
            "choose another output folder"
        )
    pairs, missing = pair_images_with_pts(images_dir, pts_dir)
    if missing and not skip_missing:
        listed = ", ".join(os.path.basename(p) for p in missing[:_LISTED_MISSING])
        more = len(missing) - _LISTED_MISSING
        raise ValueError(
            f"{len(missing)} images in {images_dir} have no .pts file in {pts_dir}: {listed}"
            + (f" and {more} more" if more > 0 else "")
            + "; pass --skip_missing to mask only the photos that have landmarks"
        )
    if missing:
        logging.warning("Skipping %d images without a .pts file.", len(missing))
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for number, (image_path, pts_path) in enumerate(pairs):
        rows.extend(_mask_photo(image_path, pts_path, out_dir, kinds, copies, seed))
        if (number + 1) % 200 == 0:
            logging.info("Masked %d of %d photos.", number + 1, len(pairs))
    write_manifest(rows, os.path.join(out_dir, MANIFEST_NAME))
    return rows


def _mask_photo(image_path, pts_path, out_dir, kinds, copies, seed) -> list[ManifestRow]:
    """Writes the masked copies of one photo; returns their manifest rows."""
    with Image.open(image_path) as photo:
        image = np.asarray(photo.convert("RGB"))  # grayscale and palette photos become RGB
    landmarks = read_pts(pts_path)
    stem = os.path.splitext(os.path.basename(image_path))[0]
    match = _FGNET_STEM.match(stem)
    subject, age = (str(int(match["subject"])), str(int(match["age"]))) if match else ("", "")
    # Seeds from the name, not the position in the folder: adding photos changes no others.
    photo_seed = np.random.SeedSequence([seed, zlib.crc32(stem.lower().encode())])
    first_kind = int(np.random.default_rng(photo_seed).integers(len(kinds)))
    rows = []
    for copy, copy_seed in enumerate(photo_seed.spawn(copies)):
        kind = kinds[(first_kind + copy) % len(kinds)]
        render_seed = int(copy_seed.generate_state(1)[0])
        color = mask_color(kind, render_seed)
        try:
            masked = render_mask(image, landmarks, kind, color, render_seed)
        except LandmarkError as error:
            raise LandmarkError(f"{pts_path}: {error}; fix or remove this file") from None
        output = f"{stem}_{kind}_{copy}.jpg"
        Image.fromarray(masked).save(os.path.join(out_dir, output), quality=95)
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


def write_manifest(rows: Sequence[ManifestRow], path: str) -> None:
    """Writes ``rows`` as CSV with the header ``output,source,subject,age,mask_kind,color``."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(dataclasses.astuple(row) for row in rows)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        rows = mask_folder(
            _IMAGES.value,
            _PTS.value,
            _OUT.value,
            kinds=_KINDS.value,
            copies=_COPIES.value,
            seed=_SEED.value,
            skip_missing=_SKIP_MISSING.value,
        )
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    logging.info("Wrote %d masked photos and %s to %s.", len(rows), MANIFEST_NAME, _OUT.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["images", "pts", "out"])
    app.run(main)
