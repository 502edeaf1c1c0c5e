"""Images/s of the Predictor (ours) beside PyTorch eval-mode inference of the same model.

  pip install -e '.[bench]'   # torch and torchvision, for the peer
  python benchmarks/predict.py --models=resnet18,resnet50,resnet152 --size=112 --batch_size=32

JAX runs `predict.Predictor` (the eval forward pass and softmax, jitted, fixed batch) of a
multi-task model with freshly initialised weights, twice: on prepared uint8 arrays
("arrays": model only) and on JPEG files (112 px stored at 160 px, "files": read, decode,
square crop and resize included, in its threads). PyTorch runs torchvision's model of the
same architecture with one linear head per task under ``torch.inference_mode()``, in
eval mode, on the same prepared arrays. The ratio is JAX arrays images/s over PyTorch
images/s: above 1, ours is faster. Without torch, its columns say n/a.
"""

from __future__ import annotations

import os
import tempfile
import time

import cv2
import jax
import numpy as np
from absl import app, flags

from fgmask_jax import config_lib, inference, runs

_MODELS = flags.DEFINE_list("models", ["resnet18", "resnet50", "resnet152"], "Models.")
_SIZE = flags.DEFINE_integer("size", 112, "Input side in pixels.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per model call.")
_IMAGES = flags.DEFINE_integer("images", 128, "Timed images per row (after one warm-up batch).")
_PEER = flags.DEFINE_bool("peer", True, "Also time PyTorch (needs torch and torchvision).")

TASKS = ("age_group", "gender", "expression")


def make_predictor(model: str) -> inference.Predictor:
    c = config_lib.neural_config(f"model={model},size={_SIZE.value}", tasks=TASKS)
    net = runs.make_model(c)
    x = jax.numpy.zeros((1, c.image_size, c.image_size, 3))
    variables = jax.jit(lambda key: net.init(key, x, train=False))(jax.random.key(0))
    return inference.Predictor.from_variables(c, variables, batch_size=_BATCH.value)


def write_jpegs(images: np.ndarray, folder: str) -> list[str]:
    paths = []
    for i, img in enumerate(images):
        path = os.path.join(folder, f"{i:05d}.jpg")
        big = cv2.resize(img, (160, 160), interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(path, cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def time_arrays(predictor: inference.Predictor, images: np.ndarray) -> float:
    predictor.probabilities(images[: predictor.batch_size])  # compile
    start = time.perf_counter()
    predictor.probabilities(images)
    return len(images) / (time.perf_counter() - start)


def time_files(predictor: inference.Predictor, paths: list[str]) -> float:
    list(inference.predict_files(predictor, paths[: predictor.batch_size]))
    start = time.perf_counter()
    rows = list(inference.predict_files(predictor, paths))
    assert not any(r["error"] for r in rows)
    return len(paths) / (time.perf_counter() - start)


def time_torch(model: str, images: np.ndarray) -> float:
    import torch
    import torchvision

    torch.set_num_threads(os.cpu_count())
    trunk = getattr(torchvision.models, model)()
    width = trunk.fc.in_features
    trunk.fc = torch.nn.Identity()
    heads = torch.nn.ModuleDict({t: torch.nn.Linear(width, n) for t, n in
                                 {"age_group": 4, "gender": 2, "expression": 3}.items()})
    net = torch.nn.ModuleDict({"trunk": trunk, "heads": heads}).eval().to(
        memory_format=torch.channels_last)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    b = _BATCH.value

    def run(batch: np.ndarray):
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        f = net["trunk"](x)
        return {t: torch.softmax(h(f), -1) for t, h in net["heads"].items()}

    with torch.inference_mode():
        run(images[:b])
        start = time.perf_counter()
        for i in range(0, len(images), b):
            run(images[i : i + b])
        return len(images) / (time.perf_counter() - start)


def main(argv):
    del argv
    peer = _PEER.value
    if peer:
        try:
            import torch  # noqa: F401
            import torchvision  # noqa: F401
        except ImportError:
            print("torch/torchvision not installed: PyTorch columns are n/a "
                  "(pip install -e '.[bench]')")
            peer = False
    n, size = _IMAGES.value, _SIZE.value
    images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    print(f"JAX on {jax.devices()[0].device_kind}; {size} px, batch {_BATCH.value}, "
          f"{n} timed images per row")
    print(f"{'model':<10} {'JAX arrays':>11} {'JAX files':>10} {'torch':>8} {'ratio':>6}"
          "   (images/s)")
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(images, folder)
        for model in _MODELS.value:
            predictor = make_predictor(model)
            ours = time_arrays(predictor, images)
            files = time_files(predictor, paths)
            if peer:
                theirs = time_torch(model, images)
                tail = f"{theirs:>8.1f} {ours / theirs:>6.2f}"
            else:
                tail = f"{'n/a':>8} {'n/a':>6}"
            print(f"{model:<10} {ours:>11.1f} {files:>10.1f} {tail}", flush=True)


if __name__ == "__main__":
    app.run(main)
