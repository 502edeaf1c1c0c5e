"""Tiny Image: a 16x16 grayscale thumbnail (zero mean, unit norm) and k-NN per task.

  python -m fgmask_jax.main --config=configs/tiny_image.py --workdir=DIR

Variants after a colon (comma-separated):
  data=fgnet_mask|synthetic|synthetic_paired|fgnet_paired
  protocol=study|subject|photo|lopo  size=112 (decoded image size)
  tiny=16 (thumbnail side)  runlocal
  python -m fgmask_jax.main --config=configs/tiny_image.py:data=synthetic,runlocal --workdir=DIR
"""

import ml_collections

from fgmask_jax.baselines import classical_config


def get_config(arg=None):
    c, v = classical_config(arg, "tiny_image", size=112, tiny=16)
    c.tiny_image = ml_collections.ConfigDict(dict(size=v.tiny))
    c.classifier = "knn"
    c.grid = (1, 3, 5, 9, 15, 25)  # k
    if c.runlocal:
        c.grid = (1, 5)
    return c
