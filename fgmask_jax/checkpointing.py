"""The one wrapper over Orbax: save every N steps, keep K, resume from the latest good one.

A checkpoint holds the train state (a pytree of jax.Arrays) and a small JSON
``meta`` dict: the data-iterator position and the early-stopping record. Orbax
writes each step into a temporary folder and renames it when complete, so a
save cut short is never listed; a listed checkpoint whose files were damaged
afterwards fails to restore, and `restore_latest` then falls back to the one
before it, with a warning. Every process calls every method (multi-host).
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
    """Checkpoints of one run in ``directory`` (a local path or a ``gs://`` URL)."""

    def __init__(self, directory: str, max_to_keep: int | None = 3):
        self.directory = directory
        self._manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, meta: dict) -> None:
        """Saves ``state`` and ``meta`` at ``step`` (asynchronously; `wait` to finish)."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state) -> tuple:
        """(state, meta) at ``step``; ``abstract_state`` gives shapes, dtypes and shardings."""
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["meta"])

    def restore_latest(self, abstract_state) -> tuple | None:
        """(state, meta) of the newest checkpoint that restores, or None if there is none.

        A damaged checkpoint is skipped with a warning naming it; if every one is
        damaged, the error says which and how to start over.
        """
        steps = self.all_steps()
        failures = []
        for step in reversed(steps):
            try:
                return self.restore(step, abstract_state)
            except Exception as e:  # noqa: BLE001 - any damage must fall back, not stop
                path = os.path.join(self.directory, str(step))
                logging.warning("Checkpoint %s does not restore (%s); trying the one before.",
                                path, e)
                failures.append(f"{path}: {type(e).__name__}: {e}")
        if failures:
            raise RuntimeError(
                "No checkpoint in {} restores:\n  {}\nMove the folder away to start over.".format(
                    self.directory, "\n  ".join(failures)
                )
            )
        return None

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(state):
    """Shapes, dtypes and shardings of ``state``, for restoring into the same layout."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
