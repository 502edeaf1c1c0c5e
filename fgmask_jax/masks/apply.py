"""Mask a folder of face photos using their FG-NET landmark files, or landmarks it finds.

  python -m fgmask_jax.masks.apply --images=FGNET/images --pts=FGNET/points --out=masked \\
      --kinds=surgical,n95,kn95,cloth --copies=3 --seed=0
  python -m fgmask_jax.masks.apply --images=photos --pts=detect --out=masked

Photos are matched to ``.pts`` files by file stem, ignoring case (FG-NET pairs
``001A02.JPG`` with ``001a02.pts``; ``001A43a.JPG``, a second photo at age 43, with
``001a43a.pts``). With ``--pts=detect`` the photos need no ``.pts`` files: dlib's face
detector and its 68 landmarks (``landmarks.py``, the ``[landmarks]`` extra) look at each
photo turned upright as its EXIF orientation says, and mask every face found: the one the
detector is surest of, and each other one it is fairly sure of (``faces_to_mask``).

Each photo gives ``--copies`` masked JPEGs named ``<stem>_<kind>_<copy>.jpg``; the kinds of
one photo's copies are consecutive in ``--kinds`` from a start drawn by seed, so copies
differ in kind and kinds are spread evenly; the faces of one copy share its kind and colour.
``manifest.csv`` in the output folder has one row per JPEG:
``output,source,subject,age,mask_kind,color`` (subject and age read from FG-NET names
``NNNAxx[a]``, empty for other names; color as ``#rrggbb``). Photos that gave no JPEG (no
``.pts`` file, with ``--skip_missing``; with ``--pts=detect``: no face found, an unreadable
file, landmarks that cannot place a mask) are listed with the reason on stderr and in
``skipped.csv`` beside the manifest (``source,reason``).

Exit status 1 when photos gave no JPEG, unless ``--skip_missing``. Photos without a ``.pts``
file stop the command before it writes anything; with ``--pts=detect`` a photo without a
face is only known by looking at it, so all the others are masked first. A mistake in the
input (a missing folder, an unknown kind, a malformed ``.pts`` file) is one line and exit
status 2.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import zlib
from collections.abc import Callable, Sequence

import numpy as np
from absl import app, flags, logging
from PIL import Image, ImageOps

from fgmask_jax import cli
from fgmask_jax.masks import landmarks as landmarks_lib
from fgmask_jax.masks.pts import read_pts
from fgmask_jax.masks.render import MASK_KINDS, LandmarkError, mask_color, render_mask

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("output", "source", "subject", "age", "mask_kind", "color")
SKIPPED_NAME = "skipped.csv"
SKIPPED_COLUMNS = ("source", "reason")
DETECT = "detect"  # --pts=detect: landmarks from the face detector
NO_FACE = "no face found"
# dlib's HOG scores (> 0 is a detection): drawn test faces score 0.5-1.9 (median 1.3), and
# a patch on the astronaut's suit in scikit-image's photo 0.12, beside her face's 1.16.
MIN_SCORE_OF_MORE_FACES = 0.5
# FG-NET's photo names (``001A02``, ``001A43a``): person, 'A', age, a letter when the
# person has several photos at that age. They carry neither gender nor expression.
_FGNET_STEM = re.compile(r"^(?P<subject>\d+)[Aa](?P<age>\d+)(?P<letter>[A-Za-z]?)$")
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
      ValueError: no photos at all, or two files whose stems differ only in case.
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
        raise ValueError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
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
            raise ValueError(
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
      ValueError: unknown kinds, copies < 1, ``out_dir`` is ``images_dir``, both ``pts_dir``
        and ``landmarks_fn`` given, photos without a .pts file (unless ``skip_missing``;
        then nothing is written), a malformed .pts file.
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
    pairs, missing = pair_images_with_pts(images_dir, pts_dir)
    if missing and not skip_missing:
        raise ValueError(
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


def _check_arguments(images_dir: str, out_dir: str, kinds: Sequence[str], copies: int) -> None:
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


def faces_to_mask(faces: Sequence[landmarks_lib.Face]) -> list[landmarks_lib.Face]:
    """The faces of a photo that get a mask: the one the detector is surest of, and every
    other with a score of at least ``MIN_SCORE_OF_MORE_FACES``, in the order given.

    A weak second detection is more often a patch of clothing than a face; a weak only
    detection is more often a hard face (small, old, turned) than not.
    """
    if not faces:
        return []
    surest = max(faces, key=lambda face: face.score)
    return [face for face in faces if face is surest or face.score >= MIN_SCORE_OF_MORE_FACES]


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


def masked_copies(image, faces, image_path, kinds, copies, seed):
    """The ``copies`` masked versions of one photo, every face masked in each.

    Returns:
      ([(kind, (r, g, b), uint8[H, W, 3])] per copy, {face index: why its landmarks cannot
      place a mask}); such faces are left bare.
    """
    stem = os.path.splitext(os.path.basename(image_path))[0]
    # Seeds from the name, not the position in the folder: adding photos changes no others.
    photo_seed = np.random.SeedSequence([seed, zlib.crc32(stem.lower().encode())])
    first_kind = int(np.random.default_rng(photo_seed).integers(len(kinds)))
    bad: dict[int, str] = {}
    masked = []
    for copy, copy_seed in enumerate(photo_seed.spawn(copies)):
        kind = kinds[(first_kind + copy) % len(kinds)]
        render_seed = int(copy_seed.generate_state(1)[0])
        color = mask_color(kind, render_seed)
        out = image
        for index, points in enumerate(faces):
            if index in bad:
                continue
            # The first face takes the copy's seed, so one face from a .pts file or a
            # detector renders alike; the others take seeds of their own (pattern, pleats).
            face_seed = (
                render_seed
                if index == 0
                else int(np.random.SeedSequence([render_seed, index]).generate_state(1)[0])
            )
            try:
                out = render_mask(out, points, kind, color, face_seed)
            except LandmarkError as error:  # depends on the landmarks alone, not the kind
                bad[index] = str(error)
        masked.append((kind, color, out))
    return masked, bad


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


def parse_fgnet_stem(stem: str) -> tuple[int, int, str]:
    """(person, age, letter) of an FG-NET photo name without extension: ``001A43a`` ->
    ``(1, 43, "a")``; the letter is ``""`` when there is none, lower case otherwise.

    Raises:
      ValueError: naming ``stem`` and FG-NET's pattern.
    """
    match = _FGNET_STEM.match(stem)
    if match is None:
        raise ValueError(f"{stem!r}: not an FG-NET photo name NNNAxx[l] (person, 'A', age, "
                         "an optional letter), such as 001A02 or 001A43a")
    return int(match["subject"]), int(match["age"]), match["letter"].lower()


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


PROG = "fgmask_jax.masks.apply"


def define_flags() -> None:
    """The command's flags (defined here, not on import: the dataset builders import this
    module, beside commands with flags of the same names)."""
    flags.DEFINE_string(
        "images", None, "Folder of face photos (.jpg, .jpeg, .png, .bmp), e.g. FG-NET's images/."
    )
    flags.DEFINE_string(
        "pts",
        None,
        "Folder of 68-point .pts landmark files, one per photo, matched by file stem "
        "ignoring case (001A02.JPG <-> 001a02.pts); or 'detect' to find the faces of each "
        "photo and their landmarks with dlib instead, and mask every face found (needs pip "
        "install 'fgmask_jax[landmarks]'; a folder named detect is ./detect).",
    )
    flags.DEFINE_string(
        "out",
        None,
        "Folder for the masked JPEGs, manifest.csv and, when photos were skipped, skipped.csv "
        "(created; must not be --images).",
    )
    flags.DEFINE_list(
        "kinds",
        list(MASK_KINDS),
        f"Mask kinds to use, comma-separated, from {','.join(MASK_KINDS)}.",
    )
    flags.DEFINE_integer(
        "copies",
        1,
        "Masked versions of each photo; copies of one photo get different kinds "
        "while copies <= number of kinds.",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "seed",
        0,
        "Seed of kinds, colours and patterns; the same seed gives the same files.",
        lower_bound=0,
    )
    flags.DEFINE_bool(
        "skip_missing",
        False,
        "Skip photos that have no .pts file instead of stopping with a list (exit status 1, "
        "nothing written). With --pts=detect the photos with a face are masked either way, and "
        "this makes photos without one (or unreadable) no error: exit status 0.",
    )


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        cli.fail(PROG, f"unexpected arguments: {' '.join(argv[1:])}", 2)
    f = flags.FLAGS
    try:
        rows = mask_folder(
            f.images,
            None if f.pts == DETECT else f.pts,
            f.out,
            kinds=f.kinds,
            copies=f.copies,
            seed=f.seed,
            skip_missing=f.skip_missing,
        )
    except (PhotosSkippedError, ImportError) as error:  # the photos left, or the extra
        cli.fail(PROG, str(error), 1)
    except (ValueError, OSError) as error:  # a mistake in the input, named in the message
        cli.fail(PROG, str(error), 2)
    logging.info("Wrote %d masked photos and %s to %s.", len(rows), MANIFEST_NAME, f.out)


if __name__ == "__main__":
    define_flags()
    flags.mark_flags_as_required(["images", "pts", "out"])
    app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, PROG))
