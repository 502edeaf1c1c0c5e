"""Convolution and max-pool, each with two kernel choices: "cpu" and "xla".

`kernels` is chosen once, when the model is built (`resolve_kernels`: "auto" is "cpu"
when the model runs on CPU, "xla" otherwise; `models.create_model` and `runs.make_model`
resolve it), and held by every module as an attribute, "xla" unless given; parameters
are the same in both, so variables and checkpoints move freely between them.

"xla": XLA's own convolution (`lax.conv_general_dilated`, as `flax.linen.Conv` calls it)
and max-pool (`nn.max_pool`: reduce_window, select_and_scatter in the gradient), with
JAX's gradients: no custom VJP, so `jax.jvp` works, and each accelerator's compiler
picks its own conv algorithms.

"cpu": paths that stay fast on XLA:CPU. Its native convolution runs a 3x3 conv on a map
of a few pixels at about 3 GFLOP/s: one 512-channel conv on ResNet's 2x2 last-stage maps
(64 px input, batch 32) takes about 500 ms forward and backward. The same conv written
as "gather the 3x3 neighbourhoods, then one matrix product" takes about 10 ms, while on
maps of 8x8 and larger the native conv wins. A 1x1 conv is a matrix product at any map
size; written as one, forward and backward take up to 2x less time than the native conv,
and ResNet-152's train step (two of the three convs of each block are 1x1) runs 1.9x
faster at 64 px and 2.4x at 112 px. `Conv` picks per call, from static shapes, so one
model runs each of its convs the fast way. The convs left to XLA (3x3 and larger, on
maps over 4x4) get their kernel gradient as one matrix product per kernel tap
(`conv_native`): XLA:CPU's own runs at a tenth of its forward pass's speed on large maps.
`max_pool` has its own gradient too, as XLA:CPU's select_and_scatter is slow. These are
custom VJPs: `jax.jvp` through them raises a TypeError.
"""

from collections.abc import Callable, Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Padding = str | Sequence[tuple[int, int]]

# Output maps with at most this many pixels go through patches + matmul: 4x4 and
# smaller. Measured on 2-core CPUs: native wins from 8x8 up.
SMALL_MAP_PIXELS = 16
# The kernel choices a module takes; "auto" is resolved to one of them when a model is built.
KERNELS = ("cpu", "xla")


def resolve_kernels(kernels: str = "auto", platforms: Sequence[str] | None = None) -> str:
    """The kernels of a model that runs on ``platforms``: "cpu" or "xla".

    Args:
      kernels: "cpu" or "xla" (returned as given), or "auto": "cpu" when every platform
        is CPU, else "xla".
      platforms: where the model runs, as `jax.default_backend()` or `jax.export` name
        them ("cpu", "gpu", "cuda", "tpu", ...); None: this process's default backend.

    Raises:
      ValueError: ``kernels`` is not "auto", "cpu" or "xla".
    """
    if kernels in KERNELS:
        return kernels
    if kernels != "auto":
        raise ValueError(f"kernels={kernels!r} is not one of: auto, {', '.join(KERNELS)}")
    platforms = tuple(platforms) if platforms else (jax.default_backend(),)
    return "cpu" if all(p == "cpu" for p in platforms) else "xla"


def _check_kernels(kernels: str) -> None:
    if kernels not in KERNELS:
        raise ValueError(f"kernels={kernels!r} is not one of: {', '.join(KERNELS)} (resolve "
                         "'auto' with resolve_kernels when the model is built)")


def conv_output_size(
    size: Sequence[int], kernel_size: Sequence[int], strides: Sequence[int], padding: Padding
) -> tuple[int, ...]:
    """Spatial output size of a conv.

    Args:
      size: input spatial size (H, W).
      kernel_size: (kh, kw).
      strides: (sh, sw).
      padding: "SAME", "VALID" or ((top, bottom), (left, right)).

    Returns:
      (out_h, out_w), as lax.conv_general_dilated computes it.
    """
    pads = _explicit_padding(size, kernel_size, strides, padding)
    return tuple(
        (n + lo + hi - k) // s + 1
        for n, k, s, (lo, hi) in zip(size, kernel_size, strides, pads, strict=True)
    )


def _explicit_padding(
    size: Sequence[int], kernel_size: Sequence[int], strides: Sequence[int], padding: Padding
) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(tuple(size), tuple(kernel_size), tuple(strides), padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def conv_as_matmul(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    padding: Padding,
    precision: lax.PrecisionLike = None,
) -> jax.Array:
    """A 2-D convolution computed as patch extraction followed by one matrix product.

    Equal to `lax.conv_general_dilated(x, kernel, strides, padding, NHWC/HWIO/NHWC)`.
    The patches are strided slices of the padded input, one per kernel tap: their
    gradient is a pad-and-add, which on CPU is 2-3x faster than the gradient of
    `lax.conv_general_dilated_patches` (itself a grouped conv).

    Args:
      x: float[B, H, W, C_in].
      kernel: float[kh, kw, C_in, C_out] (HWIO, as flax.linen.Conv stores it).
      strides: (sh, sw).
      padding: "SAME", "VALID" or ((top, bottom), (left, right)).
      precision: precision of the matrix product.

    Returns:
      float[B, out_h, out_w, C_out].
    """
    kh, kw, c_in, c_out = kernel.shape
    # Channels ordered (kh, kw, C_in), the row-major order of the HWIO kernel.
    patches = jnp.concatenate(_taps(x, (kh, kw), strides, padding), axis=-1)
    return jnp.dot(patches, kernel.reshape(kh * kw * c_in, c_out), precision=precision)


def _taps(x: jax.Array, kernel_size: tuple[int, int], strides: Sequence[int],
          padding: Padding, fill: float = 0.0) -> list[jax.Array]:
    """The kh * kw strided views float[B, out_h, out_w, C] of the input, padded with
    ``fill``, that meet kernel (or pooling window) tap (i, j), in row-major tap order."""
    (kh, kw), (sh, sw) = kernel_size, strides
    pads = _explicit_padding(x.shape[1:3], kernel_size, strides, padding)
    out_h, out_w = conv_output_size(x.shape[1:3], kernel_size, strides, pads)
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=fill)
    return [x[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw, :]
            for i in range(kh) for j in range(kw)]


def _native(x, kernel, strides, padding, precision):
    return lax.conv_general_dilated(x, kernel, window_strides=strides, padding=padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=precision)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_native(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding,
                precision: lax.PrecisionLike = None) -> jax.Array:
    """XLA's convolution (NHWC/HWIO/NHWC) whose kernel gradient is one matrix product per
    tap: the "cpu" kernels' conv on maps over 4x4.

    XLA:CPU computes a conv's kernel gradient at 10-15 GFLOP/s on maps of 32x32 and more
    (its forward pass and input gradient run at 80-100): for a 3x3 conv of 64 channels on
    64x64 maps, batch 32, 700 ms where PyTorch takes 200. As one matrix product per
    kernel tap (that tap's view of the input, transposed, times the output gradient) it
    is 2-4x faster there. Used on every platform it is built for; a model for an
    accelerator is built with kernels="xla" and never calls it.
    """
    return _native(x, kernel, strides, padding, precision)


def _conv_native_fwd(x, kernel, strides, padding, precision):
    return _native(x, kernel, strides, padding, precision), (x, kernel)


def _conv_native_bwd(strides, padding, precision, residuals, g):
    x, kernel = residuals
    dx = jax.vjp(lambda x: _native(x, kernel, strides, padding, precision), x)[1](g)[0]
    kh, kw, c_in, c_out = kernel.shape
    g2 = g.reshape(-1, c_out)
    grads = [jnp.dot(t.reshape(-1, c_in).T, g2, precision=precision)
             for t in _taps(x, (kh, kw), strides, padding)]
    return dx, jnp.stack(grads).reshape(kernel.shape).astype(kernel.dtype)


conv_native.defvjp(_conv_native_fwd, _conv_native_bwd)


class Conv(nn.Module):
    """2-D convolution with the parameters and defaults of `flax.linen.Conv`.

    Parameters are "kernel" float[kh, kw, C_in, features] (HWIO) and, with
    `use_bias`, "bias" float[features], initialised as nn.Conv does, so variables
    move between the two unchanged, and between the two `kernels`.

    kernels="xla" computes what nn.Conv computes (`lax.conv_general_dilated`, JAX's
    gradient). kernels="cpu" runs 1x1 convs, and convs whose output map has at most
    `small_map_pixels` pixels, as `conv_as_matmul`, and all others as `conv_native`.

    Attributes:
      features: output channels.
      kernel_size: (kh, kw).
      strides: (sh, sw).
      padding: "SAME", "VALID" or ((top, bottom), (left, right)).
      use_bias: add a learned bias.
      dtype: computation dtype (None: from the inputs and parameters).
      param_dtype: parameter dtype.
      precision: precision of the conv or matrix product.
      kernel_init, bias_init: initialisers.
      kernels: "cpu" or "xla" (see the module's docstring; `resolve_kernels`).
      small_map_pixels: with kernels="cpu", the largest output map (out_h * out_w) of a
        conv larger than 1x1 computed as patches + matmul; 0 keeps such convs native.
    """

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    padding: Padding = "SAME"
    use_bias: bool = True
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    precision: lax.PrecisionLike = None
    kernel_init: Callable = nn.linear.default_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()
    kernels: str = "xla"
    small_map_pixels: int = SMALL_MAP_PIXELS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the conv: float[B, H, W, C_in] -> float[B, out_h, out_w, features]."""
        _check_kernels(self.kernels)
        kernel_size = tuple(self.kernel_size)
        strides = tuple(self.strides)
        kernel = self.param(
            "kernel",
            self.kernel_init,
            (*kernel_size, x.shape[-1], self.features),
            self.param_dtype,
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        padding = self.padding if isinstance(self.padding, str) else tuple(self.padding)
        out_h, out_w = conv_output_size(x.shape[1:3], kernel_size, strides, padding)
        if self.kernels == "xla":
            y = _native(x, kernel, strides, padding, self.precision)
        elif kernel_size == (1, 1) or out_h * out_w <= self.small_map_pixels:
            y = conv_as_matmul(x, kernel, strides, padding, self.precision)
        else:
            y = conv_native(x, kernel, strides, padding, self.precision)
        if bias is not None:  # as nn.Conv adds it: "xla" is nn.Conv's computation, op for op
            y = y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)
        return y


def max_pool(
    x: jax.Array,
    window: tuple[int, int],
    strides: tuple[int, int],
    padding: Padding = "VALID",
    kernels: str = "xla",
) -> jax.Array:
    """Max-pool float[B, H, W, C] -> float[B, out_h, out_w, C], equal to `nn.max_pool`.

    kernels="xla" is `nn.max_pool` (XLA's reduce_window; select_and_scatter in the
    gradient). kernels="cpu" is an elementwise maximum over strided views, with a custom
    gradient that goes, like XLA's select-and-scatter, to the first maximum of each
    window in row-major order: on XLA:CPU about 6x faster than `nn.max_pool`'s (3x3/2
    pool of 32x32x64 maps, batch 32).

    Args:
      x: float[B, H, W, C].
      window: (kh, kw).
      strides: (sh, sw).
      padding: "SAME", "VALID" or ((top, bottom), (left, right)); pads are -inf.
      kernels: "cpu" or "xla" (`resolve_kernels`).
    """
    _check_kernels(kernels)
    if not isinstance(padding, str):
        padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if kernels == "xla":
        return nn.max_pool(x, window_shape=tuple(window), strides=tuple(strides), padding=padding)
    return _max_pool(x, tuple(window), tuple(strides), padding)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, padding):
    return _max_pool_fwd(x, window, strides, padding)[0]


def _max_pool_fwd(x, window, strides, padding):
    taps = _taps(x, window, strides, padding, fill=-jnp.inf)
    out = taps[0]
    for tap in taps[1:]:
        out = jnp.maximum(out, tap)
    return out, (x, out)


def _max_pool_bwd(window, strides, padding, residuals, grad):
    x, out = residuals
    taps, taps_vjp = jax.vjp(lambda x: _taps(x, window, strides, padding, fill=-jnp.inf), x)
    taken = jnp.zeros(out.shape, bool)
    tap_grads = []
    for tap in taps:
        first = (tap == out) & ~taken
        taken = taken | first
        tap_grads.append(jnp.where(first, grad, jnp.zeros_like(grad)))
    return taps_vjp(tap_grads)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
