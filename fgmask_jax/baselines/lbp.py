"""Local binary patterns (LBP) of a batch of images, in JAX: codes and histograms.

Eight neighbours at radius 1. Bit ``i`` (weight ``2**i``) compares the neighbour
at angle ``i * 45`` degrees, counter-clockwise from the right (``i = 0``: right,
``2``: up, ``4``: left, ``6``: down), with the centre: 1 when neighbour >= centre.
Two ways to sample the four diagonal neighbours:

- ``sampling="circle"`` (default): on the circle of radius 1, by bilinear
  interpolation, as scikit-image's ``local_binary_pattern(img, 8, 1, 'default')``
  does. The codes equal scikit-image's exactly, on every pixel (outside pixels
  count as 0, as there). The interpolation is done in float64 with scikit-image's
  positions and order of operations, because a diagonal that lies exactly on the
  centre's value (a ramp across it, for example) is decided by float64 rounding.
- ``sampling="square"``: the integer diagonal pixels of the 3x3 block, as the
  study's MATLAB code does. Codes differ from scikit-image's wherever an
  interpolated diagonal falls on the other side of the centre.

Features: the study's variant (`study_histogram`: 256 bins over the whole image)
and the usual face variant (`uniform_grid_histogram`: 59 bins of non-rotation-
invariant uniform patterns, scikit-image's ``'nri_uniform'``, per cell of a grid,
concatenated). Histograms count interior pixels only (not the one-pixel border,
whose neighbours fall outside the image) and are normalised to sum 1.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

NEIGHBOURS = 8
RADIUS = 1.0
SAMPLINGS = ("circle", "square")
NUM_UNIFORM_BINS = NEIGHBOURS * (NEIGHBOURS - 1) + 3  # 59 for P = 8

# ITU-R BT.601 luma weights, in thousandths: integer arithmetic, so that every
# backend gives the same grayscale image.
LUMA_PER_MILLE = (299, 587, 114)


def grayscale(images: jax.Array) -> jax.Array:
    """uint8[B, H, W, 3] -> uint8[B, H, W]: round(0.299 R + 0.587 G + 0.114 B)."""
    x = images.astype(jnp.int32)
    r, g, b = LUMA_PER_MILLE
    y = (r * x[..., 0] + g * x[..., 1] + b * x[..., 2] + 500) // 1000
    return y.astype(jnp.uint8)


def _circle_offsets() -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets of the 8 neighbours, rounded to 5 decimals as scikit-image does."""
    angles = 2 * np.pi * np.arange(NEIGHBOURS, dtype=np.float64) / NEIGHBOURS
    return np.round(-RADIUS * np.sin(angles), 5), np.round(RADIUS * np.cos(angles), 5)


def _bilinear_weights(size: int, offset: float) -> tuple[int, int, np.ndarray]:
    """For positions ``k + offset``, k in range(size): (floor shift, ceil shift, fraction[size]).

    The fraction is ``(k + offset) - floor(k + offset)`` in float64, per k, as
    scikit-image computes it (it varies with k in its last bits).
    """
    pos = np.arange(size, dtype=np.float64) + offset
    low, high = np.floor(pos), np.ceil(pos)
    shifts_low = set((low - np.arange(size)).astype(int))
    shifts_high = set((high - np.arange(size)).astype(int))
    if len(shifts_low) != 1 or len(shifts_high) != 1:
        raise AssertionError(f"offset {offset} does not give one neighbour pair per axis")
    return shifts_low.pop(), shifts_high.pop(), pos - low


def _shifted(padded: jax.Array, dr: int, dc: int, height: int, width: int) -> jax.Array:
    """Pixels (r + dr, c + dc) for every (r, c) of the unpadded image; padded by 1 with 0."""
    return padded[:, 1 + dr : 1 + dr + height, 1 + dc : 1 + dc + width]


def _diagonal_bit(padded: jax.Array, center: jax.Array, row_off: float, col_off: float):
    """neighbour >= centre for one interpolated diagonal, in scikit-image's float64 arithmetic.

    padded: float64[B, H + 2, W + 2]; center: float64[B, H, W]. Returns bool[B, H, W].
    """
    _, height, width = center.shape
    r_lo, r_hi, dr = _bilinear_weights(height, row_off)
    c_lo, c_hi, dc = _bilinear_weights(width, col_off)
    dr, dc = jnp.asarray(dr)[:, None], jnp.asarray(dc)[None, :]
    one_minus_dr, one_minus_dc = 1.0 - dr, 1.0 - dc

    def pixel(r, c):
        return _shifted(padded, r, c, height, width)

    # scikit-image's C code rounds each product before the sum; a fused multiply-add
    # (which XLA emits inside fusions, on CPU too) would skip that rounding and flip
    # the bit of a diagonal that lies on the centre's value. The barrier keeps the
    # products apart; `lbp_codes_gray` runs a few images at a time so that the
    # products it writes out stay in cache.
    separate = _products_apart
    products = separate((
        one_minus_dc * pixel(r_lo, c_lo), dc * pixel(r_lo, c_hi),
        one_minus_dc * pixel(r_hi, c_lo), dc * pixel(r_hi, c_hi),
    ))
    top, bottom = products[0] + products[1], products[2] + products[3]
    products = separate((one_minus_dr * top, dr * bottom))
    texture = products[0] + products[1]
    return texture - center >= 0


def _products_apart(products: tuple) -> tuple:
    """The same arrays, past a barrier that no fusion crosses (no multiply-add becomes an FMA)."""
    return lax.optimization_barrier(products)


def _check_sampling(sampling: str) -> None:
    if sampling not in SAMPLINGS:
        raise ValueError(f"LBP sampling {sampling!r} is not one of {SAMPLINGS}")


def lbp_codes_gray(gray: jax.Array, sampling: str = "circle") -> jax.Array:
    """LBP codes (P=8, R=1) of grayscale images: uint8[B, H, W] -> int32[B, H, W] in [0, 256).

    See the module docstring for the bit order and the two samplings.
    """
    _check_sampling(sampling)
    if gray.ndim != 3:
        raise ValueError(f"expected grayscale images [B, H, W], got shape {gray.shape}")
    return _per_image(lambda g: _codes(g, sampling), gray)


def _per_image(fn, x: jax.Array) -> jax.Array:
    """fn (batch -> batch) applied a few images at a time: [B, ...] -> [B, ...].

    Image by image on CPU, where the float64 intermediates of one image stay in
    cache (8x faster than the whole batch at once at 112 px); in chunks elsewhere.
    """
    chunk = 1 if jax.default_backend() == "cpu" else 64
    return lax.map(lambda one: fn(one[None])[0], x, batch_size=chunk)


def _codes(gray: jax.Array, sampling: str) -> jax.Array:
    """`lbp_codes_gray` of one batch at once: uint8[B, H, W] -> int32[B, H, W]."""
    _, height, width = gray.shape
    center = gray.astype(jnp.int32)
    padded = jnp.pad(center, ((0, 0), (1, 1), (1, 1)))
    rows, cols = _circle_offsets()
    code = jnp.zeros(center.shape, jnp.int32)
    for i in range(NEIGHBOURS):
        if i % 2 == 0 or sampling == "square":
            # Axis neighbours sit on integer pixels in both samplings; diagonals too for
            # "square". Integer comparison: exact.
            neighbour = _shifted(padded, int(np.rint(rows[i])), int(np.rint(cols[i])),
                                 height, width)
            bit = neighbour >= center
        else:
            with jax.enable_x64(True):
                bit = _diagonal_bit(padded.astype(jnp.float64), center.astype(jnp.float64),
                                    float(rows[i]), float(cols[i]))
        code = code | (bit.astype(jnp.int32) << i)
    return code


def lbp_codes(images: jax.Array, sampling: str = "circle") -> jax.Array:
    """LBP codes of RGB images: uint8[B, H, W, 3] -> int32[B, H, W], on `grayscale` images."""
    return lbp_codes_gray(grayscale(images), sampling)


def uniform_lookup() -> np.ndarray:
    """int32[256]: default LBP code -> non-rotation-invariant uniform code in [0, 59).

    Scikit-image's ``'nri_uniform'`` numbering: 0 for no ones, 1 + (ones - 1) * P
    + rotation for the uniform patterns with 1..P-1 ones, P * (P - 1) + 1 for all
    ones, P * (P - 1) + 2 for every non-uniform pattern (more than two 0/1
    changes around the circle).
    """
    p = NEIGHBOURS
    table = np.zeros(2**p, np.int32)
    for code in range(2**p):
        bits = [(code >> i) & 1 for i in range(p)]
        changes = sum(bits[i] != bits[i + 1] for i in range(p - 1))
        ones = sum(bits)
        if changes > 2:
            table[code] = p * (p - 1) + 2
        elif ones == 0:
            table[code] = 0
        elif ones == p:
            table[code] = p * (p - 1) + 1
        else:
            first_one, first_zero = bits.index(1), bits.index(0)
            rotation = ones - first_zero if first_one == 0 else p - first_one
            table[code] = 1 + (ones - 1) * p + rotation
    return table


def _normalised_counts(ids: jax.Array, length: int, per: int) -> jax.Array:
    """Histogram of int32[B, N] ids into ``length`` bins, normalised over groups of ``per`` bins."""
    counts = jax.vmap(lambda row: jnp.bincount(row, length=length))(ids)
    groups = counts.reshape(ids.shape[0], length // per, per).astype(jnp.float32)
    return (groups / groups.sum(-1, keepdims=True)).reshape(ids.shape[0], length)


@functools.partial(jax.jit, static_argnames=("sampling",))
def study_histogram(images: jax.Array, sampling: str = "circle") -> jax.Array:
    """The study's LBP feature: uint8[B, H, W, 3] -> float32[B, 256], each row summing to 1.

    One 256-bin histogram of the default codes over the interior pixels.
    """
    def histogram(batch):
        codes = _codes(grayscale(batch), sampling)[:, 1:-1, 1:-1]
        return _normalised_counts(codes.reshape(codes.shape[0], -1), 256, 256)

    _check_sampling(sampling)
    return _per_image(histogram, images)


def cell_ids(height: int, width: int, grid: tuple[int, int]) -> np.ndarray:
    """int32[height, width]: the grid cell (row-major) of each pixel; cells as np.array_split."""
    gy, gx = grid
    if not (1 <= gy <= height and 1 <= gx <= width):
        raise ValueError(f"LBP grid {grid} does not fit an interior of {height}x{width} pixels")
    rows = np.concatenate([np.full(len(a), k) for k, a in
                           enumerate(np.array_split(np.arange(height), gy))])
    cols = np.concatenate([np.full(len(a), k) for k, a in
                           enumerate(np.array_split(np.arange(width), gx))])
    return (rows[:, None] * gx + cols[None, :]).astype(np.int32)


@functools.partial(jax.jit, static_argnames=("grid", "sampling"))
def uniform_grid_histogram(
    images: jax.Array, grid: tuple[int, int] = (4, 4), sampling: str = "circle"
) -> jax.Array:
    """The face LBP feature: uint8[B, H, W, 3] -> float32[B, gy * gx * 59].

    Uniform codes (`uniform_lookup`) of the interior pixels, one 59-bin histogram
    per cell of a ``grid`` = (gy, gx) split of the interior (row-major), each
    summing to 1, concatenated.
    """
    _check_sampling(sampling)
    cells = cell_ids(images.shape[1] - 2, images.shape[2] - 2, tuple(grid))
    length = grid[0] * grid[1] * NUM_UNIFORM_BINS

    def histogram(batch):
        codes = _codes(grayscale(batch), sampling)[:, 1:-1, 1:-1]
        uniform = jnp.asarray(uniform_lookup())[codes]
        ids = jnp.asarray(cells)[None] * NUM_UNIFORM_BINS + uniform
        return _normalised_counts(ids.reshape(ids.shape[0], -1), length, NUM_UNIFORM_BINS)

    return _per_image(histogram, images)
