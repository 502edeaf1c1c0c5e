"""Eigenface (Turk and Pentland, 1991): PCA of grayscale face images, fitted in JAX.

    pca = fit_pca(pixels(train_images, 32), num_components=100)
    features = project(pca, pixels(test_images, 32))  # float32[B, 100]

The PCA is fitted on the training split only, by an SVD of the centred data; its
explained variance (ratio) is that of scikit-learn's ``PCA(n_components=k)``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fgmask_jax.baselines import lbp


class PCA(NamedTuple):
    """A fitted PCA. D: input dimension, k: components."""

    mean: jax.Array  # float32[D]
    components: jax.Array  # float32[k, D], rows orthonormal, by decreasing variance
    explained_variance: jax.Array  # float32[k], variance along each component (ddof=1)
    explained_variance_ratio: jax.Array  # float32[k], share of the total variance
    whiten: bool  # project() divides by sqrt(explained_variance)


@functools.partial(jax.jit, static_argnames=("size",))
def pixels(images: jax.Array, size: int = 32) -> jax.Array:
    """uint8[B, H, W, 3] -> float32[B, size * size]: grayscale in [0, 1], resized, flattened."""
    gray = lbp.grayscale(images).astype(jnp.float32) / 255.0
    small = jax.image.resize(gray, (gray.shape[0], size, size), "linear", antialias=True)
    return small.reshape(gray.shape[0], -1)


@functools.partial(jax.jit, static_argnames=("num_components",))
def _fit(x: jax.Array, num_components: int):
    mean = x.mean(axis=0)
    # Full precision: the default on some accelerators would round the products to bfloat16.
    with jax.default_matmul_precision("highest"):
        _, s, vt = jnp.linalg.svd(x - mean, full_matrices=False)
    variance = s**2 / (x.shape[0] - 1)
    return mean, vt[:num_components], variance[:num_components], (
        variance[:num_components] / variance.sum()
    )


def fit_pca(x: jax.Array, num_components: int, whiten: bool = False) -> PCA:
    """Fits a PCA to float[N, D] data (N >= 2); keeps min(num_components, N, D) components.

    Raises:
      ValueError: fewer than two examples, or num_components < 1.
    """
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"PCA needs data [N >= 2, D], got shape {x.shape}")
    if num_components < 1:
        raise ValueError(f"num_components must be >= 1, got {num_components}")
    k = min(num_components, *x.shape)
    return PCA(*_fit(x, k), whiten=whiten)


@functools.partial(jax.jit, static_argnames=("whiten",))
def _project(mean, components, variance, x, whiten):
    with jax.default_matmul_precision("highest"):
        z = (x - mean) @ components.T
    return z / jnp.sqrt(variance) if whiten else z


def project(pca: PCA, x: jax.Array) -> jax.Array:
    """float[B, D] -> float32[B, k]: coordinates along the components (whitened if fitted so)."""
    return _project(pca.mean, pca.components, pca.explained_variance,
                    jnp.asarray(x, jnp.float32), pca.whiten)
