"""Procedural masked faces: the embedded stand-in for FGNET-MASK.

The official archive cannot always be had, so this package draws a data set of the
same shape: 3,404 images of 82 persons by default, with the study's class counts,
FGNET-MASK file names and a rendered face mask on every face. The labels are
readable above the mask, as a person reads them:

* age: head proportions (a child's eyes sit low on a large cranium, are larger and
  rounder, in a rounder face), then from the thirties on forehead lines, crow's
  feet, eye bags, greying and (for some men) receding hair, growing with age;
* gender: hair length and style, jaw width and squareness, brow thickness and arch,
  eyeliner, all probabilistic and overlapping;
* expression: brow height and angle, eye opening, a cheek raise that pushes the
  lower lid up with crow's feet (happy), lowered inward-angled brows with a
  furrow between them (unhappy), flat brows and plain eyes (neutral), each with a
  continuous intensity.

Nuisances vary per image: skin tone and hair colour (per person, jittered), head
roll, yaw and pitch, scale and position, directional light, white balance,
background, focus, sensor noise, grayscale photos, mask kind and colour, and the
JPEG quality at which a builder stores the image. A person keeps face shape, skin
tone, eye and hair colour across images, so subject-disjoint splits mean something.

Photo mode (``copies_per_photo`` > 1, ``twins``) draws FGNET-MASK's structure: several
masked copies of one photo (about 3.4 in FGNET-MASK), which share everything but the
mask, and optionally each photo unmasked (its "twin", ``mask_kind`` ``UNMASKED``), the
very image its copies were masked from. Every example carries ``photo_id``; in the
default mode each image is its own photo, and the default mode's images are those it
drew before photo mode existed.

Everything is a pure function of ``(num_examples, num_subjects, seed, image_size)`` (and
``copies_per_photo``, ``twins``); each example (each photo) has its own seed, so
``workers`` changes speed, never pixels.
"""

from fgmask_jax.data.synthetic.drawing import MIN_IMAGE_SIZE, RENDER_SIZE, render_face
from fgmask_jax.data.synthetic.generation import (
    JPEG_QUALITY_RANGE,
    UNMASKED,
    ExampleSpec,
    PhotoSpec,
    example_rng,
    example_specs,
    generate,
    photo_rng,
    photo_specs,
    render_example,
    render_photo,
)
from fgmask_jax.data.synthetic.geometry import (
    FaceParams,
    Subject,
    sample_face_params,
    sample_subject,
)
from fgmask_jax.data.synthetic.sampling import (
    AGE_RANGES,
    assign_labels,
    assign_photo_labels,
    filenames,
    num_photos,
    photo_stems,
)

__all__ = [
    "AGE_RANGES",
    "JPEG_QUALITY_RANGE",
    "MIN_IMAGE_SIZE",
    "RENDER_SIZE",
    "UNMASKED",
    "ExampleSpec",
    "FaceParams",
    "PhotoSpec",
    "Subject",
    "assign_labels",
    "assign_photo_labels",
    "example_rng",
    "example_specs",
    "filenames",
    "generate",
    "num_photos",
    "photo_rng",
    "photo_specs",
    "photo_stems",
    "render_example",
    "render_face",
    "render_photo",
    "sample_face_params",
    "sample_subject",
]
