"""Images/s of the multi-task train step, JAX (ours) beside the same model and step in PyTorch.

  pip install -e '.[bench]'   # torch and torchvision, for the peer
  python benchmarks/train_step.py --models=resnet18,resnet50 --sizes=64,112 --batch_sizes=32
  python benchmarks/train_step.py --models=resnet18 --sizes=64 --nopeer --kernels=xla

Both sides run one optimiser step of a multi-task model (trunk + one linear head per task,
cross-entropy per task, SGD with Nesterov momentum, weight decay) on random uint8 images,
normalised inside the step; augmentation is off on both sides. JAX runs our real
`train.train_step`, jitted over every local device; PyTorch runs torchvision's model of the
same architecture (channels_last, bfloat16 autocast on CUDA with --dtype=bfloat16). The ratio
is JAX images/s over PyTorch images/s: above 1, ours is faster. --kernels forces the conv and
max-pool kernels (config.kernels): auto is cpu on a CPU backend, xla elsewhere.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import app, flags

from fgmask_jax import config_lib, models, runs, train

_MODELS = flags.DEFINE_list("models", ["cnn", "resnet18", "resnet50", "resnet152"], "Models.")
_SIZES = flags.DEFINE_list("sizes", ["64", "112"], "Input sides in pixels.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["32"], "Global batch sizes.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per row (after 2 warm-up steps).")
_DTYPE = flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"],
                           "Compute dtype: auto is bfloat16 on accelerators, float32 on CPU.")
_KERNELS = flags.DEFINE_enum("kernels", "auto", list(config_lib.KERNELS),
                              "Conv and max-pool kernels (config.kernels): auto is cpu on a CPU "
                              "backend, xla elsewhere.")
_PEER = flags.DEFINE_bool("peer", True, "Also time PyTorch (needs torch and torchvision).")
_FREEZE = flags.DEFINE_string("freeze", "", "Trunk parts frozen in a second table of JAX rows "
                              "(e.g. stem,layer1,layer2: the study's recipe), each beside "
                              "the same step with nothing frozen.")

TASKS = {"age_group": 4, "gender": 2, "expression": 3}


def random_batch(batch: int, size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {"image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
           "mask": np.ones(batch, bool)}
    out.update({t: rng.integers(0, n, batch).astype(np.int32) for t, n in TASKS.items()})
    return out


def time_jax(model: str, size: int, batch: int, freeze: str = "") -> float:
    c = config_lib.neural_config(f"model={model},size={size}", tasks=tuple(TASKS))
    c.batch_size, c.dtype, c.warmup_epochs, c.freeze = batch, _DTYPE.value, 0.0, freeze
    c.kernels = _KERNELS.value
    c.augment.update(flip=False, min_scale=1.0, color_jitter=0.0)
    tx, _ = train.make_optimizer(c, steps_per_epoch=100, total_steps=1000)
    steps = train.Steps(runs.make_model(c), tx, c, train.make_mesh())
    state = steps.init(jax.random.key(0))
    data = jax.device_put(random_batch(batch, size), steps.data)
    for _ in range(2):
        state, metrics = steps.train(state, data)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(_STEPS.value):
        state, metrics = steps.train(state, data)
    jax.block_until_ready(metrics)
    return _STEPS.value * batch / (time.perf_counter() - start)


def time_torch(model: str, size: int, batch: int) -> float:
    import torch
    import torchvision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(os.cpu_count())
    if model == "cnn":
        trunk = torch.nn.Sequential(
            torch.nn.Conv2d(3, 10, 3, padding=1), torch.nn.ELU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(10, 20, 3, padding=1), torch.nn.ELU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(20, 30, 3, padding=1), torch.nn.ELU(),
            torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten())
        width = 30
    elif model == "vgg16":
        net = torchvision.models.vgg16()
        net.classifier = net.classifier[:-1]
        trunk, width = net, 4096
    else:
        trunk = getattr(torchvision.models, model)()
        width = trunk.fc.in_features
        trunk.fc = torch.nn.Identity()
    heads = torch.nn.ModuleDict({t: torch.nn.Linear(width, n) for t, n in TASKS.items()})
    net = torch.nn.ModuleDict({"trunk": trunk, "heads": heads}).to(
        device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=5e-5)
    b = random_batch(batch, size)
    images = torch.from_numpy(b["image"]).to(device).permute(0, 3, 1, 2)
    labels = {t: torch.from_numpy(b[t]).long().to(device) for t in TASKS}
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1) * 255
    bf16 = device == "cuda" and _DTYPE.value != "float32"

    def step():
        x = ((images.float() - mean) / std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            features = net["trunk"](x)
            loss = sum(torch.nn.functional.cross_entropy(net["heads"][t](features).float(),
                                                         labels[t]) for t in TASKS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(_STEPS.value):
        step()
    sync()
    return _STEPS.value * batch / (time.perf_counter() - start)


def main(argv):
    del argv
    device = jax.devices()[0].device_kind
    kernels = models.resolve_kernels(_KERNELS.value)
    print(f"JAX on {jax.device_count()} x {device}; {_STEPS.value} timed steps per row; "
          f"kernels={_KERNELS.value} ({kernels})")
    print(f"{'model':<10} {'size':>5} {'batch':>6} {'JAX img/s':>10} {'torch img/s':>12} "
          f"{'ratio':>6}")
    for model in _MODELS.value:
        for size in map(int, _SIZES.value):
            for batch in map(int, _BATCHES.value):
                ours = time_jax(model, size, batch)
                peer = time_torch(model, size, batch) if _PEER.value else float("nan")
                print(f"{model:<10} {size:>5} {batch:>6} {ours:>10.1f} {peer:>12.1f} "
                      f"{ours / peer:>6.2f}", flush=True)
    if _FREEZE.value:
        print(f"\nJAX with {_FREEZE.value} frozen (ratio: over nothing frozen, same run)")
        print(f"{'model':<10} {'size':>5} {'batch':>6} {'frozen':>10} {'not frozen':>12} "
              f"{'ratio':>6}")
        for model in _MODELS.value:
            for size in map(int, _SIZES.value):
                for batch in map(int, _BATCHES.value):
                    free = time_jax(model, size, batch)
                    frozen = time_jax(model, size, batch, _FREEZE.value)
                    print(f"{model:<10} {size:>5} {batch:>6} {frozen:>10.1f} {free:>12.1f} "
                          f"{frozen / free:>6.2f}", flush=True)


if __name__ == "__main__":
    app.run(main)
