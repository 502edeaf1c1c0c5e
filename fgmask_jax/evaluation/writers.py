"""What a run writes beside its checkpoints: the config, metrics (JSONL and TensorBoard event
files, without TensorFlow), and a quieter log."""

from __future__ import annotations

import json
import logging as std_logging
import os

import jax
from absl import logging
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


def write_config(workdir: str, config) -> None:
    """Writes the resolved config to ``workdir/config.json`` (process 0 only)."""
    if jax.process_index() == 0:
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        with (epath.Path(workdir) / "config.json").open("w") as f:
            f.write(config.to_json_best_effort(indent=2))


def _quiet_libraries(record) -> bool:
    noisy = ("/orbax/", "/tensorflow_datasets/", "/array_record/", "/grain/")
    return record.levelno > std_logging.INFO or not any(n in record.pathname for n in noisy)


def quiet_library_logs() -> None:
    """Keeps the libraries' INFO chatter (Orbax, TFDS, ArrayRecord, grain) out of the log."""
    logging.get_absl_logger().addFilter(_quiet_libraries)
