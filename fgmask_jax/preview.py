"""A look at the data: a labelled grid of examples as the model sees them, as a PNG.

  python -m fgmask_jax.preview --dataset=synthetic_masked_faces --data_dir=DIR --out=grid.png
"""

from __future__ import annotations

from absl import flags

from fgmask_jax import cli, errors

_DATASET = flags.DEFINE_string("dataset", "synthetic_masked_faces", "TFDS dataset name.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default ~/tensorflow_datasets).")
_SPLIT = flags.DEFINE_string("split", "train", "Split to show.")
_OUT = flags.DEFINE_string("out", "preview.png", "PNG file to write.")
_ROWS = flags.DEFINE_integer("rows", 6, "Rows of the grid.")
_COLS = flags.DEFINE_integer("cols", 8, "Columns of the grid.")
_SIZE = flags.DEFINE_integer("image_size", 112, "Side of each image, as the model gets it.")
_SEED = flags.DEFINE_integer("seed", 0, "Which examples: a seeded random sample.")

def main(argv):
    if len(argv) > 1:
        raise errors.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    from fgmask_jax.data.preview import write_preview  # imports TFDS: after the flags

    path = write_preview(_DATASET.value, cli.absolute(_DATA_DIR.value), _SPLIT.value,
                         cli.absolute(_OUT.value),
                         rows=_ROWS.value, cols=_COLS.value, image_size=_SIZE.value,
                         seed=_SEED.value)
    print(f"Wrote {path}")


if __name__ == "__main__":
    cli.run(main, prog="fgmask_jax.preview")
