"""Tiny Image features (Torralba et al., 2008): a small grayscale thumbnail as a vector."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from fgmask_jax.baselines import lbp

# Norms below this (grey levels in [0, 1]; float rounding of a flat image is ~1e-7) count as
# zero: a flat thumbnail stays all zeros instead of amplified rounding noise.
EPSILON = 1e-5


@functools.partial(jax.jit, static_argnames=("size",))
def tiny_image(images: jax.Array, size: int = 16) -> jax.Array:
    """uint8[B, H, W, 3] -> float32[B, size * size]: zero mean and unit L2 norm per image.

    Grayscale by `lbp.grayscale` (BT.601 luma), then resized to ``size`` x ``size``
    with an antialiased bilinear filter (area-like when shrinking), flattened
    row-major, centred and scaled to unit norm.
    """
    gray = lbp.grayscale(images).astype(jnp.float32) / 255.0
    small = jax.image.resize(gray, (gray.shape[0], size, size), "linear", antialias=True)
    x = small.reshape(gray.shape[0], -1)
    x = x - x.mean(axis=1, keepdims=True)
    return x / _safe_norm(x)


def _safe_norm(x: jax.Array) -> jax.Array:
    """float32[B, D] -> float32[B, 1]: the L2 norm, or +inf (dividing to 0) when below EPSILON."""
    norm = jnp.linalg.norm(x, axis=1, keepdims=True)
    return jnp.where(norm < EPSILON, jnp.inf, norm)
