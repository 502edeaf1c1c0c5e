"""Masked copies of one photo: which of its faces get a mask, and each copy's kind, colour
and seeds.

``masked_copies`` is what ``python -m fgmask_jax.masks.apply`` writes for each photo and
what the ``fgnet_paired`` dataset holds: the same photo, landmarks, kinds and seed give the
same pixels in both.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence

import numpy as np

from fgmask_jax.masks import landmarks as landmarks_lib
from fgmask_jax.masks.render import LandmarkError, mask_color, render_mask

# dlib's HOG scores (> 0 is a detection): drawn test faces score 0.5-1.9 (median 1.3), and
# a patch on the astronaut's suit in scikit-image's photo 0.12, beside her face's 1.16.
MIN_SCORE_OF_MORE_FACES = 0.5


def masked_copies(image, faces, image_path, kinds, copies, seed):
    """The ``copies`` masked versions of one photo, every face masked in each.

    Args:
      image: uint8[H, W, 3] RGB photo.
      faces: float[68, 2] (x, y) landmarks of each face, iBUG-68 order.
      image_path: the photo's file; its name (not its folder) seeds the copies.
      kinds: mask kinds (of ``MASK_KINDS``) the copies cycle through.
      copies: how many masked versions.
      seed: int >= 0.

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
