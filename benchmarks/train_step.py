"""Images/s of the multi-task train step, JAX (ours) beside the same model and step in PyTorch.

  pip install -e '.[bench]'   # torch and torchvision, for the peer
  python benchmarks/train_step.py --models=cnn,resnet18,resnet50 --sizes=64 --batch_sizes=32
  python benchmarks/train_step.py --models=resnet18 --sizes=64 --nopeer --kernels=xla
  python benchmarks/train_step.py --models=resnet50 --sizes=50 --nopeer --freeze=stem,layer1,layer2

What makes the comparison fair:
- Same device, same count: JAX on a mesh of the first --devices devices (one by default),
  PyTorch on one device, cuda:0 when JAX's default backend is gpu, else the CPU. More
  devices time JAX alone (the PyTorch columns say n/a).
- Same model, heads included: ours is `config_lib.neural_config("model=NAME,size=S")`
  (one linear head per task; the study CNN's heads read conv3, conv2 and conv1 for age,
  gender and expression, its `head_depths`); PyTorch's is torchvision's trunk of the same
  architecture (the CNN and resnet_tiny written out) under heads built from the same config
  fields (`head_hidden`, `head_depths`, `dropout`, `loss_weights`): `torch_model`.
- Same step: our real `train.Steps` (normalisation inside, augmentation configured to do
  nothing) against forward, summed cross-entropies, backward and SGD with Nesterov momentum
  0.9 and weight decay 5e-5 (optax's add_decayed_weights + sgd is torch's SGD weight_decay).
- Same dtype: --dtype=auto is bfloat16 on accelerators, float32 on CPU; PyTorch runs under
  bfloat16 autocast (AMP) where ours computes in bfloat16.
- PyTorch in its best ordinary form: channels_last model and inputs, `cudnn.benchmark` on
  GPU; on CPU, OpenMP threads that wait passively (OMP_WAIT_POLICY below) and the faster of
  one thread per core and a single thread (the "threads" column: on a shared machine one
  thread was up to 10x faster); and a second column with the module `torch.compile`d
  (compilation not timed; where it fails, e.g. no C++ compiler for the CPU backend, the
  column says n/a and the reason is printed). JAX takes GPU memory as it needs it
  (XLA_PYTHON_CLIENT_PREALLOCATE=false), so that PyTorch in the same process finds room.
- Same clock: each side's rate is the batch over the median of --steps steps, each timed
  alone up to a sync (`jax.block_until_ready`, `torch.cuda.synchronize`), after --warmup.
The ratio is JAX images/s over the faster PyTorch column: above 1, ours is faster.
--kernels forces the conv and max-pool kernels (config.kernels): auto is cpu on a CPU
backend, xla elsewhere. --freeze adds a JAX-only table: the step with those trunk parts
frozen beside the same step with nothing frozen.

The functions are importable (benchmarks/gpu_check.py uses them): the flags are defined
only when this file runs as a command.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from fgmask_jax import config_lib, models, runs, train

TASKS = {"age_group": 4, "gender": 2, "expression": 3}
# PyTorch's OpenMP threads spin while they wait; where other processes share the cores,
# that made its CPU steps 3-20x slower on a 2-core machine. Passive waiting is read when
# torch loads (lazily, below); a value already set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# JAX would otherwise take 75% of a GPU's memory when its backend starts, before PyTorch runs.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def load_note() -> str:
    """The machine's 1-minute load average beside its cores: other work shares them."""
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def step_config(model: str, size: int, batch: int, *, dtype: str = "auto",
                kernels: str = "auto", recipe: str = "default",
                freeze: str | None = None) -> ml_collections.ConfigDict:
    """The multi-task config of one row: ``model=NAME,size=S,recipe=R``, batch, dtype and
    kernels set, augmentation doing nothing; ``freeze`` (None: the recipe's) overrides."""
    c = config_lib.neural_config(f"model={model},size={size},recipe={recipe}",
                                 tasks=tuple(TASKS))
    c.batch_size, c.dtype, c.kernels, c.warmup_epochs = batch, dtype, kernels, 0.0
    if freeze is not None:
        c.freeze = freeze
    c.augment.update(flip=False, min_scale=1.0, color_jitter=0.0)
    return c


def random_batch(batch: int, size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {"image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
           "mask": np.ones(batch, bool)}
    out.update({t: rng.integers(0, n, batch).astype(np.int32) for t, n in TASKS.items()})
    return out


def median_rate(step: Callable[[], None], sync: Callable[[], None], batch: int,
                steps: int, warmup: int) -> float:
    """Images/s: ``batch`` over the median of ``steps`` calls of ``step``, each timed up to
    ``sync()``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    sync()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        seconds.append(time.perf_counter() - start)
    return batch / statistics.median(seconds)


def jax_steps(config, devices=None) -> train.Steps:
    """Our real jitted steps of ``config`` over a mesh of ``devices`` (default: the first)."""
    tx, _ = train.make_optimizer(config, steps_per_epoch=100, total_steps=1000)
    mesh = train.make_mesh(jax.devices()[:1] if devices is None else devices)
    return train.Steps(runs.make_model(config), tx, config, mesh)


def jax_rate(config, devices=None, steps: int = 20, warmup: int = 3) -> float:
    """Images/s of `train.Steps.train` on one device-resident batch of random images."""
    jitted = jax_steps(config, devices)
    state = jitted.init(jax.random.key(0))
    data = jax.device_put(random_batch(config.batch_size, config.image_size), jitted.data)
    metrics = None

    def step():
        nonlocal state, metrics
        state, metrics = jitted.train(state, data)

    # The metrics include the updated parameters' norm: when they are ready, so is the step.
    return median_rate(step, lambda: jax.block_until_ready(metrics), config.batch_size,
                       steps, warmup)


def torch_device() -> str:
    """PyTorch's device for a comparison: cuda when JAX's default backend is gpu, else cpu."""
    return "cuda" if jax.default_backend() == "gpu" else "cpu"


def torch_trunk(model: str):
    """torchvision's trunk of ``model`` (features out, classifier dropped) and its feature
    widths, one per level: the study CNN gives three levels, as ours does."""
    import torch
    import torchvision
    from torch import nn

    if model == "cnn":
        class SmallCNN(nn.Module):  # models/cnn.py: each level's max before its pool
            def __init__(self):
                super().__init__()
                self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 3, padding=1) for c_in, c_out
                                           in zip((3, 10, 20), (10, 20, 30), strict=True))

            def forward(self, x):
                levels = []
                for i, conv in enumerate(self.convs):
                    if i:
                        x = nn.functional.max_pool2d(x, 2)
                    x = nn.functional.elu(conv(x))
                    levels.append(torch.amax(x, dim=(2, 3)))
                return tuple(levels)

        return SmallCNN(), (10, 20, 30)
    if model == "resnet_tiny":  # models/resnet.py's ResNetTiny: a stem and one 8-filter block
        block = torchvision.models.resnet.BasicBlock(8, 8)
        return nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8),
                             nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1), block,
                             nn.AdaptiveAvgPool2d(1), nn.Flatten()), (8,)
    if model == "vgg16":
        net = torchvision.models.vgg16()
        net.classifier = net.classifier[:-1]  # up to fc7, its ReLU and dropout, as ours
        return net, (4096,)
    net = getattr(torchvision.models, model)()
    width = net.fc.in_features
    net.fc = nn.Identity()
    return net, (width,)


def torch_model(config):
    """The PyTorch twin of ``runs.make_model(config)``: torchvision's trunk and exactly our
    heads (``head_hidden``: Linear + ReLU + Dropout + Linear, else one Linear; each task
    reading the level ``head_depths`` names, else the top). Returns {task: logits}."""
    from torch import nn

    trunk, widths = torch_trunk(config.model)
    depths = dict(config.head_depths or {})

    class MultiTask(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = trunk
            self.levels = {t: depths.get(t, len(widths)) - 1 for t in config.tasks}
            self.heads = nn.ModuleDict()
            for task, n in runs.num_classes(config).items():
                width = widths[self.levels[task]]
                self.heads[task] = (nn.Sequential(
                    nn.Linear(width, config.head_hidden), nn.ReLU(),
                    nn.Dropout(config.dropout), nn.Linear(config.head_hidden, n))
                    if config.head_hidden else nn.Linear(width, n))

        def forward(self, x):
            features = self.trunk(x)
            features = features if isinstance(features, tuple) else (features,)
            return {t: head(features[self.levels[t]]) for t, head in self.heads.items()}

    return MultiTask()


def torch_rate(config, *, compile: bool = False, threads: int | None = None, steps: int = 20,
               warmup: int = 3) -> float:
    """Images/s of the same step in PyTorch on `torch_device()` (see the module's docstring),
    on ``threads`` CPU threads (None: one per core).

    Raises:
      ValueError: the config trains something this twin does not (an optimizer other than
        SGD, frozen parts).
      Exception: whatever ``torch.compile`` raises where it cannot compile.
    """
    import torch

    if config.optimizer != "sgd" or config.freeze or config.clip_norm:
        raise ValueError("the PyTorch twin trains with plain SGD, nothing frozen, no clipping")
    device = torch_device()
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(threads or os.cpu_count())
    torch.manual_seed(0)
    net = torch_model(config).to(device, memory_format=torch.channels_last)
    forward = torch.compile(net) if compile else net
    opt = torch.optim.SGD(net.parameters(), lr=config.learning_rate * config.batch_size / 256,
                          momentum=config.momentum, nesterov=True,
                          weight_decay=config.weight_decay)
    b = random_batch(config.batch_size, config.image_size)
    # NHWC memory seen as NCHW: channels_last already.
    images = torch.from_numpy(b["image"]).to(device).permute(0, 3, 1, 2)
    labels = {t: torch.from_numpy(b[t]).long().to(device) for t in config.tasks}
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1) * 255
    bf16 = runs.compute_dtype(config) == jnp.bfloat16

    def step():
        x = ((images.float() - mean) / std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(x)
        loss = sum(config.loss_weights[t] * torch.nn.functional.cross_entropy(
            z.float(), labels[t]) for t, z in logits.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return median_rate(step, sync, config.batch_size, steps, warmup)


@dataclasses.dataclass(frozen=True)
class PeerRates:
    eager: float | None  # PyTorch images/s (None: not measured)
    compiled: float | None  # the same, torch.compile'd
    threads: int | None  # CPU threads of both (None: on a GPU, or not measured)
    note: str = ""  # why a column is missing


def peer_rates(config, *, compile: bool = True, steps: int = 20, warmup: int = 3) -> PeerRates:
    """PyTorch's rates of ``config``'s step. On CPU, eager PyTorch runs on every core and on
    one thread, and the faster counts (compiled on the same count): where other processes
    share the cores, its many small fork-join ops lost up to 10x on two threads here."""
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        return PeerRates(None, None, None,
                         "torch/torchvision not installed (pip install -e '.[bench]')")
    choices = [None] if torch_device() == "cuda" else sorted({os.cpu_count(), 1}, reverse=True)
    eager, threads = max((torch_rate(config, threads=t, steps=steps, warmup=warmup), t)
                         for t in choices)
    if not compile:
        return PeerRates(eager, None, threads)
    try:
        compiled = torch_rate(config, compile=True, threads=threads, steps=steps, warmup=warmup)
    except Exception as e:  # any compiler failure makes the column n/a
        return PeerRates(eager, None, threads, compile_failure(e))
    return PeerRates(eager, compiled, threads)


def compile_failure(error: Exception) -> str:
    """One line: why torch.compile could not run."""
    first = (str(error).strip().splitlines() or [""])[0][:160]
    return f"torch.compile failed: {type(error).__name__}: {first}"


def _cell(x: float | None, width: int) -> str:
    return f"{'n/a':>{width}}" if x is None else f"{x:>{width}.1f}"


def main(argv):
    del argv
    f = flags.FLAGS
    n = f.devices
    devices = jax.devices()[:n]
    peer = f.peer and n == 1
    rows = [(m, int(s), int(b)) for m in f.models for s in f.sizes for b in f.batch_sizes]
    print(f"JAX on {len(devices)} x {devices[0].device_kind}, kernels={f.kernels} "
          f"({models.resolve_kernels(f.kernels)}), dtype={f.dtype}; PyTorch on "
          f"{torch_device() if peer else 'n/a'}; rate: batch / median of {f.steps} steps "
          f"after {f.warmup} warm-up; {load_note()}")
    if f.peer and not peer:
        print(f"PyTorch runs on one device: --devices={n} times JAX alone")
    print(f"{'model':<11} {'size':>5} {'batch':>6} {'JAX img/s':>10} {'torch img/s':>12} "
          f"{'compiled':>9} {'threads':>8} {'ratio':>6}")
    notes = set()
    for model, size, batch in rows:
        c = step_config(model, size, batch, dtype=f.dtype, kernels=f.kernels)
        ours = jax_rate(c, devices, f.steps, f.warmup)
        theirs = PeerRates(None, None, None)
        if peer:
            theirs = peer_rates(c, compile=f.compile, steps=f.steps, warmup=f.warmup)
            notes.add(theirs.note)
        best = max((r for r in (theirs.eager, theirs.compiled) if r), default=None)
        ratio = f"{ours / best:>6.2f}" if best else f"{'n/a':>6}"
        print(f"{model:<11} {size:>5} {batch:>6} {ours:>10.1f} {_cell(theirs.eager, 12)} "
              f"{_cell(theirs.compiled, 9)} {theirs.threads or '':>8} {ratio}", flush=True)
    for note in sorted(notes - {""}):
        print(f"n/a: {note}")
    if f.freeze:
        print(f"\nJAX with {f.freeze} frozen (ratio: over nothing frozen, same run)")
        print(f"{'model':<11} {'size':>5} {'batch':>6} {'frozen':>10} {'not frozen':>12} "
              f"{'ratio':>6}")
        for model, size, batch in rows:
            free = jax_rate(step_config(model, size, batch, dtype=f.dtype, kernels=f.kernels),
                            devices, f.steps, f.warmup)
            frozen = jax_rate(step_config(model, size, batch, dtype=f.dtype,
                                          kernels=f.kernels, freeze=f.freeze),
                              devices, f.steps, f.warmup)
            print(f"{model:<11} {size:>5} {batch:>6} {frozen:>10.1f} {free:>12.1f} "
                  f"{frozen / free:>6.2f}", flush=True)


if __name__ == "__main__":  # flags only as a command: gpu_check.py imports the functions
    flags.DEFINE_list("models", ["cnn", "resnet18", "resnet50", "resnet152"],
                      "Models (cnn, resnet_tiny, resnet18..152, vgg16).")
    flags.DEFINE_list("sizes", ["64", "112"], "Input sides in pixels.")
    flags.DEFINE_list("batch_sizes", ["32"], "Global batch sizes.")
    flags.DEFINE_integer("steps", 20, "Timed steps per row and side; the median counts.",
                         lower_bound=1)
    flags.DEFINE_integer("warmup", 3, "Untimed steps before them (compilation included).",
                         lower_bound=1)
    flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"],
                      "Compute dtype: auto is bfloat16 on accelerators, float32 on CPU.")
    flags.DEFINE_enum("kernels", "auto", list(config_lib.KERNELS),
                      "Conv and max-pool kernels (config.kernels): auto is cpu on a CPU "
                      "backend, xla elsewhere.")
    flags.DEFINE_integer("devices", 1, "JAX devices (the first N); over 1, JAX alone.",
                         lower_bound=1)
    flags.DEFINE_bool("peer", True, "Also time PyTorch (needs torch and torchvision).")
    flags.DEFINE_bool("compile", True, "Also time the PyTorch module torch.compile'd.")
    flags.DEFINE_string("freeze", "", "Trunk parts frozen in a second table of JAX rows "
                        "(e.g. stem,layer1,layer2: the study's recipe), each beside the "
                        "same step with nothing frozen.")
    app.run(main)
