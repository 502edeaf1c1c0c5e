"""Paths as every layer takes them."""

from __future__ import annotations

import os


def absolute(path: str | None) -> str | None:
    """``path`` made absolute (``~`` expanded); URLs (gs://...), None and "" stay as they are.

    Orbax, TFDS and grain workers may run elsewhere than the current directory: they get
    absolute paths only. Commands make every path absolute once, at entry.
    """
    if not path or "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))
