"""ResNet v1.5 trunks in torchvision's layout (ResNet-18 to ResNet-152).

v1.5: a bottleneck block strides on its 3x3 conv, not its first 1x1. Convs have
no bias (each is followed by BatchNorm), the shortcut is a 1x1 conv + BatchNorm
where the shape changes, and the trunk ends in a global average pool: parameter
counts equal torchvision's models without their classifier. Submodule names
follow torchvision's ("conv1", "bn1", "layer1_0", "downsample_conv", ...) so
that its weights can be mapped in by name.
"""

from collections.abc import Callable, Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from fgmask_jax.models.layers import SMALL_MAP_PIXELS, Conv, max_pool

# torchvision initialises convs with kaiming_normal_(mode="fan_out", nonlinearity="relu").
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34): float[B, H, W, C] -> float[B, H/s, W/s, filters]."""

    filters: int
    strides: int = 1
    conv: Callable = Conv
    norm: Callable = nn.BatchNorm
    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = (self.strides, self.strides)
        y = self.conv(self.filters, (3, 3), s, padding=((1, 1), (1, 1)), name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.filters, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
        # Zero scale on the last BN: each block starts as the identity, which
        # steadies early training (Goyal et al. 2017).
        y = self.norm(scale_init=nn.initializers.zeros_init(), name="bn2")(y)
        return nn.relu(y + _shortcut(self, x, y.shape[-1]))


class Bottleneck(nn.Module):
    """1x1, 3x3 (strided), 1x1 convs (ResNet-50+).

    float[B, H, W, C] -> float[B, H/s, W/s, 4 * filters].
    """

    filters: int
    strides: int = 1
    conv: Callable = Conv
    norm: Callable = nn.BatchNorm
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = (self.strides, self.strides)
        y = self.conv(self.filters, (1, 1), name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.filters, (3, 3), s, padding=((1, 1), (1, 1)), name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(self.filters * self.expansion, (1, 1), name="conv3")(y)
        y = self.norm(scale_init=nn.initializers.zeros_init(), name="bn3")(y)
        return nn.relu(y + _shortcut(self, x, y.shape[-1]))


def _shortcut(block: BasicBlock | Bottleneck, x: jax.Array, features: int) -> jax.Array:
    """Identity, or a strided 1x1 conv + BN where the block changes the shape."""
    if block.strides == 1 and x.shape[-1] == features:
        return x
    s = (block.strides, block.strides)
    x = block.conv(features, (1, 1), s, padding="VALID", name="downsample_conv")(x)
    return block.norm(name="downsample_bn")(x)


class ResNet(nn.Module):
    """ResNet trunk: images float[B, H, W, 3] -> features float[B, filters * 2**(S-1) * expansion].

    Stem: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool; then stages of `block_cls`,
    stage i with `num_filters * 2**i` filters and stride 2 from the second stage
    on; then a global average pool. Features come out in `dtype`.

    Attributes:
      stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
      block_cls: BasicBlock or Bottleneck.
      num_filters: filters of the stem and the first stage.
      dtype: computation dtype; parameters stay float32.
      kernels: "cpu" or "xla", for every conv and the max-pool (see `layers`); the
        parameters do not depend on it.
      small_map_pixels: see `layers.Conv` (kernels="cpu"); 0 runs every conv natively.
      frozen: parts ("stem", "layer1".."layer4") that are not trained: their
        BatchNorm layers normalise with, and keep, their running statistics.
    """

    stage_sizes: Sequence[int]
    block_cls: type[nn.Module]
    num_filters: int = 64
    dtype: jnp.dtype = jnp.float32
    kernels: str = "xla"
    small_map_pixels: int = SMALL_MAP_PIXELS
    frozen: Sequence[str] = ()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv = partial(
            Conv,
            use_bias=False,
            dtype=self.dtype,
            kernel_init=conv_kernel_init,
            kernels=self.kernels,
            small_map_pixels=self.small_map_pixels,
        )
        def norm_of(part: str):
            return partial(
                nn.BatchNorm,
                use_running_average=not train or part in self.frozen,
                momentum=0.9,
                epsilon=1e-5,
                dtype=self.dtype,
            )

        x = conv(self.num_filters, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="conv1")(x)
        x = nn.relu(norm_of("stem")(name="bn1")(x))
        x = max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)), kernels=self.kernels)
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = self.block_cls(
                    self.num_filters * 2**i,
                    strides=2 if i > 0 and j == 0 else 1,
                    conv=conv,
                    norm=norm_of(f"layer{i + 1}"),
                    name=f"layer{i + 1}_{j}",
                )(x)
        return jnp.mean(x, axis=(1, 2))


ResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
ResNet101 = partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck)
ResNet152 = partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=Bottleneck)
# One stage of one block with 8 filters: for tests that run real steps.
ResNetTiny = partial(ResNet, stage_sizes=(1,), block_cls=BasicBlock, num_filters=8)
