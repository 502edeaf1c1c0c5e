"""What a run writes beside its checkpoints: the config, metrics (JSONL and TensorBoard event
files, without TensorFlow), per-image predictions, and a quieter log."""

from __future__ import annotations

import json
import logging as std_logging
import os

import jax
import numpy as np
from absl import logging
from etils import epath
from tensorboardX import SummaryWriter

from fgmask_jax import errors


class MetricWriter:
    """Writes scalars to ``workdir/metrics.jsonl`` and ``workdir/tensorboard/``; process 0 only."""

    def __init__(self, workdir: str):
        self.workdir = workdir
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

    def close_after_failure(self) -> None:
        """`close`, when the run is failing already: a failure to close (a full disk) is
        logged, so that it does not hide the run's own error."""
        try:
            self.close()
        except OSError as e:
            logging.warning("closing the metric files in %s failed too: %s", self.workdir, e)


def write_config(workdir: str, config) -> None:
    """Writes the resolved config to ``workdir/config.json`` (process 0 only)."""
    if jax.process_index() == 0:
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))


def write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` whole or not at all: a temporary file beside it, then a
    rename, so that a reader (or a crash) never meets half a file. Files that other
    commands read as markers (results.json, config.json, report.md) are written so."""
    target = epath.Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    temporary.replace(target)


def read_json(path: str) -> dict:
    """The JSON object in ``path``; {} if there is no such file."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_json(path: str, value) -> None:
    """Writes ``value`` to ``path`` whole or not at all (`write_text`)."""
    write_text(path, json.dumps(value, indent=1))


def write_predictions(path: str, outputs: dict, tasks) -> None:
    """Saves per-image test outputs as .npz (atomically), the file the study's person
    bootstrap reads: ``subject_id``, ``label_<task>``, ``pred_<task>`` (int64[N]), and where
    ``outputs`` has them, ``index`` (each image's index in its split, int64[N]) and
    ``logits_<task>`` (float32[N, classes])."""
    arrays = {k: np.asarray(outputs[k], np.int64) for k in ("index", "subject_id")
              if k in outputs}
    for task in tasks:
        arrays[f"label_{task}"] = np.asarray(outputs[f"label_{task}"], np.int64)
        arrays[f"pred_{task}"] = np.asarray(outputs[f"pred_{task}"], np.int64)
        if f"logits_{task}" in outputs:
            arrays[f"logits_{task}"] = np.asarray(outputs[f"logits_{task}"], np.float32)
    target = epath.Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")  # as `write_text`
    with temporary.open("wb") as f:
        np.savez(f, **arrays)
    temporary.replace(target)


_NOISY = ("/orbax/", "/tensorflow_datasets/", "/array_record/", "/grain/",
          "/jax/_src/xla_bridge.py", "/matplotlib/")


def _quiet_libraries(record) -> bool:
    if logging.get_verbosity() >= logging.DEBUG or not any(n in record.pathname
                                                           for n in _NOISY):
        return True
    if record.levelno <= std_logging.INFO:
        return False
    if "/tensorflow_datasets/" in record.pathname and record.getMessage().startswith(
            "Variant folder"):  # a dataset not built yet: the build says so itself
        return False
    # Orbax's background savers log each failed write of a full disk with its traceback;
    # the command's own line says it once (errors.DiskFullError).
    return not ("/orbax/" in record.pathname and (
        errors.disk_full(record.exc_info[1] if record.exc_info else None)
        or "No space left" in record.getMessage()))


def quiet_library_logs() -> None:
    """Keeps the libraries' INFO chatter (Orbax, TFDS, ArrayRecord, grain, JAX's search for
    a TPU, matplotlib's font cache) out of the log, and Orbax's tracebacks of a full disk,
    which the command reports in one line; ``--verbosity=1`` shows them."""
    # On absl's handler: it also prints the records of libraries that use Python's logging.
    if _quiet_libraries not in logging.get_absl_handler().filters:
        logging.get_absl_handler().addFilter(_quiet_libraries)
