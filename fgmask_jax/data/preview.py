"""A labelled grid of a dataset's examples as the model sees them (the ``preview`` command)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from fgmask_jax.data import labels as labels_lib
from fgmask_jax.data import pipeline

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
