"""LBP feature extraction: our jitted, batched JAX code against scikit-image.

Both compute the study's feature, a 256-bin histogram of default LBP codes
(8 neighbours, radius 1, interpolated diagonals), on the same grayscale images:
ours as `lbp.study_histogram` over the whole batch in one jitted call (after a
warm-up call that compiles it), scikit-image as ``local_binary_pattern`` +
``numpy.bincount`` image by image. Prints images per second and the ratio:

  python benchmarks/baselines.py --num_images=512 --image_size=112
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from skimage.feature import local_binary_pattern

from fgmask_jax.baselines import lbp


def best_of(fn, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of fn(), in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=512)
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.num_images, args.image_size, args.image_size, 3),
                          dtype=np.uint8)
    gray = np.asarray(lbp.grayscale(jnp.asarray(images)))
    device_images = jax.device_put(images)

    def ours():
        return lbp.study_histogram(device_images).block_until_ready()

    def scikit_image():
        out = np.empty((len(gray), 256), np.float32)
        for i, g in enumerate(gray):
            codes = local_binary_pattern(g, 8, 1, "default")[1:-1, 1:-1].astype(np.int64)
            out[i] = np.bincount(codes.ravel(), minlength=256) / codes.size
        return out

    # Same features (a check, and the warm-up that compiles ours).
    np.testing.assert_allclose(np.asarray(ours()), scikit_image(), atol=1e-6)
    t_ours = best_of(ours, args.repeats)
    t_skimage = best_of(scikit_image, args.repeats)

    n = args.num_images
    print(f"LBP 256-bin histograms, {n} images of {args.image_size}x{args.image_size} "
          f"(best of {args.repeats}; JAX on {jax.devices()[0].platform}, "
          f"{jax.device_count()} device(s))")
    print(f"| {'method':<40} | {'images/s':>10} |")
    print(f"|{'-' * 42}|{'-' * 12}:|")
    print(f"| {'fgmask_jax lbp.study_histogram (jit)':<40} | {n / t_ours:>10,.0f} |")
    print(f"| {'skimage local_binary_pattern + bincount':<40} | {n / t_skimage:>10,.0f} |")
    print(f"ratio (ours / scikit-image): {t_skimage / t_ours:.1f}x")


if __name__ == "__main__":
    main()
