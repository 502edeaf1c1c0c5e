"""The study's small CNN: three 3x3 conv layers of 10, 20 and 30 filters."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from fgmask_jax.models.layers import Conv, max_pool

FILTERS = (10, 20, 30)


class SmallCNN(nn.Module):
    """Images float[B, H, W, 3] -> one feature vector per conv level.

    conv1 (10) ELU, 2x2 max-pool, conv2 (20) ELU, 2x2 max-pool, conv3 (30) ELU;
    3x3 kernels, 'SAME' padding, with bias and Glorot-uniform kernels (Keras's
    defaults, as the study used). Each level's
    feature is the global max over its activation map, taken before that
    level's pool, so the multi-task model can hang a head on any level.

    Attributes:
      dtype: computation dtype; parameters stay float32.
      kernels: "cpu" or "xla", for the convs and max-pools (see `layers`).

    Returns:
      (float[B, 10], float[B, 20], float[B, 30]) in `dtype`: levels 1, 2, 3.
    """

    dtype: jnp.dtype = jnp.float32
    kernels: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
        del train  # no dropout or BatchNorm here
        levels = []
        for i, filters in enumerate(FILTERS):
            if i > 0:
                x = max_pool(x, (2, 2), (2, 2), kernels=self.kernels)
            conv = Conv(
                filters,
                (3, 3),
                padding="SAME",
                dtype=self.dtype,
                kernel_init=nn.initializers.glorot_uniform(),
                kernels=self.kernels,
                name=f"conv{i + 1}",
            )
            x = nn.elu(conv(x))
            levels.append(jnp.max(x, axis=(1, 2)))
        return tuple(levels)
