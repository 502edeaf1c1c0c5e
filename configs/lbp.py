"""LBP: local binary pattern histograms and a linear classifier per task.

  python -m fgmask_jax.main --config=configs/lbp.py --workdir=DIR

Variants after a colon (comma-separated):
  data=fgnet_mask|synthetic|synthetic_paired|fgnet_paired
  protocol=study|subject|photo|lopo  size=112  runlocal
  variant=study|uniform (study: one 256-bin histogram of the whole image, as the
    study's MATLAB code; uniform: 59-bin uniform-pattern histograms per grid cell)
  sampling=circle|square (circle: scikit-image's interpolated diagonals;
    square: the integer diagonals of the study's 3x3 block)  grid=4 (uniform: 4x4 cells)
  python -m fgmask_jax.main --config=configs/lbp.py:data=synthetic,variant=uniform,runlocal \
      --workdir=DIR
"""

import ml_collections

from fgmask_jax.baselines import classical_config


def get_config(arg=None):
    c, v = classical_config(arg, "lbp", size=112, variant="study", sampling="circle", grid=4)
    if v.variant not in ("study", "uniform"):
        raise ValueError(f"config variant variant={v.variant!r} is not one of: study, uniform")
    if v.sampling not in ("circle", "square"):
        raise ValueError(f"config variant sampling={v.sampling!r} is not one of: circle, square")
    c.lbp = ml_collections.ConfigDict(
        dict(variant=v.variant, sampling=v.sampling, grid=(v.grid, v.grid))
    )
    return c
