"""The label vocabulary of FGNET-MASK and the file-name convention that carries it.

File names look like ``001A02_01_01 (2).jpg``: person ``001``, age ``02`` years,
gender ``01`` (male, anything else female), expression ``01`` (happy), ``02``
(neutral), anything else (unhappy). `` (k)`` marks another copy (another mask) of
one photo: the name without it (``001A02_01_01``) names the photo. Ages are binned as
the authors' code does: ``<=10``, ``11-20``, ``21-40``, ``>40`` (age 10 falls in the
first group).

FG-NET's own photos are named ``NNNAxx[l]`` (``001A02``, ``001A43a``): person, age and a
letter for a second photo at one age, without gender or expression (`parse_fgnet_stem`).
"""

from __future__ import annotations

import dataclasses
import re

AGE_GROUPS = ("<=10", "11-20", "21-40", ">40")
GENDERS = ("male", "female")
EXPRESSIONS = ("happy", "neutral", "unhappy")

# Task name -> class names, in label-index order. The three tasks of the study.
TASKS: dict[str, tuple[str, ...]] = {
    "age_group": AGE_GROUPS,
    "gender": GENDERS,
    "expression": EXPRESSIONS,
}

# Class counts of FGNET-MASK (3,404 images), from the study's README.
FGNET_MASK_COUNTS: dict[str, tuple[int, ...]] = {
    "age_group": (1400, 1010, 720, 274),
    "gender": (2000, 1404),
    "expression": (1800, 950, 654),
}

# FG-NET's photo names, NNNAxx[l] (person, 'A', age, a letter): no gender or expression.
_FGNET_STEM = r"(?P<subject>\d+)[Aa](?P<age>\d+)(?P<letter>[A-Za-z]?)"
_FGNET_NAME = re.compile(rf"^{_FGNET_STEM}$")
# FGNET-MASK's names: an FG-NET name, gender and expression, then the copy number.
_NAME = re.compile(
    rf"^(?P<photo>{_FGNET_STEM}_(?P<gender>\d+)_(?P<expression>\d+))"
    r"(?:\s*\((?P<copy>\d+)\))?$"
)
# Every place that reads photos takes what PIL reads.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclasses.dataclass(frozen=True)
class Labels:
    """The labels carried by one FGNET-MASK file name."""

    subject_id: int
    age: int
    gender: int  # index into GENDERS
    expression: int  # index into EXPRESSIONS
    photo: str = ""  # the name without copy number and extension: shared by a photo's copies
    letter: str = ""  # FG-NET's letter of a person's second photo at one age (001A43b), lower

    @property
    def age_group(self) -> int:
        return age_group(self.age)


def age_group(age: int) -> int:
    """Index into AGE_GROUPS for an age in years (10 -> 0, 11 -> 1, 40 -> 2, 41 -> 3)."""
    if age < 0:
        raise ValueError(f"age must be >= 0, got {age}")
    if age <= 10:
        return 0
    if age <= 20:
        return 1
    if age <= 40:
        return 2
    return 3


def parse_filename(name: str) -> Labels:
    """Labels of ``NNNAxx_GG_EE[ (k)].ext`` (any case of extension, no folder).

    Raises:
      ValueError: naming the file and the expected pattern.
    """
    stem, dot, suffix = name.rpartition(".")
    if not dot or "." + suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(
            f"{name!r}: not an image name (expected one of {', '.join(IMAGE_SUFFIXES)})"
        )
    match = _NAME.match(stem.strip())
    if match is None:
        raise ValueError(
            f"{name!r}: does not follow the FGNET-MASK naming 'NNNAxx_GG_EE[ (k)].jpg' "
            "(person, 'A', age, gender 01=male, expression 01=happy 02=neutral)"
        )
    gender = 0 if match["gender"] == "01" else 1
    expression = {"01": 0, "02": 1}.get(match["expression"], 2)
    return Labels(
        subject_id=int(match["subject"]),
        age=int(match["age"]),
        gender=gender,
        expression=expression,
        photo=match["photo"].upper(),
        letter=match["letter"].lower(),
    )


def parse_fgnet_stem(stem: str) -> tuple[int, int, str]:
    """(person, age, letter) of an FG-NET photo name without extension: ``001A43a`` ->
    ``(1, 43, "a")``; the letter is ``""`` when there is none, lower case otherwise.

    Raises:
      ValueError: naming ``stem`` and FG-NET's pattern.
    """
    match = _FGNET_NAME.match(stem)
    if match is None:
        raise ValueError(f"{stem!r}: not an FG-NET photo name NNNAxx[l] (person, 'A', age, "
                         "an optional letter), such as 001A02 or 001A43a")
    return int(match["subject"]), int(match["age"]), match["letter"].lower()


def photo_stem(subject_id: int, age: int, gender: int, expression: int, letter: str = "") -> str:
    """The FGNET-MASK name of a photo, ``NNNAxx[l]_GG_EE`` (gender and expression are
    indices into `GENDERS` and `EXPRESSIONS`)."""
    return f"{subject_id:03d}A{age:02d}{letter}_{gender + 1:02d}_{expression + 1:02d}"


def copy_filename(stem: str, copy: int) -> str:
    """Masked copy ``copy`` (0, 1, ...) of a photo: ``stem.jpg``, ``stem (1).jpg``, ..."""
    return f"{stem}.jpg" if copy == 0 else f"{stem} ({copy}).jpg"


def twin_filename(stem: str) -> str:
    """The unmasked twin of a photo: ``stem (0).jpg``, a copy number masked copies never get
    (`parse_filename` reads it as the photo's labels)."""
    return f"{stem} (0).jpg"
