"""Metric writers: JSONL (one object per line) and TensorBoard event files (no TensorFlow)."""

from __future__ import annotations

import json
import os

import jax
from etils import epath
from tensorboardX import SummaryWriter


class MetricWriter:
    """Writes scalars to ``workdir/metrics.jsonl`` and ``workdir/tensorboard/``; process 0 only."""

    def __init__(self, workdir: str):
        self.active = jax.process_index() == 0
        if self.active:
            epath.Path(workdir).mkdir(parents=True, exist_ok=True)
            # Append: a resumed run continues the same file.
            self._jsonl = (epath.Path(workdir) / "metrics.jsonl").open("a")
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.active:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
        self._jsonl.flush()
        for name, value in scalars.items():
            self._tb.add_scalar(name, value, int(step))
        self._tb.flush()

    def close(self) -> None:
        if self.active:
            self._jsonl.close()
            self._tb.close()
