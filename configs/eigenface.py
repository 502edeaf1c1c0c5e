"""Eigenface: PCA of grayscale faces (fitted on the training split) and a linear classifier.

  python -m fgmask_jax.main --config=configs/eigenface.py --workdir=DIR

Variants after a colon (comma-separated):
  data=fgnet_mask|synthetic|synthetic_paired|fgnet_paired
  protocol=study|subject|photo|lopo  size=112 (decoded image size)
  pixels=32 (faces are resized to pixels x pixels before the PCA)  components=100
  whiten  runlocal
  python -m fgmask_jax.main --config=configs/eigenface.py:data=synthetic,runlocal --workdir=DIR
"""

import ml_collections

from fgmask_jax.baselines import classical_config


def get_config(arg=None):
    c, v = classical_config(arg, "eigenface", size=112, pixels=32, components=100,
                            whiten=False)
    c.eigenface = ml_collections.ConfigDict(
        dict(pixels=v.pixels, components=v.components, whiten=bool(v.whiten))
    )
    if c.runlocal:
        c.eigenface.pixels = min(v.pixels, 24)
        c.eigenface.components = min(v.components, 30)
    return c
