"""The input pipeline: grain over ``tfds.data_source``, one chain per split.

Host side (grain, numpy, PIL): read the encoded image, decode, square it and
resize it, batch. Batches carry ``uint8`` images (4x less to move than float32);
augmentation and normalisation run on the device, inside the jitted step
(`augment`, `normalize`), so that the host only decodes.

Aspect ratio: an image is centre-cropped to a square on its shorter side, then
resized to ``image_size`` x ``image_size`` (area-averaging when shrinking), so
faces are never stretched.

Every process reads its own contiguous slice of every global batch, so the
global batch that ``jax.make_array_from_process_local_data`` assembles is the
same for any number of processes, and the batch at step ``t`` depends only on
``(seed, t)``: that is the iterator state a checkpoint keeps.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import os
from collections.abc import Iterator, Sequence

import cv2
import grain
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from fgmask_jax.data import labels as labels_lib

LABEL_KEYS = ("age", "subject_id", *labels_lib.TASKS)
# Per-channel statistics used for normalisation (ImageNet's, in [0, 1] units).
MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)


def data_dir(config) -> str:
    """config.data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return config.get("data_dir") or os.environ.get(
        "TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets")
    )


def split_names(protocol: str) -> tuple[str, str]:
    """(train, test) split names of a protocol; lopo's folds are drawn from every image;
    photo (75/25 of source photos) differs from study where images share photos
    (``fgnet_mask``, ``fgnet_paired``, ``synthetic_masked_faces/paired``)."""
    return {"study": ("train", "test"), "subject": ("subject_train", "subject_test"),
            "photo": ("photo_train", "photo_test"),
            "lopo": ("train+test", "train+test")}[protocol]


def unmasked(split: str) -> str:
    """The split of the unmasked twins of ``split``'s photos (``synthetic_masked_faces/
    paired``, ``fgnet_paired``): ``subject_test`` -> ``unmasked_subject_test``."""
    return "+".join(f"unmasked_{s}" for s in split.split("+"))


def open_split(dataset: str, split: str, data_dir: str | None):
    """``tfds.data_source`` over one split, images left encoded (decoded in `decode_image`)."""
    return tfds.data_source(
        dataset,
        split=split,
        data_dir=data_dir,
        download=False,
        decoders={"image": tfds.decode.SkipDecoding()},
    )


def read_labels(source) -> dict[str, np.ndarray]:
    """Every example's labels (not images) as int32 arrays: {key: int32[N]} for
    `LABEL_KEYS`, and ``photo_id`` where the dataset has it."""
    records = source.__getitems__(list(range(len(source))))
    keys = LABEL_KEYS + (("photo_id",) if records and "photo_id" in records[0] else ())
    return {k: np.asarray([r[k] for r in records], np.int32) for k in keys}


def read_mask_kinds(source) -> np.ndarray | None:
    """str[N]: every example's ``mask_kind`` (``none`` for an unmasked twin), or None when
    the dataset does not record it (FGNET-MASK)."""
    records = source.__getitems__(list(range(len(source))))
    if not records or "mask_kind" not in records[0]:
        return None
    return np.asarray([k.decode() if isinstance(k, bytes) else str(k)
                       for k in (r["mask_kind"] for r in records)])


def mask_regions(source, indices: Sequence[int], image_size: int) -> np.ndarray | None:
    """bool[N, S, S]: the pixels of each model input (``S`` = ``image_size``) under its
    mask, from the dataset's ``landmarks`` and ``mask_kind`` (`masks.mask_region`, then
    the images' own `square_resize`); where a surgical mask would sit on an unmasked
    twin. None when the dataset has no landmarks (FGNET-MASK).
    """
    from fgmask_jax import masks  # here: only this reader needs the mask geometry

    records = source.__getitems__([int(i) for i in indices])
    if not records or "landmarks" not in records[0]:
        return None
    regions = []
    for r in records:
        kind = r["mask_kind"].decode() if isinstance(r["mask_kind"], bytes) else r["mask_kind"]
        region = masks.mask_region(r["landmarks"], read_image(r["image"]).shape[:2],
                                   "surgical" if kind == "none" else kind)
        regions.append(square_resize(region.astype(np.uint8) * 255, image_size) >= 128)
    return np.stack(regions)


def _imdecode(data: bytes) -> np.ndarray | None:
    """Encoded bytes -> uint8[H, W, 3] BGR, or None if they do not decode.

    OpenCV applies EXIF orientation, drops alpha, makes grayscale 3 channels and
    scales 16-bit samples to 8 bits (>> 8).
    """
    if not data:
        return None
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def square_resize(img: np.ndarray, image_size: int) -> np.ndarray:
    """uint8[H, W, C] -> uint8[image_size, image_size, C]: centre square crop, then resize.

    Works on any channel order (each channel is cropped and resized alike).
    """
    h, w = img.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    img = img[top : top + side, left : left + side]
    interpolation = cv2.INTER_AREA if side > image_size else cv2.INTER_LINEAR
    return cv2.resize(img, (image_size, image_size), interpolation=interpolation)


def read_image(data: bytes) -> np.ndarray:
    """Encoded image (JPEG, PNG, BMP, WebP, ...) -> uint8[H, W, 3] RGB at full size.

    Decoded exactly as `decode_image` decodes (OpenCV: EXIF orientation applied,
    alpha dropped, grayscale to 3 channels, 16-bit scaled to 8-bit).

    Raises:
      ValueError: the bytes are empty, truncated or not an image.
    """
    img = _imdecode(data)
    if img is None:
        raise ValueError("empty file" if not data else
                         "not a readable image (truncated, damaged or not an image format)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode_image(data: bytes, image_size: int) -> np.ndarray:
    """Encoded image -> uint8[image_size, image_size, 3] RGB: centre square crop, then resize.

    OpenCV decodes (1.6x PIL's rate here); grayscale sources come out as 3 channels.
    `square_resize` crops and resizes (before the colour conversion: less to convert).
    """
    img = _imdecode(data)
    if img is None:
        raise ValueError("an example's image bytes do not decode; rebuild the dataset")
    return cv2.cvtColor(square_resize(img, image_size), cv2.COLOR_BGR2RGB)


@dataclasses.dataclass(frozen=True)
class _LoadBatch:
    """Reads and decodes a batch of example indices: {image: uint8[B,S,S,3], label: int32[B]...,
    index: the examples' indices (int32[B], -1 for a pad), mask: False for a pad}."""

    source: Sequence
    image_size: int

    def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        valid = indices >= 0  # -1 pads the last evaluation batch
        records = self.source.__getitems__([int(i) for i in np.where(valid, indices, 0)])
        batch = {
            "image": np.stack([decode_image(r["image"], self.image_size) for r in records]),
            **{k: np.asarray([r[k] for r in records], np.int32) for k in LABEL_KEYS},
        }
        batch["index"] = np.where(valid, indices, -1).astype(np.int32)
        batch["mask"] = valid
        return batch


def local_rows(global_batch: int) -> slice:
    """This process's rows of a global batch."""
    count, index = jax.process_count(), jax.process_index()
    if global_batch % count:
        raise ValueError(
            f"batch_size {global_batch} does not divide among {count} processes: "
            "choose a multiple of the process count"
        )
    local = global_batch // count
    return slice(index * local, (index + 1) * local)


def batch_order(indices: np.ndarray, *, global_batch: int, seed: int) -> grain.MapDataset:
    """Infinite training order: item ``t`` is this process's int64[local_batch] part of batch ``t``.

    Each epoch is a fresh permutation of ``indices`` cut into
    ``len(indices) // global_batch`` batches (the remainder is dropped).
    """
    if len(indices) < global_batch:
        raise ValueError(
            f"the training split has {len(indices)} examples, fewer than batch_size "
            f"{global_batch}: lower config.batch_size"
        )
    rows = local_rows(global_batch)
    return (
        grain.MapDataset.source(np.asarray(indices))
        .seed(seed)
        .shuffle()
        .batch(global_batch, drop_remainder=True, batch_fn=lambda xs: np.asarray(xs)[rows])
        .repeat()
    )


def train_batches(
    source, indices: np.ndarray, *, global_batch: int, image_size: int, seed: int
) -> grain.MapDataset:
    """Infinite training batches over ``source[indices]`` in `batch_order`, decoded."""
    order = batch_order(indices, global_batch=global_batch, seed=seed)
    return order.map(_LoadBatch(source, image_size))


def eval_batches(
    source, indices: np.ndarray, *, global_batch: int, image_size: int
) -> grain.MapDataset:
    """Every example of ``source[indices]`` exactly once, in order, in padded batches.

    The last batch is padded with masked rows (``batch['mask']`` False), so every
    process runs the same number of steps and no example is counted twice.
    """
    padded = pad_rows(np.asarray(indices, np.int64), global_batch, fill=-1)
    return (
        grain.MapDataset.source(padded.reshape(-1, global_batch)[:, local_rows(global_batch)])
        .map(_LoadBatch(source, image_size))
    )


def pad_rows(array: np.ndarray, multiple: int, fill=None) -> np.ndarray:
    """``array`` with rows appended up to the next positive multiple of ``multiple`` (at
    least one batch), so that every batch has one shape and one compiled program serves
    them all: rows of ``fill``, or copies of the last row when ``fill`` is None. Callers
    drop or mask the padding."""
    array = np.asarray(array)
    pad = max(1, math.ceil(len(array) / multiple)) * multiple - len(array)
    if not pad:
        return array
    if fill is None:
        rows = np.repeat(array[-1:], pad, axis=0)
    else:
        rows = np.full((pad, *array.shape[1:]), fill, array.dtype)
    return np.concatenate([array, rows])


def iterate(
    dataset: grain.MapDataset, start: int = 0, workers: int = 0
) -> Iterator[dict[str, np.ndarray]]:
    """Host batches from item ``start`` on; ``workers`` > 0 decodes in that many processes."""
    ds = dataset.slice(slice(start, None)) if start else dataset
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
    if workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return iter(it)


def prefetch(items: Iterator, size: int = 2) -> Iterator:
    """Yields ``items`` in order, keeping ``size`` more already made. For host batches put
    on the devices (`to_global`), the transfers of the next ``size`` batches are under way
    while the step before them runs."""
    ahead = collections.deque(itertools.islice(items, size))
    while ahead:
        item = ahead.popleft()
        ahead.extend(itertools.islice(items, 1))
        yield item


def to_global(batch: dict[str, np.ndarray], sharding: jax.sharding.NamedSharding) -> dict:
    """Process-local numpy batch -> global jax.Arrays sharded along the batch."""
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in batch.items()
    }


def load_all(source, indices: np.ndarray, image_size: int, workers: int = 0) -> dict:
    """All of ``source[indices]``, decoded, in memory on this process (whole-dataset mode):
    {image, labels..., index: ``indices``}."""
    chunks = np.array_split(np.asarray(indices), max(1, math.ceil(len(indices) / 256)))
    ds = grain.MapDataset.source(chunks).map(_LoadBatch(source, image_size))
    loaded = list(iterate(ds, workers=workers))
    batch = {k: np.concatenate([c[k] for c in loaded]) for k in loaded[0]}
    del batch["mask"]
    return batch


# Whole-dataset mode uses at most this share of a device's free memory: the model, its
# optimiser state and the activations of a step need the rest.
DEVICE_MEMORY_SHARE = 0.25


def auto_workers(cpus: int | None = None) -> int:
    """Decoding processes for a host pipeline: half the cores, at most 8; none on 2 cores or
    fewer, where the step itself needs them."""
    if cpus is None:
        cpus = os.cpu_count() or 1
    return 0 if cpus <= 2 else min(cpus // 2, 8)


def free_memory(device: jax.Device) -> int:
    """Bytes free on ``device``: its allocator's limit less what is in use (GPU, TPU), or the
    host's available memory (CPU, whose devices share it)."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:  # Linux; elsewhere, assume it does not fit
        with open("/proc/meminfo") as f:
            lines = f.readlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * 1024
            # The CPU devices of one process share the host memory.
            return available // max(1, len(jax.local_devices()))
    return 0


def placement(config, num_images: int) -> tuple[bool, int, str]:
    """(data on device, decoding workers, why): ``config.data_on_device`` and
    ``config.workers`` when set, else decided here.

    The data goes on the device when ``num_images`` uint8 images of ``config.image_size``
    take at most `DEVICE_MEMORY_SHARE` of the free memory of this process's first device
    (every device holds a copy; in a cluster, the least free of any process decides, so
    that every process takes the same path). Otherwise `auto_workers` decode on the host.
    """
    size = num_images * config.image_size ** 2 * 3
    workers = auto_workers() if config.get("workers") is None else config.workers
    if config.get("data_on_device") is not None:
        on = bool(config.data_on_device)
        return on, workers, f"config.data_on_device={on}"
    free = free_memory(jax.local_devices()[0])
    if jax.process_count() > 1:  # in MiB: JAX's int32 would wrap bytes above 2 GiB
        free_mib = np.int32(min(free // 2**20, np.iinfo(np.int32).max))
        free = int(np.min(multihost_utils.process_allgather(free_mib))) * 2**20
    on = size <= DEVICE_MEMORY_SHARE * free
    why = (f"{num_images} images take {size / 2**20:,.0f} MiB, "
           f"{'within' if on else 'more than'} {DEVICE_MEMORY_SHARE:.0%} of the "
           f"{free / 2**30:,.1f} GiB free on {jax.local_devices()[0].platform}")
    return on, workers, why


def normalize(images: jax.Array, dtype=jnp.float32) -> jax.Array:
    """uint8[B, H, W, 3] -> dtype[B, H, W, 3], standardised per channel."""
    x = images.astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(MEAN_RGB)) / jnp.asarray(STDDEV_RGB)
    return x.astype(dtype)


def augment(
    rng: jax.Array,
    images: jax.Array,
    *,
    flip: bool = True,
    min_scale: float = 0.85,
    color_jitter: float = 0.2,
) -> jax.Array:
    """Random flip, scale-crop and colour jitter: uint8[B, H, W, 3] -> float32 in [0, 255].

    Scale-crop zooms into a random square of side ``s * H``, ``s ~ U(min_scale, 1)``,
    at a random position; colour jitter scales brightness, contrast and
    saturation by factors in ``1 +- color_jitter``. Runs on the device, per example.
    """
    b, h, w, _ = images.shape
    k_flip, k_scale, k_pos, k_bright, k_contrast, k_sat = jax.random.split(rng, 6)
    x = images.astype(jnp.float32)
    if flip:
        do_flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
        x = jnp.where(do_flip, x[:, :, ::-1], x)
    if min_scale < 1.0:
        scale = jax.random.uniform(k_scale, (b,), minval=min_scale, maxval=1.0)
        offset = jax.random.uniform(k_pos, (b, 2)) * (1.0 - scale)[:, None]

        def crop(img, s, off):
            # Output pixel p samples input at off*size + p*s: zoom by 1/s.
            return jax.image.scale_and_translate(
                img, (h, w, 3), (0, 1), jnp.array([1 / s, 1 / s]),
                -off * jnp.array([h, w]) / s, method="linear",
            )

        x = jax.vmap(crop)(x, scale, offset)
    if color_jitter > 0:
        def factor(key):
            return jax.random.uniform(
                key, (b, 1, 1, 1), minval=1 - color_jitter, maxval=1 + color_jitter
            )

        x = x * factor(k_bright)
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        x = (x - mean) * factor(k_contrast) + mean
        gray = x.mean(axis=-1, keepdims=True)
        x = (x - gray) * factor(k_sat) + gray
    return jnp.clip(x, 0.0, 255.0)
