"""Images/s of the input pipeline: decode + resize + augment + batch, at 112 px by default.

  python benchmarks/input_pipeline.py --data_dir=DIR [--image_size=112] [--batch_size=64]

Builds synthetic_masked_faces into DIR first if it is missing. Rows:
  grain, N workers   our host chain (read, decode, square crop, resize, batch) with N
                     decoding processes, then the jitted on-device augmentation
  on-device gather   whole-dataset mode: batches gathered and augmented on the device
  peer: OpenCV loop  the same work written plainly with cv2 and numpy in one process
The ratio column is each row's rate over the peer's.
"""

from __future__ import annotations

import time

import cv2
import jax
import numpy as np
from absl import app, flags

from fgmask_jax.data import build as build_data
from fgmask_jax.data import pipeline

_DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/fgmask_tfds", "TFDS data dir.")
_DATASET = flags.DEFINE_string("dataset", "synthetic_masked_faces", "Dataset to read.")
_SIZE = flags.DEFINE_integer("image_size", 112, "Output side in pixels.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_BATCHES = flags.DEFINE_integer("batches", 30, "Batches timed per row.")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "grain worker counts to time.")


def _time(batches, n: int, augment_fn) -> float:
    """Images/s over ``n`` batches after one warm-up batch."""
    it = iter(batches)
    jax.block_until_ready(augment_fn(next(it)))
    start = time.perf_counter()
    for _ in range(n):
        out = augment_fn(next(it))
    jax.block_until_ready(out)
    return n * _BATCH.value / (time.perf_counter() - start)


def _opencv_peer(source, indices, size: int, rng: np.random.Generator):
    """Read, decode, crop, resize, flip and jitter with OpenCV and numpy; yields batches."""
    for start in range(0, len(indices) - _BATCH.value + 1, _BATCH.value):
        images = []
        for i in indices[start:start + _BATCH.value]:
            data = source[int(i)]["image"]
            img = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                               cv2.COLOR_BGR2RGB)
            h, w = img.shape[:2]
            side = min(h, w)
            img = img[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]
            s = rng.uniform(0.85, 1.0)
            crop = int(side * s)
            y, x = rng.integers(0, side - crop + 1, 2)
            img = cv2.resize(img[y:y + crop, x:x + crop], (size, size),
                             interpolation=cv2.INTER_LINEAR)
            if rng.random() < 0.5:
                img = img[:, ::-1]
            img = img.astype(np.float32) * rng.uniform(0.8, 1.2)
            images.append(np.clip(img, 0, 255))
        yield np.stack(images)


def main(argv):
    del argv
    build_data.build(_DATASET.value, _DATA_DIR.value)
    source = pipeline.open_split(_DATASET.value, "train", _DATA_DIR.value)
    indices = np.arange(len(source))
    size, batch = _SIZE.value, _BATCH.value
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    augment = jax.jit(lambda key, x: pipeline.augment(key, x))
    key = jax.random.key(0)

    def augment_host(b):
        return augment(key, jax.device_put(b["image"], sharding))

    rows = []
    for workers in map(int, _WORKERS.value):
        ds = pipeline.train_batches(source, indices, global_batch=batch, image_size=size, seed=0)
        rate = _time(pipeline.iterate(ds, workers=workers), _BATCHES.value, augment_host)
        rows.append((f"grain, {workers} workers", rate))

    data = jax.device_put(pipeline.load_all(source, indices, size, workers=0)["image"])
    order = pipeline.batch_order(indices, global_batch=batch, seed=0)
    gather_augment = jax.jit(lambda key, data, ix: pipeline.augment(key, data[ix]))
    rows.append(("on-device gather", _time(pipeline.iterate(order), _BATCHES.value,
                                           lambda ix: gather_augment(key, data, ix))))

    rng = np.random.default_rng(0)
    peer = _time(_opencv_peer(source, np.concatenate([indices] * 4), size, rng),
                 _BATCHES.value, lambda x: x)

    print(f"\n{_DATASET.value} train, {size} px, batch {batch}, {jax.devices()[0].platform}")
    print(f"{'pipeline':<22} {'images/s':>10} {'ratio':>7}")
    for name, rate in rows:
        print(f"{name:<22} {rate:>10.0f} {rate / peer:>7.2f}")
    print(f"{'peer: OpenCV loop':<22} {peer:>10.0f} {1.0:>7.2f}")


if __name__ == "__main__":
    app.run(main)
