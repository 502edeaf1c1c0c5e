"""A look at the data: a labelled grid of examples as the model sees them, as a PNG.

  python -m fgmask_jax.preview --dataset=synthetic_masked_faces --data_dir=DIR --out=grid.png
"""

from __future__ import annotations

import os

import numpy as np
from absl import flags
from PIL import Image, ImageDraw

from fgmask_jax import cli
from fgmask_jax.data import labels as labels_lib
from fgmask_jax.data import pipeline

_DATASET = flags.DEFINE_string("dataset", "synthetic_masked_faces", "TFDS dataset name.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default ~/tensorflow_datasets).")
_SPLIT = flags.DEFINE_string("split", "train", "Split to show.")
_OUT = flags.DEFINE_string("out", "preview.png", "PNG file to write.")
_ROWS = flags.DEFINE_integer("rows", 6, "Rows of the grid.")
_COLS = flags.DEFINE_integer("cols", 8, "Columns of the grid.")
_SIZE = flags.DEFINE_integer("image_size", 112, "Side of each image, as the model gets it.")
_SEED = flags.DEFINE_integer("seed", 0, "Which examples: a seeded random sample.")

_CAPTION = 30  # pixels of text under each image


def grid(images: np.ndarray, captions: list[list[str]], cols: int) -> Image.Image:
    """uint8[N, S, S, 3] and a few caption lines each -> one labelled grid image."""
    n, s = len(images), images.shape[1]
    rows = -(-n // cols)
    cell_h = s + _CAPTION
    canvas = Image.new("RGB", (cols * s, rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (image, lines) in enumerate(zip(images, captions, strict=True)):
        x, y = (i % cols) * s, (i // cols) * cell_h
        canvas.paste(Image.fromarray(image), (x, y))
        for j, line in enumerate(lines):
            draw.text((x + 2, y + s + 1 + 10 * j), line, fill="black")
    return canvas


def write_preview(dataset: str, data_dir: str | None, split: str, out: str, *, rows: int = 6,
                  cols: int = 8, image_size: int = 112, seed: int = 0) -> str:
    """Writes a rows x cols grid of random examples of ``split`` to ``out``; returns ``out``."""
    source = pipeline.open_split(dataset, split, data_dir)
    n = min(rows * cols, len(source))
    indices = np.sort(np.random.default_rng(seed).choice(len(source), n, replace=False))
    batch = pipeline.load_all(source, indices, image_size)
    captions = [
        [
            f"#{batch['subject_id'][i]} age {batch['age'][i]} "
            f"{labels_lib.GENDERS[batch['gender'][i]]}",
            labels_lib.EXPRESSIONS[batch["expression"][i]],
        ]
        for i in range(n)
    ]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    grid(batch["image"], captions, cols).save(out)
    return out


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    path = write_preview(_DATASET.value, cli.absolute(_DATA_DIR.value), _SPLIT.value,
                         cli.absolute(_OUT.value),
                         rows=_ROWS.value, cols=_COLS.value, image_size=_SIZE.value,
                         seed=_SEED.value)
    print(f"Wrote {path}")


if __name__ == "__main__":
    cli.run(main, prog="fgmask_jax.preview")
