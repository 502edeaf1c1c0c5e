"""Where a train step's time goes: every conv of a model, forward and backward, JAX beside
PyTorch on the same device.

  pip install -e '.[bench]'   # torch, for the peer
  python benchmarks/conv_layers.py --model=resnet18 --size=112 --batch=32 [--kernels=xla]

Records each conv the model runs (our `models.layers.Conv`, as in the train step; with the
"cpu" kernels 1x1 and small-map convs as one matrix product, the others as XLA's
convolution with a per-tap kernel gradient; with "xla" all as XLA's convolution) by flax's
method interception, then times each distinct shape alone. JAX jits the conv's output
and its gradients with respect to input and kernel (what a train step needs of it);
PyTorch runs `torch.nn.functional.conv2d` on channels_last tensors, forward and
backward, for the same shapes, on JAX's device (cuda when JAX's default backend is gpu,
with `cudnn.benchmark`). Both in float32. Each time is the median of --repeats calls,
each timed up to a sync (`jax.block_until_ready`, `torch.cuda.synchronize`), after one
warm-up. The model's first conv takes no input gradient on either side (the images need
none). Rows: input map, channels, kernel and stride, how many convs of the model have that
shape, ms per conv on each side, their ratio (PyTorch ms over JAX ms: above 1, ours is
faster); the last row sums over the model (ms per step spent in convs).
"""

from __future__ import annotations

import collections
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import linen as nn

from fgmask_jax import config_lib, models, runs

_MODEL = flags.DEFINE_string("model", "resnet18", "cnn, resnet18/34/50/101/152 or vgg16.")
_SIZE = flags.DEFINE_integer("size", 112, "Input side in pixels.")
_BATCH = flags.DEFINE_integer("batch", 32, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per shape (after one warm-up); "
                                "the median counts.", lower_bound=1)
_PEER = flags.DEFINE_bool("peer", True, "Also time PyTorch (needs torch).")
_KERNELS = flags.DEFINE_enum("kernels", "auto", list(config_lib.KERNELS),
                             "Conv kernels (config.kernels): auto is cpu on a CPU backend.")

# PyTorch's OpenMP threads spin while they wait, which on a shared machine costs it several
# times its speed (benchmarks/train_step.py); read when torch loads, in main.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# (input H, W, C_in, C_out, kernel, stride, padding ("SAME", "VALID" or ((top, bottom),
# (left, right))), needs the input's gradient)
Shape = tuple[int, int, int, int, tuple[int, int], tuple[int, int], object, bool]


def conv_shapes(model_name: str, size: int) -> collections.Counter[Shape]:
    """How many convs of each shape the model runs on one [1, size, size, 3] image."""
    config = config_lib.neural_config(f"model={model_name},size={size}",
                                      tasks=("age_group", "gender", "expression"))
    config.dtype = "float32"
    config.kernels = _KERNELS.value
    model = runs.make_model(config)
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    shapes: collections.Counter[Shape] = collections.Counter()

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, models.Conv) and context.method_name == "__call__":
            h, w, c = args[0].shape[1:]
            padding = (module.padding if isinstance(module.padding, str)
                       else tuple(tuple(p) for p in module.padding))
            shapes[(h, w, c, module.features, tuple(module.kernel_size), tuple(module.strides),
                    padding, bool(shapes))] += 1
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    return shapes


def _seconds(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` (which returns once its work is done), after a warm-up."""
    fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def torch_device() -> str:
    """cuda when JAX's default backend is gpu, else cpu: both sides on one device."""
    return "cuda" if jax.default_backend() == "gpu" else "cpu"


def time_jax(shape: Shape, batch: int, repeats: int) -> float:
    h, w, c, features, kernel, strides, padding, input_grad = shape
    conv = models.Conv(features, kernel, strides, padding, use_bias=False,
                       kernels=models.resolve_kernels(_KERNELS.value))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, h, w, c)), jnp.float32)
    params = conv.init(jax.random.key(0), x)
    out = jax.eval_shape(conv.apply, params, x)
    cotangent = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)

    @jax.jit
    def forward_backward(params, x):
        y, vjp = jax.vjp(conv.apply, params, x)
        grads = vjp(cotangent)
        return y, grads if input_grad else grads[0]

    return _seconds(lambda: jax.block_until_ready(forward_backward(params, x)), repeats)


def time_torch(shape: Shape, batch: int, repeats: int) -> float:
    import torch

    h, w, c, features, kernel, strides, padding, input_grad = shape
    device = torch_device()
    torch.manual_seed(0)
    x = torch.randn(batch, c, h, w, device=device).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(input_grad)
    weight = torch.randn(features, c, *kernel, device=device).contiguous(
        memory_format=torch.channels_last)
    weight.requires_grad_(True)
    # The same output size; an asymmetric SAME pad (stride 2) costs what a symmetric one does.
    padding = ((0, 0) if padding == "VALID" else (kernel[0] // 2, kernel[1] // 2)
               if padding == "SAME" else (padding[0][0], padding[1][0]))
    cotangent = None

    def step():
        nonlocal cotangent
        y = torch.nn.functional.conv2d(x, weight, stride=strides, padding=padding)
        if cotangent is None:
            cotangent = torch.randn_like(y)
        y.backward(cotangent)
        weight.grad = None
        x.grad = None
        if device == "cuda":
            torch.cuda.synchronize()

    return _seconds(step, repeats)


def main(argv):
    del argv
    if _PEER.value:
        import torch

        if torch_device() == "cuda":
            torch.backends.cudnn.benchmark = True
        else:
            torch.set_num_threads(os.cpu_count())
    shapes = conv_shapes(_MODEL.value, _SIZE.value)
    print(f"{_MODEL.value} at {_SIZE.value} px, batch {_BATCH.value}: {sum(shapes.values())} "
          f"convs of {len(shapes)} shapes; JAX on one {jax.devices()[0].device_kind}, kernels "
          f"{models.resolve_kernels(_KERNELS.value)}; "
          f"PyTorch on {torch_device() if _PEER.value else 'n/a'}; ms per conv, forward and "
          f"backward, median of {_REPEATS.value}")
    print(f"{'in map':>8} {'c_in':>5} {'c_out':>5} {'kernel':>7} {'stride':>6} {'count':>5} "
          f"{'JAX ms':>8} {'torch ms':>9} {'ratio':>6}")
    total_jax = total_torch = 0.0
    for shape, count in shapes.items():
        h, w, c, features, kernel, strides, _, _ = shape
        ours = 1e3 * time_jax(shape, _BATCH.value, _REPEATS.value)
        peer = (1e3 * time_torch(shape, _BATCH.value, _REPEATS.value) if _PEER.value
                else float("nan"))
        total_jax += count * ours
        total_torch += count * peer
        print(f"{f'{h}x{w}':>8} {c:>5} {features:>5} {f'{kernel[0]}x{kernel[1]}':>7} "
              f"{strides[0]:>6} {count:>5} {ours:>8.2f} {peer:>9.2f} {peer / ours:>6.2f}",
              flush=True)
    print(f"{'all convs':>8} {'':>5} {'':>5} {'':>7} {'':>6} {sum(shapes.values()):>5} "
          f"{total_jax:>8.1f} {total_torch:>9.1f} {total_torch / total_jax:>6.2f}")


if __name__ == "__main__":
    app.run(main)
