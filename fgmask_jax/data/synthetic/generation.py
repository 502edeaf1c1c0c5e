"""Examples and photos: the work lists, one worker call per example (or photo) drawn from
its own seed, and `generate`, which draws them in this process or in a pool."""

from __future__ import annotations

import dataclasses
import multiprocessing
from collections.abc import Iterator

import numpy as np

from fgmask_jax.data import labels
from fgmask_jax.data.synthetic.drawing import MIN_IMAGE_SIZE, render_face
from fgmask_jax.data.synthetic.geometry import sample_face_params, sample_subject
from fgmask_jax.data.synthetic.sampling import (
    _EXAMPLE_STREAM,
    _PHOTO_STREAM,
    assign_labels,
    assign_photo_labels,
    filenames,
    num_photos,
    photo_stems,
)

JPEG_QUALITY_RANGE = (60, 95)  # inclusive; the quality a builder stores each image at
UNMASKED = "none"  # the mask_kind of an unmasked twin


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
    """What a worker needs to draw example ``index``: small, so it pickles cheaply."""

    seed: int
    index: int
    image_size: int
    subject_id: int
    age: int
    gender: int
    expression: int
    filename: str


def example_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that draws example ``index`` of data set ``seed``, and nothing else."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_EXAMPLE_STREAM, index)))


def render_example(spec: ExampleSpec) -> dict:
    """One masked example (with its face's float32[68, 2] ``landmarks``), from its own seed.

    The default mode: each example is its own photo (``photo_id`` = ``index + 1``).
    """
    from fgmask_jax import masks  # here, not at the top: the labels need no mask code

    rng = example_rng(spec.seed, spec.index)
    subject = sample_subject(spec.subject_id, spec.gender, spec.seed)
    params = sample_face_params(subject, spec.age, spec.expression, rng)
    face, landmarks = render_face(params, rng, spec.image_size)
    kind = masks.MASK_KINDS[rng.integers(len(masks.MASK_KINDS))]
    image = masks.render_mask(face, landmarks, kind, color=None, seed=int(rng.integers(2**31 - 1)))
    lo, hi = JPEG_QUALITY_RANGE
    example = {
        "image": image,
        **_label_fields(spec),
        "filename": spec.filename,
        "mask_kind": kind,
        "landmarks": landmarks,
        "jpeg_quality": int(rng.integers(lo, hi + 1)),
    }
    return example


def _example(spec: ExampleSpec) -> list[dict]:
    return [render_example(spec)]


def example_specs(
    num_examples: int = 3404, num_subjects: int = 82, seed: int = 0, image_size: int = 128
) -> list[ExampleSpec]:
    """The work list of ``generate``'s default mode: labels and file name of every example."""
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size={image_size} is too small: use >= {MIN_IMAGE_SIZE}")
    lab = assign_labels(num_examples, num_subjects, seed)
    names = filenames(lab["subject_id"], lab["age"], lab["gender"], lab["expression"])
    return [
        ExampleSpec(
            seed,
            i,
            image_size,
            *_person_labels(lab, i),
            names[i],
        )
        for i in range(num_examples)
    ]


@dataclasses.dataclass(frozen=True)
class PhotoSpec:
    """What a worker needs to draw photo ``index`` with its masked copies (and twin)."""

    seed: int
    index: int  # 0-based; the photo's photo_id is index + 1
    image_size: int
    subject_id: int
    age: int
    gender: int
    expression: int
    filenames: tuple[str, ...]  # of the masked copies, in copy order
    twin_filename: str | None  # of the unmasked image; None: no twin


def photo_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that draws photo ``index`` of data set ``seed`` and its copies' masks."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_PHOTO_STREAM, index)))


def photo_specs(
    num_examples: int,
    num_subjects: int,
    seed: int = 0,
    image_size: int = 128,
    copies_per_photo: float = 3.4,
    twins: bool = True,
) -> list[PhotoSpec]:
    """The work list of ``generate``'s photo mode: ``num_examples`` masked copies of
    ``num_photos(num_examples, copies_per_photo)`` photos (`assign_photo_labels`)."""
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size={image_size} is too small: use >= {MIN_IMAGE_SIZE}")
    lab = assign_photo_labels(
        num_examples, num_photos(num_examples, copies_per_photo), num_subjects, seed
    )
    stems = photo_stems(lab["subject_id"], lab["age"], lab["gender"], lab["expression"])
    return [
        PhotoSpec(
            seed,
            i,
            image_size,
            *_person_labels(lab, i),
            tuple(labels.copy_filename(stem, k) for k in range(int(lab["copies"][i]))),
            labels.twin_filename(stem) if twins else None,
        )
        for i, stem in enumerate(stems)
    ]


def render_photo(spec: PhotoSpec) -> list[dict]:
    """The masked copies of one photo, then its unmasked twin (if asked), all with the
    photo's float32[68, 2] ``landmarks``.

    One face is drawn (person, pose, expression, light, background, noise); each copy
    puts another mask on it: the kinds of one photo's copies are consecutive in
    ``masks.MASK_KINDS`` from a start drawn per photo (so up to four copies differ in
    kind), each with its own colour and texture seed. Copies and twin share the photo's
    JPEG quality, so they differ only where a mask (or its loops) is drawn.
    """
    from fgmask_jax import masks  # here, not at the top: the labels need no mask code

    rng = photo_rng(spec.seed, spec.index)
    subject = sample_subject(spec.subject_id, spec.gender, spec.seed)
    params = sample_face_params(subject, spec.age, spec.expression, rng)
    face, landmarks = render_face(params, rng, spec.image_size)
    lo, hi = JPEG_QUALITY_RANGE
    shared = _label_fields(spec)
    quality = int(rng.integers(lo, hi + 1))
    start = int(rng.integers(len(masks.MASK_KINDS)))
    examples = []
    for copy, name in enumerate(spec.filenames):
        kind = masks.MASK_KINDS[(start + copy) % len(masks.MASK_KINDS)]
        image = masks.render_mask(face, landmarks, kind, None, seed=int(rng.integers(2**31 - 1)))
        examples.append({"image": image, **shared, "filename": name, "mask_kind": kind,
                         "landmarks": landmarks, "jpeg_quality": quality})
    if spec.twin_filename is not None:
        examples.append({"image": face, **shared, "filename": spec.twin_filename,
                         "mask_kind": UNMASKED, "landmarks": landmarks,
                         "jpeg_quality": quality})
    return examples


def generate(
    num_examples: int = 3404,
    num_subjects: int = 82,
    seed: int = 0,
    image_size: int = 128,
    workers: int = 0,
    copies_per_photo: float = 1.0,
    twins: bool = False,
) -> Iterator[dict]:
    """Yields the synthetic masked-face data set, one example dict at a time, in order.

    Each example: ``image`` uint8[S, S, 3] RGB, ``age`` (years), ``age_group``,
    ``gender``, ``expression`` (indices into ``labels.AGE_GROUPS``, ``GENDERS``,
    ``EXPRESSIONS``), ``subject_id``, ``photo_id`` (the source photo, 1-based, unique per
    photo), ``filename`` (FGNET-MASK naming, unique, parsed back to the same labels by
    ``labels.parse_filename``), ``mask_kind`` (one of ``masks.MASK_KINDS``, or
    ``UNMASKED`` for a twin), ``landmarks`` (float32[68, 2], the face's iBUG-68 points as
    (x, y) pixels, as in FG-NET's .pts files; `masks.mask_region` turns them into the
    mask's pixels) and ``jpeg_quality`` (the quality to store the image at).

    Default mode (``copies_per_photo=1``, no twins): ``num_examples`` masked images, each
    its own photo (`example_specs`, `render_example`). Photo mode (``copies_per_photo`` >
    1 or ``twins``): ``num_examples`` masked copies of about ``num_examples /
    copies_per_photo`` photos, each photo's copies then (with ``twins``) its unmasked
    twin (`photo_specs`, `render_photo`); its draws differ from the default mode's.

    The output depends only on the arguments other than ``workers``; ``workers`` > 0
    draws in that many processes (order kept).
    """
    if workers < 0:
        raise ValueError(f"workers={workers} must be >= 0 (0 draws in this process)")
    if copies_per_photo == 1 and not twins:
        work, draw = example_specs(num_examples, num_subjects, seed, image_size), _example
    else:
        work = photo_specs(num_examples, num_subjects, seed, image_size, copies_per_photo, twins)
        draw = render_photo
    if workers == 0:
        for item in work:
            yield from draw(item)
        return
    # Not "fork": the caller may have started threads (JAX does), which fork can deadlock.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with context.Pool(workers) as pool:
        for drawn in pool.imap(draw, work, chunksize=16 if draw is _example else 4):
            yield from drawn


def _person_labels(lab: dict[str, np.ndarray], i: int) -> tuple[int, int, int, int]:
    """(subject_id, age, gender, expression) of row ``i`` of `assign_labels`' output."""
    return tuple(int(lab[k][i]) for k in ("subject_id", "age", "gender", "expression"))


def _label_fields(spec: ExampleSpec | PhotoSpec) -> dict:
    """The label features an example of ``spec`` carries (a photo's copies share them)."""
    return {"age": spec.age, "age_group": labels.age_group(spec.age), "gender": spec.gender,
            "expression": spec.expression, "subject_id": spec.subject_id,
            "photo_id": spec.index + 1}
