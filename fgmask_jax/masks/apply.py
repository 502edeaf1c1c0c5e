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

from collections.abc import Sequence

from absl import app, flags, logging

from fgmask_jax import cli, errors
from fgmask_jax.data import masked_photos
from fgmask_jax.data.labels import IMAGE_SUFFIXES
from fgmask_jax.masks.render import MASK_KINDS, LandmarkError

PROG = "fgmask_jax.masks.apply"
DETECT = "detect"  # --pts=detect: landmarks from the face detector


def define_flags() -> None:
    """The command's flags (defined when it runs, not on import, as in the other commands)."""
    flags.DEFINE_string(
        "images",
        None,
        f"Folder of face photos ({', '.join(IMAGE_SUFFIXES)}), e.g. FG-NET's images/.",
    )
    flags.DEFINE_string(
        "pts",
        None,
        "Folder of 68-point .pts landmark files, one per photo, matched by file stem "
        "ignoring case (001A02.JPG <-> 001a02.pts); or 'detect' to find the faces of each "
        "photo and their landmarks with dlib instead, and mask every face found (needs pip "
        "install -e '.[landmarks]'; a folder named detect is ./detect).",
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
        rows = masked_photos.mask_folder(
            f.images,
            None if f.pts == DETECT else f.pts,
            f.out,
            kinds=f.kinds,
            copies=f.copies,
            seed=f.seed,
            skip_missing=f.skip_missing,
        )
    except (masked_photos.PhotosSkippedError, ImportError) as error:  # photos left, or the extra
        cli.fail(PROG, str(error), 1)
    # A mistake in the input, named in the message: a folder, photo or .pts file that cannot
    # be read, an output that cannot be written, landmarks that cannot place a mask.
    except (errors.UserError, LandmarkError, OSError) as error:
        cli.fail(PROG, str(error), 2)
    logging.info(
        "Wrote %d masked photos and %s to %s.", len(rows), masked_photos.MANIFEST_NAME, f.out
    )


if __name__ == "__main__":
    define_flags()
    flags.mark_flags_as_required(["images", "pts", "out"])
    app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, PROG))
