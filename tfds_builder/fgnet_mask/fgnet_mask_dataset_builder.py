"""The ``fgnet_mask`` TFDS dataset: FGNET-MASK's 3,404 masked FG-NET faces, labels from names.

The archive ``FGNET-MASK_dataset.zip`` is downloaded by hand (see
``MANUAL_DOWNLOAD_INSTRUCTIONS``). The builder reads it member by member without
extracting it, or reads its extracted folder; images may sit at any depth.

Everything is checked before the first example is written (names, decoding, unsafe
archive paths, duplicates), and every problem is reported in one error, so a build
either succeeds or stops before writing. TFDS itself writes into a temporary folder
and renames it only when generation finishes, so an interrupted build leaves
nothing that loads as a dataset.
"""

from __future__ import annotations

import dataclasses
import io
import re
import zipfile
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image, ImageOps
from tqdm import tqdm

from fgmask_jax.data import labels as labels_lib
from fgmask_jax.data import splits as splits_lib

ARCHIVE_NAME = "FGNET-MASK_dataset.zip"
REPOSITORY = "https://github.com/VatsaPatel9/Masked-Face-Analysis-via-Multi-Task-Deep-Learning"
JPEG_QUALITY = 95  # for images that must be re-encoded (grayscale, PNG, CMYK, rotated)
MAX_LISTED = 20  # problems shown in one error; the rest are counted
SPLITS = ("train", "test", "subject_train", "subject_test", "photo_train", "photo_test")
UNMASKED_PREFIX = "unmasked_"  # unmasked_<split>: the twins of the photos in <split>

# Files that operating systems and archivers add beside the data.
_JUNK_DIRS = frozenset({"__macosx"})
_JUNK_FILES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
_EXIF_ORIENTATION = 0x0112
_DRIVE = re.compile(r"^[A-Za-z]:")

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
FGNET-MASK cannot be downloaded automatically. Download {ARCHIVE_NAME} from the GitHub
repository VatsaPatel9/Masked-Face-Analysis-via-Multi-Task-Deep-Learning,
  {REPOSITORY}
(open {ARCHIVE_NAME} there and download the raw file); the same archive is mirrored on
Kaggle as "fgnet-mask-dataset". Then either
  * put the archive, unopened and under that name, at <manual_dir>/{ARCHIVE_NAME}, or
  * extract it and put the extracted folder inside <manual_dir>.
<manual_dir> defaults to <data_dir>/downloads/manual/. To use another folder:
  python -m fgmask_jax.build_data --dataset=fgnet_mask --data_dir=DIR --manual_dir=FOLDER
"""


class ArchiveError(ValueError):
    """The FGNET-MASK archive or folder holds something the dataset cannot be built from."""


def features(**extra: tfds.features.FeatureConnector) -> tfds.features.FeaturesDict:
    """The features of every FGNET-MASK-like example (the project's contract), plus ``extra``."""
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(
                shape=(None, None, 3), dtype=np.uint8, encoding_format="jpeg",
                doc="The masked face, RGB (grayscale photos repeated over 3 channels).",
            ),
            "age": tfds.features.Scalar(np.int32, doc="Age in years."),
            "age_group": tfds.features.ClassLabel(names=labels_lib.AGE_GROUPS),
            "gender": tfds.features.ClassLabel(names=labels_lib.GENDERS),
            "expression": tfds.features.ClassLabel(names=labels_lib.EXPRESSIONS),
            "subject_id": tfds.features.Scalar(np.int32, doc="The person (FG-NET number)."),
            "photo_id": tfds.features.Scalar(
                np.int32, doc="The source photo, 1-based: the masked copies of one photo "
                "(file names that differ only in ' (k)') share it."),
            "filename": tfds.features.Text(doc="The image's file name, labels included."),
            **extra,
        }
    )


def paired_features() -> tfds.features.FeaturesDict:
    """`features` of data sets that hold masked copies and unmasked twins of each photo:
    plus ``mask_kind`` and ``landmarks``."""
    return features(
        mask_kind=tfds.features.Text(
            doc="The kind of mask drawn on the face; 'none' for an unmasked twin."),
        landmarks=tfds.features.Tensor(
            shape=(68, 2), dtype=np.float32,
            doc="The face's 68 landmarks in iBUG-68 order (as FG-NET's .pts), (x, y) "
            "in pixels of the image; the mask's pixels are "
            "fgmask_jax.masks.mask_region(landmarks, image_hw, mask_kind)."),
    )


def split_indices(filenames: Sequence[str], subject_ids: Sequence[int],
                  photo_ids: Sequence[int]) -> dict[str, np.ndarray]:
    """Indices into examples sorted by file name, for each of `SPLITS`.

    ``train``/``test``: the study's random 75/25 image split (copies of one photo fall
    on both sides); ``subject_train``/``subject_test``: 75/25 of persons;
    ``photo_train``/``photo_test``: 75/25 of photos. All with the study's seed (42).
    """
    if list(filenames) != sorted(filenames):
        raise ValueError("split_indices needs the examples sorted by file name")
    seed = splits_lib.SEED
    pairs = (splits_lib.study_split(len(filenames), seed=seed),
             splits_lib.subject_split(subject_ids, seed=seed),
             splits_lib.photo_split(photo_ids, seed=seed))
    return dict(zip(SPLITS, (idx for pair in pairs for idx in pair), strict=True))


def twin_split_indices(
    masked_photo_ids: Sequence[int], masked_splits: dict[str, np.ndarray],
    twin_photo_ids: Sequence[int],
) -> dict[str, np.ndarray]:
    """``unmasked_<split>`` for each masked split: indices of the twins of its photos.

    A photo whose copies straddle the study's ``train``/``test`` has its twin in both
    ``unmasked_train`` and ``unmasked_test``; the photo and subject pairs are disjoint.
    """
    masked_photo_ids, twin_photo_ids = np.asarray(masked_photo_ids), np.asarray(twin_photo_ids)
    return {
        UNMASKED_PREFIX + split: np.flatnonzero(np.isin(twin_photo_ids, masked_photo_ids[idx]))
        for split, idx in masked_splits.items()
    }


def photo_ids(members: Sequence[Member]) -> list[int]:
    """Each member's photo, 1-based in the order of the photos' names."""
    number = {p: i + 1 for i, p in enumerate(sorted({m.labels.photo for m in members}))}
    return [number[m.labels.photo] for m in members]


def rgb_jpeg(data: bytes) -> bytes:
    """The image in ``data`` as RGB JPEG bytes: ``data`` itself when it already is one.

    Grayscale, PNG, CMYK and EXIF-rotated images are decoded, turned upright, made
    RGB and re-encoded at quality ``JPEG_QUALITY``.

    Raises:
      Exception: whatever PIL raises when ``data`` is not a whole, decodable image.
    """
    with Image.open(io.BytesIO(data)) as image:
        image.verify()  # the container: truncation, bad chunks, CRCs
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # every pixel: damage that verify() does not reach
        upright = image.getexif().get(_EXIF_ORIENTATION, 1) == 1
        if image.format == "JPEG" and image.mode == "RGB" and upright:
            return data
        # Readers decode with OpenCV or PIL, which disagree on EXIF rotation: store it applied.
        rgb = ImageOps.exif_transpose(image).convert("RGB")
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- reading


class ZipReader:
    """Members of a zip archive, read one at a time (nothing is extracted)."""

    def __init__(self, path: epath.Path, advice: str = ""):
        """``advice``: what to do when the file is not a zip archive (FGNET-MASK's by default)."""
        self.where = str(path)
        try:
            self._zip = zipfile.ZipFile(path)
        except zipfile.BadZipFile as e:
            advice = advice or (f"Download {ARCHIVE_NAME} again from {REPOSITORY}, or put "
                                f"its extracted folder in {path.parent} instead.")
            raise ArchiveError(f"{path}: not a readable zip archive ({e}). {advice}") from None

    def names(self) -> list[str]:
        return [info.filename for info in self._zip.infolist() if not info.is_dir()]

    def read(self, name: str) -> bytes:
        return self._zip.read(name)

    def close(self) -> None:
        self._zip.close()


class FolderReader:
    """Files under a folder (an extracted archive), named by their relative POSIX path."""

    def __init__(self, root: epath.Path):
        self.where = str(root)
        self._root = root

    def names(self) -> list[str]:
        return sorted(
            (folder / f).relative_to(self._root).as_posix()
            for folder, _, files in self._root.walk()
            for f in files
        )

    def read(self, name: str) -> bytes:
        return (self._root / name).read_bytes()

    def close(self) -> None:
        pass


def open_source(manual_dir: epath.PathLike) -> ZipReader | FolderReader:
    """The archive ``<manual_dir>/FGNET-MASK_dataset.zip`` if present, else the folder itself."""
    manual_dir = epath.Path(manual_dir)
    archive = manual_dir / ARCHIVE_NAME
    if archive.is_file():
        return ZipReader(archive)
    return FolderReader(manual_dir)


def _is_junk(parts: Sequence[str]) -> bool:
    """Whether a path's parts mark an OS or archiver leftover (``__MACOSX/``, dotfiles, ...)."""
    return (
        any(p.lower() in _JUNK_DIRS or p.startswith(".") for p in parts)
        or parts[-1].lower() in _JUNK_FILES
    )


def _is_unsafe(name: str) -> bool:
    """Whether an archive member's path is absolute or climbs out (``..``)."""
    return name.startswith("/") or bool(_DRIVE.match(name)) or ".." in name.split("/")


@dataclasses.dataclass(frozen=True)
class Member:
    """One FGNET-MASK image: its file name, where it is in the source, and its labels."""

    filename: str
    location: str
    labels: labels_lib.Labels


def listed(problems: Sequence[str]) -> str:
    """One indented line per problem, up to ``MAX_LISTED``, then how many more."""
    more = len(problems) - MAX_LISTED
    return "\n".join([*(f"  {p}" for p in problems[:MAX_LISTED]),
                      *([f"  ... and {more} more"] if more > 0 else [])])


def _problem_error(where: str, problems: list[str]) -> ArchiveError:
    return ArchiveError(
        f"{where}: {len(problems)} file(s) cannot be used for fgnet_mask:\n{listed(problems)}\n"
        "Remove or replace these files. Images are named NNNAxx_GG_EE[ (k)].jpg (person NNN, "
        "'A', age xx, gender GG 01=male, expression EE 01=happy 02=neutral; for example "
        f"'001A02_01_01.jpg'). Or download {ARCHIVE_NAME} again from {REPOSITORY}; if the "
        "folder holds other data sets' files, pass --manual_dir=FOLDER holding only "
        "FGNET-MASK. Then build again."
    )


def member_names(source: ZipReader | FolderReader, archive: str = ARCHIVE_NAME) -> list[str]:
    """The names of ``source``'s files, less OS and archiver junk.

    Raises:
      ArchiveError: members with an absolute path or ``..`` (``archive`` names the
        genuine archive, which has none).
    """
    everything = source.names()
    unsafe = [n for n in everything if _is_unsafe(n.replace("\\", "/"))]
    if unsafe:
        shown = ", ".join(repr(n) for n in unsafe[:MAX_LISTED])
        raise ArchiveError(
            f"{source.where}: refusing {len(unsafe)} member(s) with an absolute path or '..': "
            f"{shown}. A genuine {archive} has none; download it again."
        )
    return [n for n in everything if not _is_junk(n.replace("\\", "/").split("/"))]


def scan(source: ZipReader | FolderReader) -> list[Member]:
    """Checks every file of ``source`` and returns its images, sorted by file name.

    Junk (``__MACOSX/``, ``.DS_Store``, ``Thumbs.db``, dotfiles) is skipped; every
    other file must carry an FGNET-MASK name, decode as an image, and have a name
    found nowhere else in the source.

    Raises:
      ArchiveError: listing unsafe member paths, or every file that fails the checks
        (up to ``MAX_LISTED``, then a count), with the way out.
    """
    names = member_names(source)
    problems: list[str] = []
    members: dict[str, Member] = {}
    for name in tqdm(names, desc="Checking FGNET-MASK files", unit=" files", leave=False):
        filename = name.replace("\\", "/").rsplit("/", 1)[-1]
        try:
            labels = labels_lib.parse_filename(filename)
        except ValueError:
            # One short reason per file; the naming rule is explained once, below the list.
            is_image = filename.lower().endswith(labels_lib.IMAGE_SUFFIXES)
            problems.append(f"{name}: " + ("name does not follow NNNAxx_GG_EE[ (k)].jpg"
                                           if is_image else "not an image file"))
            continue
        if filename in members:
            problems.append(f"{name}: the same file name is also at {members[filename].location}")
            continue
        try:
            rgb_jpeg(source.read(name))
        except Exception as e:  # PIL raises many types for bad data: report them all
            problems.append(f"{name}: does not decode as an image ({type(e).__name__}: {e})")
            continue
        members[filename] = Member(filename, name, labels)
    if problems:
        raise _problem_error(source.where, problems)
    if not members:
        raise ArchiveError(
            f"{source.where}: no FGNET-MASK images found (nothing but OS files).\n"
            f"{MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    return [members[k] for k in sorted(members)]


# ----------------------------------------------------------------------------- builder


class Builder(tfds.core.GeneratorBasedBuilder):
    """FGNET-MASK: masked FG-NET faces labelled with age group, gender and expression."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: the 3,404 images of FGNET-MASK_dataset.zip, labels from "
        "file names, the study's image split and a subject-disjoint split.",
        "1.1.0": "photo_id feature (masked copies of one photo share it) and the "
        "photo-disjoint splits photo_train/photo_test.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    # TFDS infers this folder (README.md, CITATIONS.bib, TAGS.txt) from the module name,
    # which points to the wrong place when the package maps tfds_builder/ elsewhere.
    pkg_dir_path = epath.Path(__file__).parent

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=features(),
            homepage=REPOSITORY,
            # Records in file-name order, so that index i of a split is the same image
            # for every reader.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        try:
            manual_dir = epath.Path(dl_manager.manual_dir)
        except AssertionError as e:  # TFDS: the manual dir is missing or empty
            raise FileNotFoundError(f"fgnet_mask: {e}") from None
        # Check every file before writing anything: a bad file found mid-generation
        # would waste the work done and give a less complete report.
        source = open_source(manual_dir)
        try:
            members = scan(source)
        finally:
            source.close()
        photos = photo_ids(members)
        indices = split_indices(
            [m.filename for m in members], [m.labels.subject_id for m in members], photos
        )
        return {
            split: self._generate_examples(
                manual_dir, [(members[i], photos[i]) for i in indices[split]])
            for split in SPLITS
        }

    def _generate_examples(
        self, manual_dir: epath.Path, members: list[tuple[Member, int]]
    ) -> Iterator[tuple[str, dict]]:
        source = open_source(manual_dir)
        try:
            for m, photo_id in members:
                yield m.filename, {
                    "image": rgb_jpeg(source.read(m.location)),
                    "age": m.labels.age,
                    "age_group": m.labels.age_group,
                    "gender": m.labels.gender,
                    "expression": m.labels.expression,
                    "subject_id": m.labels.subject_id,
                    "photo_id": photo_id,
                    "filename": m.filename,
                }
        finally:
            source.close()
