"""Images/s of the input pipeline: read, decode + resize + augment + batch, at 112 px by default.

  python benchmarks/input_pipeline.py --data_dir=DIR [--image_size=112] [--batch_size=64]

Builds synthetic_masked_faces into DIR first if it is missing. Like is compared with like:
every compared row decodes JPEG bytes read from the dataset's files.
  ours, N workers     our host chain (read, decode, square crop, resize, batch) with N
                      grain decoding processes (0: in the main process), then the jitted
                      augmentation (flip, scale-crop, colour jitter) on the device
  peer, N processes   the same work written plainly with OpenCV and numpy, augmentation
                      on the host, in N processes of a multiprocessing pool (0: in the
                      main process)
The ratio is ours over the peer with the same number of processes. Reported apart, and
compared with nothing: the whole-dataset mode's on-device gather, which decodes nothing
while it is timed (the images were decoded once before), only gathers and augments.
"""

from __future__ import annotations

import multiprocessing
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
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "Worker process counts to time (each "
                             "for grain and for the peer).")


def _time(batches, n: int, batch: int, finish) -> float:
    """Images/s over ``n`` batches after one warm-up batch; ``finish`` waits for a batch."""
    it = iter(batches)
    jax.block_until_ready(finish(next(it)))
    start = time.perf_counter()
    for _ in range(n):
        out = finish(next(it))
    jax.block_until_ready(out)
    return n * batch / (time.perf_counter() - start)


_peer_source = None  # the dataset, opened once per peer process


def _open_peer_source(dataset: str, data_dir: str) -> None:
    global _peer_source
    _peer_source = pipeline.open_split(dataset, "train", data_dir)


def _peer_batch(job: tuple[np.ndarray, int, int]) -> np.ndarray:
    """Read, decode, crop, resize, flip and jitter one batch with OpenCV and numpy:
    float32[B, size, size, 3] in [0, 255]."""
    indices, size, seed = job
    rng = np.random.default_rng(seed)
    images = []
    for record in _peer_source.__getitems__([int(i) for i in indices]):
        img = cv2.cvtColor(cv2.imdecode(np.frombuffer(record["image"], np.uint8),
                                        cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        h, w = img.shape[:2]
        side = min(h, w)
        img = img[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]
        crop = int(side * rng.uniform(0.85, 1.0))
        y, x = rng.integers(0, side - crop + 1, 2)
        img = cv2.resize(img[y:y + crop, x:x + crop], (size, size),
                         interpolation=cv2.INTER_LINEAR)
        if rng.random() < 0.5:
            img = img[:, ::-1]
        images.append(np.clip(img.astype(np.float32) * rng.uniform(0.8, 1.2), 0, 255))
    return np.stack(images)


def peer_rate(indices: np.ndarray, workers: int) -> float:
    """Images/s of `_peer_batch` over --batches batches, in ``workers`` processes (0: here)."""
    batch, n = _BATCH.value, _BATCHES.value
    order = np.random.default_rng(0).permutation(np.resize(indices, (n + 1) * batch))
    jobs = [(order[i * batch:(i + 1) * batch], _SIZE.value, i) for i in range(n + 1)]
    setup = (_DATASET.value, _DATA_DIR.value)
    if workers == 0:
        _open_peer_source(*setup)
        return _time(map(_peer_batch, jobs), n, batch, lambda x: x)
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_open_peer_source, initargs=setup) as pool:
        return _time(pool.imap(_peer_batch, jobs), n, batch, lambda x: x)


def main(argv):
    del argv
    build_data.build(_DATASET.value, _DATA_DIR.value)
    source = pipeline.open_split(_DATASET.value, "train", _DATA_DIR.value)
    indices = np.arange(len(source))
    size, batch, n = _SIZE.value, _BATCH.value, _BATCHES.value
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    augment = jax.jit(lambda key, x: pipeline.augment(key, x))
    key = jax.random.key(0)

    def augment_host(b):
        return augment(key, jax.device_put(b["image"], sharding))

    rows = []
    for workers in map(int, _WORKERS.value):
        ds = pipeline.train_batches(source, indices, global_batch=batch, image_size=size, seed=0)
        ours = _time(pipeline.iterate(ds, workers=workers), n, batch, augment_host)
        rows.append((workers, ours, peer_rate(indices, workers)))

    data = jax.device_put(pipeline.load_all(source, indices, size, workers=0)["image"])
    order = pipeline.batch_order(indices, global_batch=batch, seed=0)
    gather_augment = jax.jit(lambda key, data, ix: pipeline.augment(key, data[ix]))
    gather = _time(pipeline.iterate(order), n, batch, lambda ix: gather_augment(key, data, ix))

    print(f"\n{_DATASET.value} train, {size} px, batch {batch}, {n} batches per row, "
          f"{jax.devices()[0].platform}; every row decodes JPEG")
    print(f"{'processes':>9} {'ours img/s':>11} {'peer img/s':>11} {'ratio':>6}")
    for workers, ours, peer in rows:
        print(f"{workers:>9} {ours:>11.0f} {peer:>11.0f} {ours / peer:>6.2f}")
    print(f"on-device gather + augment, decoding nothing (images decoded before timing): "
          f"{gather:.0f} img/s, not compared")


if __name__ == "__main__":
    app.run(main)
