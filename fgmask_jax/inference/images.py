"""Images in: files and arrays prepared exactly as the training pipeline prepares them.

Files are decoded by `pipeline.read_image` (the decoder of `pipeline.decode_image`) and
squared and resized by `pipeline.square_resize`; arrays go through `square_resize` too.
Faces found in a photo (`faces`) are cropped from the full-size photo, then resized alike.
An image that cannot be used raises `errors.DataError` (a ValueError) with the reason.
"""

from __future__ import annotations

import os

import numpy as np

from fgmask_jax import errors
from fgmask_jax.data import pipeline
from fgmask_jax.inference.faces import Box, crop_face, detect_faces

MIN_SIDE = 16  # pixels; a smaller image cannot show a face


def as_rgb(image: np.ndarray) -> np.ndarray:
    """An image array as a person means it -> uint8[H, W, 3] RGB.

    HxW and HxWx1 are grayscale, HxWx3 RGB, HxWx4 RGBA (alpha dropped, as the file
    decoder does); uint16 samples are scaled to 8 bits (>> 8), as for 16-bit files.
    """
    a = np.asarray(image)
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    if a.dtype != np.uint8:
        raise errors.DataError(f"image array of dtype {a.dtype}: expected uint8 (or uint16)")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise errors.DataError(f"image array of shape {a.shape}: expected HxW, HxWx3 or HxWx4")
    return np.ascontiguousarray(a[..., :3])


def _check_size(h: int, w: int) -> None:
    if min(h, w) < MIN_SIDE:
        raise errors.DataError(f"image is {w}x{h} pixels, smaller than {MIN_SIDE} on a side")


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise errors.DataError("no such file") from None
    except IsADirectoryError:
        raise errors.DataError("a folder, not an image file") from None
    except OSError as e:
        raise errors.DataError(f"cannot read the file: {e.strerror or e}") from None


def read_photo(image) -> np.ndarray:
    """A path or an image array -> uint8[H, W, 3] RGB at full size, decoded as the training
    pipeline decodes. Raises ValueError with the reason for an image that cannot be used."""
    if isinstance(image, str | os.PathLike):
        rgb = pipeline.read_image(_read_bytes(os.fspath(image)))
    else:
        rgb = as_rgb(image)
    _check_size(*rgb.shape[:2])
    return rgb


def load_image(image, image_size: int) -> np.ndarray:
    """A path or an image array -> uint8[image_size, image_size, 3], as the training pipeline
    prepares images (a file: as `pipeline.decode_image` does, bit for bit). Raises
    ValueError with the reason for an image that cannot be used."""
    return pipeline.square_resize(read_photo(image), image_size)


def load_faces(image, image_size: int, min_face: int = 0
               ) -> list[tuple[Box, np.ndarray | None]]:
    """Every face found in ``image`` (a path or an image array), largest first:
    [(box, uint8[image_size, image_size, 3] framed as in training)]; the image is None
    for a face narrower than ``min_face`` pixels of the photo.

    Raises ValueError with the reason if ``image`` is not usable, ImportError without
    scikit-image.
    """
    photo = read_photo(image)
    return [(box, None if box.width < min_face
             else pipeline.square_resize(crop_face(photo, box), image_size))
            for box in detect_faces(photo)]
