"""Images/s of the Predictor (ours) beside PyTorch eval-mode inference of the same model.

  pip install -e '.[bench]'   # torch and torchvision, for the peer
  python benchmarks/predict.py --models=resnet18,resnet50,resnet152 --size=112 --batch_size=32

JAX runs `inference.Predictor` (the eval forward pass, softmax and energy score, jitted,
fixed batch, results copied to the host) of a multi-task model with freshly initialised
weights, in the config's compute dtype (bfloat16 on accelerators, float32 on CPU). PyTorch
runs the same model (`train_step.torch_model`: torchvision's trunk, exactly our heads) in
eval mode under ``torch.inference_mode()`` on the same device as JAX (cuda when JAX's
default backend is gpu), channels_last, bfloat16 autocast where JAX computes in bfloat16,
`cudnn.benchmark` on GPU, on CPU the faster of one thread per core and one thread (see
train_step.py), results copied to the host; and once more `torch.compile`d
(n/a, with the reason, where it cannot compile). Both take the same prepared uint8 arrays
from the host, batch by batch: each rate is the batch over the median of --batches batches,
after a warm-up batch. The ratio is JAX images/s over the faster PyTorch column: above 1,
ours is faster. "JAX files" (no peer) is the Predictor on JPEG files (the images stored at
160 px: read, decode, square crop and resize included, in its threads), over all of them.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import train_step  # benchmarks/: the PyTorch twin of our model
from absl import app, flags

from fgmask_jax import config_lib, inference, runs


def make_predictor(model: str, size: int, batch: int) -> inference.Predictor:
    c = config_lib.neural_config(f"model={model},size={size}", tasks=tuple(train_step.TASKS))
    net = runs.make_model(c)
    x = jnp.zeros((1, c.image_size, c.image_size, 3))
    variables = jax.jit(lambda key: net.init(key, x, train=False))(jax.random.key(0))
    return inference.Predictor.from_variables(c, variables, batch_size=batch)


def batch_rate(run, images: np.ndarray, batch: int, batches: int) -> float:
    """Images/s: ``batch`` over the median seconds of ``run(one batch)``, after a warm-up."""
    run(images[:batch])
    seconds = []
    for i in range(batches):
        start = time.perf_counter()
        run(images[i * batch:(i + 1) * batch])
        seconds.append(time.perf_counter() - start)
    return batch / statistics.median(seconds)


def predictor_rate(predictor: inference.Predictor, images: np.ndarray, batches: int) -> float:
    return batch_rate(predictor.outputs, images, predictor.batch_size, batches)


def files_rate(predictor: inference.Predictor, paths: list[str]) -> float:
    list(inference.predict_files(predictor, paths[: predictor.batch_size]))
    start = time.perf_counter()
    rows = list(inference.predict_files(predictor, paths))
    assert not any(r["error"] for r in rows)
    return len(paths) / (time.perf_counter() - start)


def torch_rate(model: str, images: np.ndarray, batch: int, batches: int,
               compile: bool = False, threads: int | None = None) -> float:
    """PyTorch's images/s of the same model, on ``threads`` CPU threads (None: one per core)."""
    import torch

    c = config_lib.neural_config(f"model={model},size={images.shape[1]}",
                                 tasks=tuple(train_step.TASKS))
    device = train_step.torch_device()
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(threads or os.cpu_count())
    net = train_step.torch_model(c).eval().to(device, memory_format=torch.channels_last)
    forward = torch.compile(net) if compile else net
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1) * 255
    bf16 = runs.compute_dtype(c) == jnp.bfloat16

    def run(x: np.ndarray):
        x = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float()
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(x)
        out = {t: torch.softmax(z.float(), -1) for t, z in logits.items()}
        energies = [-torch.logsumexp(z.float(), -1) for z in logits.values()]
        out["ood_score"] = sum(energies) / len(energies)
        return {k: v.cpu().numpy() for k, v in out.items()}  # on the host, as ours

    with torch.inference_mode():
        return batch_rate(run, images, batch, batches)


def write_jpegs(images: np.ndarray, folder: str) -> list[str]:
    paths = []
    for i, img in enumerate(images):
        path = os.path.join(folder, f"{i:05d}.jpg")
        big = cv2.resize(img, (160, 160), interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(path, cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def _cell(x: float | None, width: int) -> str:
    return f"{'n/a':>{width}}" if x is None else f"{x:>{width}.1f}"


def main(argv):
    del argv
    f = flags.FLAGS
    peer, note = f.peer, ""
    if peer:
        try:
            import torch  # noqa: F401
            import torchvision  # noqa: F401
        except ImportError:
            peer, note = False, "torch/torchvision not installed (pip install -e '.[bench]')"
    size, batch, batches = f.size, f.batch_size, f.batches
    images = np.random.default_rng(0).integers(0, 256, ((batches + 1) * batch, size, size, 3),
                                               dtype=np.uint8)
    print(f"JAX on {jax.devices()[0].device_kind}; PyTorch on "
          f"{train_step.torch_device() if peer else 'n/a'}; {size} px, batch {batch}; rate: "
          f"batch / median of {batches} batches; {train_step.load_note()}")
    print(f"{'model':<10} {'JAX arrays':>11} {'JAX files':>10} {'torch':>8} {'compiled':>9} "
          f"{'threads':>8} {'ratio':>6}   (images/s)")
    notes = {note}
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(images, folder)
        for model in f.models:
            predictor = make_predictor(model, size, batch)
            ours = predictor_rate(predictor, images, batches)
            files = files_rate(predictor, paths)
            eager = compiled = threads = None
            if peer:  # on CPU the faster of one thread per core and one thread (train_step)
                choices = ([None] if train_step.torch_device() == "cuda"
                           else sorted({os.cpu_count(), 1}, reverse=True))
                eager, threads = max((torch_rate(model, images, batch, batches, threads=t), t)
                                     for t in choices)
                if f.compile:
                    try:
                        compiled = torch_rate(model, images, batch, batches, compile=True,
                                              threads=threads)
                    except Exception as e:  # any compiler failure makes the column n/a
                        notes.add(train_step.compile_failure(e))
            best = max((r for r in (eager, compiled) if r), default=None)
            ratio = f"{ours / best:>6.2f}" if best else f"{'n/a':>6}"
            print(f"{model:<10} {ours:>11.1f} {files:>10.1f} {_cell(eager, 8)} "
                  f"{_cell(compiled, 9)} {threads or '':>8} {ratio}", flush=True)
    for n in sorted(notes - {""}):
        print(f"n/a: {n}")


if __name__ == "__main__":  # flags only as a command: gpu_check.py imports the functions
    flags.DEFINE_list("models", ["resnet18", "resnet50", "resnet152"], "Models.")
    flags.DEFINE_integer("size", 112, "Input side in pixels.")
    flags.DEFINE_integer("batch_size", 32, "Images per model call.")
    flags.DEFINE_integer("batches", 20, "Timed batches per column; the median counts.",
                         lower_bound=1)
    flags.DEFINE_bool("peer", True, "Also time PyTorch (needs torch and torchvision).")
    flags.DEFINE_bool("compile", True, "Also time the PyTorch model torch.compile'd.")
    app.run(main)
