"""VGG-16 trunk (the VGG-Face architecture) in torchvision's layout, up to fc7."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fgmask_jax.models.layers import Conv, max_pool

# Filters of each conv, by block; a 2x2 max-pool closes every block.
BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
POOLED_SIZE = 7
FC_UNITS = 4096


def adaptive_bins(size: int, out_size: int) -> np.ndarray:
    """Averaging matrix of torchvision's AdaptiveAvgPool over one axis.

    Bin i averages positions floor(i * size / out_size) to
    ceil((i + 1) * size / out_size) - 1, so bins overlap when the sizes do not
    divide and repeat positions when `size` < `out_size`.

    Returns:
      float32[out_size, size]; row i holds 1/len(bin i) on the bin's positions.
    """
    weights = np.zeros((out_size, size), np.float32)
    for i in range(out_size):
        start = (i * size) // out_size
        end = -((-(i + 1) * size) // out_size)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def adaptive_avg_pool(x: jax.Array, out_size: int) -> jax.Array:
    """torchvision's AdaptiveAvgPool2d((out_size, out_size)) on float[B, H, W, C].

    Returns the input unchanged when it is already out_size x out_size.

    Returns:
      float[B, out_size, out_size, C].
    """
    _, height, width, _ = x.shape
    if (height, width) == (out_size, out_size):
        return x
    rows = jnp.asarray(adaptive_bins(height, out_size), x.dtype)
    cols = jnp.asarray(adaptive_bins(width, out_size), x.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols, precision=lax.Precision.HIGHEST)


class VGG16(nn.Module):
    """VGG-16 up to fc7: images float[B, H, W, 3] (H, W >= 32) -> float[B, 4096].

    13 3x3 convs with ReLU (conv1_1 ... conv5_3) and five 2x2 max-pools, adaptive
    average pool to 7x7, flatten, fc6 (4096) ReLU dropout, fc7 (4096) ReLU
    dropout. fc7 is the VGG-Face feature. The 7x7x512 map is flattened in
    channel-major (C, H, W) order, as torchvision's NCHW flatten, so that fc6's
    kernel is exactly torchvision's weight transposed. Features come out in `dtype`.

    Attributes:
      dropout: rate of the dropouts after fc6 and fc7 (torchvision's 0.5).
      dtype: computation dtype; parameters stay float32.
      kernels: "cpu" or "xla", for the convs and max-pools (see `layers`).
    """

    dropout: float = 0.5
    dtype: jnp.dtype = jnp.float32
    kernels: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        # torchvision's initialisation: kaiming-normal (fan_out) convs, N(0, 0.01) linears.
        conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
        for b, block in enumerate(BLOCKS):
            for c, filters in enumerate(block):
                x = Conv(
                    filters,
                    (3, 3),
                    padding=((1, 1), (1, 1)),
                    dtype=self.dtype,
                    kernel_init=conv_init,
                    kernels=self.kernels,
                    name=f"conv{b + 1}_{c + 1}",
                )(x)
                x = nn.relu(x)
            x = max_pool(x, (2, 2), (2, 2), kernels=self.kernels)
        x = PooledDense(FC_UNITS, dtype=self.dtype, name="fc6")(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(x))
        x = nn.Dense(FC_UNITS, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01),
                     name="fc7")(x)
        return nn.Dropout(self.dropout, deterministic=not train)(nn.relu(x))


class PooledDense(nn.Module):
    """fc6: torchvision's adaptive average pool to 7x7, channel-first flatten and Dense,
    as one linear map of a float[B, h, w, C] map -> float[B, features].

    The kernel is Dense's float32[C * 7 * 7, features] (torchvision's weight transposed).
    For maps smaller than 7x7 (inputs under 224 px) the pool only repeats and averages
    positions, so it is folded into the kernel once per call, C x h x w rows instead of
    C x 49: at 64 px (a 2x2 map) each image's product is 12 times smaller, at 32 px 49.
    """

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        kernel = self.param("kernel", nn.initializers.normal(0.01),
                            (c * POOLED_SIZE ** 2, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        if h * w >= POOLED_SIZE ** 2:  # pool the map, then the plain product
            x = adaptive_avg_pool(x, POOLED_SIZE)
            x = jnp.transpose(x, (0, 3, 1, 2)).reshape(b, -1)
        else:  # fold the pool into the kernel: [C, 7, 7, F] -> [C, h, w, F]
            rows = jnp.asarray(adaptive_bins(h, POOLED_SIZE))
            cols = jnp.asarray(adaptive_bins(w, POOLED_SIZE))
            kernel = jnp.einsum("cijf,ih,jw->chwf",
                                kernel.reshape(c, POOLED_SIZE, POOLED_SIZE, -1), rows, cols,
                                precision=lax.Precision.HIGHEST).reshape(c * h * w, -1)
            x = jnp.transpose(x, (0, 3, 1, 2)).reshape(b, -1)
        y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)
