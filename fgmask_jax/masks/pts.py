"""FG-NET landmark files (``.pts``): 68 points in iBUG-68 order, as ``(x, y)`` pixels.

A file looks like::

  version: 1
  n_points:  68
  {
  116.894 281.226
  ...                 (68 lines ``x y``)
  }
"""

from __future__ import annotations

import os

import numpy as np

from fgmask_jax import errors

N_POINTS = 68


def format_pts(landmarks: np.ndarray, newline: str = "\n") -> str:
    """The text of a ``.pts`` file holding ``landmarks`` (float[N, 2], ``(x, y)``)."""
    lines = ["version: 1", f"n_points:  {len(landmarks)}", "{"]
    lines += [f"{x:.3f} {y:.3f}" for x, y in landmarks]
    return newline.join([*lines, "}", ""])


def read_pts(path: str | os.PathLike) -> np.ndarray:
    """Landmarks of one ``.pts`` file -> float32[68, 2] as ``(x, y)`` pixel coordinates.

    Raises:
      FileNotFoundError: the file does not exist.
      errors.DataError: (a ValueError) naming the file, when it is malformed (no
        ``n_points`` header, no ``{ ... }`` block, a line that is not two numbers) or holds
        other than 68 points.
    """
    name = os.fspath(path)
    with open(name, "rb") as f:
        return parse_pts(f.read(), name)


def parse_pts(data: bytes, name: str) -> np.ndarray:
    """`read_pts` of a file's bytes (from an archive, say); ``name`` names it in errors."""
    # latin-1 decodes any byte: a garbled file then fails below with its line named.
    text = data.decode("latin-1").replace("\r\n", "\n").replace("\r", "\n")  # as open() reads
    lines = [(number, line.strip()) for number, line in enumerate(text.split("\n"), start=1)]
    lines = [(number, line) for number, line in lines if line]
    opening = next((i for i, (_, line) in enumerate(lines) if line == "{"), None)
    closing = next((i for i, (_, line) in enumerate(lines) if line == "}"), None)
    if opening is None or closing is None or closing < opening:
        raise errors.DataError(
            f"{name}: not a .pts file: expected a header, then the points between a line "
            "'{' and a line '}'"
        )
    declared = _declared_points(name, lines[:opening])
    points = [_parse_point(name, number, line) for number, line in lines[opening + 1 : closing]]
    if len(points) != declared:
        raise errors.DataError(
            f"{name}: declares n_points: {declared} but holds {len(points)} points"
        )
    if declared != N_POINTS:
        raise errors.DataError(
            f"{name}: holds {declared} points; masks need the {N_POINTS} iBUG-68 landmarks "
            "of FG-NET's .pts files"
        )
    return np.asarray(points, dtype=np.float32)


def _declared_points(name: str, header: list[tuple[int, str]]) -> int:
    """The ``n_points`` value of a header given as (line number, text) pairs."""
    for number, line in header:
        key, colon, value = line.partition(":")
        if colon and key.strip().lower() == "n_points":
            try:
                return int(value)
            except ValueError:
                raise errors.DataError(
                    f"{name}:{number}: n_points must be an integer, got {value.strip()!r}"
                ) from None
    raise errors.DataError(f"{name}: no 'n_points:' line before the '{{' that opens the points")


def _parse_point(name: str, number: int, line: str) -> tuple[float, float]:
    """``"x y"`` -> (x, y); the error names the file and line."""
    fields = line.split()
    try:
        if len(fields) != 2:
            raise ValueError
        return float(fields[0]), float(fields[1])
    except ValueError:
        raise errors.DataError(
            f"{name}:{number}: expected two numbers 'x y', got {line!r}"
        ) from None
