"""The one wrapper over Orbax: save every N steps, keep K, resume from the latest good one.

A checkpoint holds the train state (a pytree of jax.Arrays) and a small JSON
``meta`` dict: the data-iterator position and the early-stopping record. Orbax
writes each step into a temporary folder and renames it when complete, so a
save cut short is never listed; a listed checkpoint whose files were damaged
afterwards fails to restore, and `restore_latest` then moves it aside (renamed
``<step>.damaged-<time>``, kept for inspection; every process agrees first) and
falls back to the one before it, with a warning. Saving a step that is already
there replaces it (a resumed run passes again the steps after the one it resumed
from). A save that fails (in the background too) stops the run at the next
`save`, `check` or `wait` with a `CheckpointError` naming the folder, and saying
so when its disk is full. Every process calls every method (multi-host).
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import serialization, traverse_util
from jax.experimental import multihost_utils

from fgmask_jax.errors import CheckpointError, ConfigError, DiskFullError, disk_full

# Failures of a restore that are the machine's, not the checkpoint's: never set aside.
_NOT_DAMAGE = (MemoryError, TimeoutError, ConnectionError, PermissionError)


class CheckpointMismatchError(ConfigError):
    """A checkpoint of another structure or shapes than the config's state."""


class Checkpointer:
    """Checkpoints of one run in ``directory`` (a local path or a ``gs://`` URL)."""

    def __init__(self, directory: str, max_to_keep: int | None = 3):
        if "://" not in directory:  # Orbax takes absolute paths only
            directory = os.path.abspath(os.path.expanduser(directory))
        self.directory = directory
        # Processes meet at named barriers while saving; the folder's name keeps two
        # managers of one run (latest and best) that save the same step apart.
        prefix = epath.Path(directory).name
        self._manager = ocp.CheckpointManager(
            directory,
            # Named handlers: the metadata of a step (`restore_here`) is then readable.
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                create=True,
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix=prefix
                ),
            ),
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, meta: dict) -> None:
        """Saves ``state`` and ``meta`` at ``step`` (asynchronously; `wait` to finish),
        replacing a checkpoint of that step if there is one."""
        self.check()
        try:
            if step in self._manager.all_steps():
                self._manager.delete(step)
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
        except Exception as e:  # noqa: BLE001 - the save before it failed, or this one did
            raise self._save_failed(e) from e

    def restore(self, step: int, abstract_state) -> tuple:
        """(state, meta) at ``step``; ``abstract_state`` gives shapes, dtypes and shardings."""
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["meta"])

    def restore_here(self, step: int, sharding: jax.sharding.Sharding | None = None) -> tuple:
        """(state, meta) at ``step`` on this process's devices, whatever devices and mesh
        saved it: every array is restored with ``sharding`` (default: on the first local
        device). A run trained on 8 GPUs or a pod slice is read back this way on a laptop."""
        sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        metadata = self._manager.item_metadata(step)["state"]
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
            dict(getattr(metadata, "tree", metadata)), is_leaf=lambda m: hasattr(m, "shape"))
        return self.restore(step, abstract)

    def restore_latest(self, abstract_state) -> tuple | None:
        """(state, meta) of the newest checkpoint that restores, or None if there is none.

        A damaged checkpoint is set aside with a warning naming it, and the one before is
        tried; if every one is damaged, the error says which and how to start over.
        Nothing is set aside for a failure that is not the checkpoint's: a state of
        another structure or shape (`errors.ConfigError`, naming the first difference), or
        the machine's (memory, time-outs, the network, permissions: raised as it is).
        """
        steps = self.all_steps()
        failures = []
        for step in reversed(steps):
            path = os.path.join(self.directory, str(step))
            # Checked first: Orbax may restore an array of another shape without a word.
            if difference := self._difference(step, abstract_state):
                raise CheckpointMismatchError(
                    f"{path} holds a state of another shape than this config's "
                    f"({difference}): rerun with the run's config (its config.json), or "
                    "give a new --workdir")
            try:
                restored, reason = self.restore(step, abstract_state), None
            except _NOT_DAMAGE:
                raise
            except Exception as e:  # noqa: BLE001 - what is left is the checkpoint's damage
                restored, reason = None, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            # Every process decides alike: set aside if any of them found it damaged.
            if _restored_everywhere(reason is None):
                return restored
            reason = reason or "another process could not restore it"
            failures.append(f"{path}: {reason}")
            aside = self._set_aside(step)
            logging.warning("Checkpoint %s does not restore (%s); moved it to %s and "
                            "trying the one before.", path, reason, aside)
        if failures:
            raise CheckpointError(
                "No checkpoint in {} restores:\n  {}\nMove the folder away to start over.".format(
                    self.directory, "\n  ".join(failures)
                )
            )
        return None

    def _difference(self, step: int, abstract_state) -> str | None:
        """The first named array (parameters, BatchNorm statistics: nested dicts) whose
        presence or shape differs between the checkpoint at ``step`` and ``abstract_state``,
        in words; None if they agree, or if the step's metadata cannot be read (then the
        checkpoint is damaged). Sequences (an optimizer's state) are left to Orbax."""
        try:
            metadata = self._manager.item_metadata(step)["state"]
            saved = _named_arrays(dict(getattr(metadata, "tree", metadata)))
        except Exception:  # noqa: BLE001 - unreadable metadata: damage, not a mismatch
            return None
        wanted = _named_arrays(serialization.to_state_dict(abstract_state), like=saved)
        for key in [k for k, v in wanted.items()  # PRNG keys are saved as their raw data
                    if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key)]:
            wanted.pop(key)
            saved.pop(key, None)
        for key in sorted(set(saved) | set(wanted), key=str):
            name = "/".join(map(str, key))
            if key not in saved:
                return f"{name} {tuple(wanted[key].shape)} is not in the checkpoint"
            if key not in wanted:
                return f"the checkpoint's {name} {tuple(saved[key].shape)} is not in the state"
            if tuple(saved[key].shape) != tuple(wanted[key].shape):
                return (f"{name} is {tuple(saved[key].shape)} there, "
                        f"{tuple(wanted[key].shape)} here")
        return None

    def _set_aside(self, step: int) -> str:
        """Renames a damaged step folder so that it is kept but never listed again."""
        path = epath.Path(self.directory) / str(step)
        aside = path.parent / f"{step}.damaged-{int(time.time())}"
        if jax.process_index() == 0:
            path.rename(aside)
        multihost_utils.sync_global_devices(f"set_aside_{step}")
        self._manager.reload()
        return str(aside)

    def delete_after(self, step: int) -> list[int]:
        """Deletes the checkpoints newer than ``step``; returns their steps."""
        return self._delete([s for s in self.all_steps() if s > step])

    def delete_all_but(self, step: int) -> list[int]:
        """Deletes every checkpoint but the one of ``step``; returns their steps."""
        return self._delete([s for s in self.all_steps() if s != step])

    def _delete(self, steps: list[int]) -> list[int]:
        for s in steps:
            self._manager.delete(s)
        return steps

    def check(self) -> None:
        """Raises `CheckpointError` if a background save has failed."""
        try:
            self._manager.check_for_errors()
        except Exception as e:  # noqa: BLE001 - any failure of a save stops the run
            raise self._save_failed(e) from e

    def wait(self) -> None:
        """Blocks until the saves in flight are written; `CheckpointError` if one failed."""
        try:
            self._manager.wait_until_finished()
            self._manager.check_for_errors()
        except Exception as e:  # noqa: BLE001
            raise self._save_failed(e) from e

    def _save_failed(self, e: Exception) -> CheckpointError:
        last = f"step {self.latest_step()}" if self.latest_step() is not None else "none yet"
        if disk_full(e):
            return DiskFullError(
                f"the disk holding {self.directory} is full: a checkpoint could not be "
                f"written. Free space there, then rerun the same command: it resumes from the "
                f"last checkpoint written ({last}).")
        return CheckpointError(
            f"saving a checkpoint in {self.directory} failed ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:300]}). Check that the folder is writable and has "
            f"space, then rerun the same command: it resumes from the last checkpoint written "
            f"({last})."
        )

    def close(self) -> None:
        self.wait()
        self._manager.close()


def _restored_everywhere(restored: bool) -> bool:
    """Whether every process restored its part (the same answer on every process)."""
    if jax.process_count() == 1:
        return restored
    return bool(multihost_utils.process_allgather(np.int32(restored)).min())


def abstract_like(state):
    """Shapes, dtypes and shardings of ``state``, for restoring into the same layout."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )


def _named_arrays(tree: dict, like: dict | None = None) -> dict[tuple, object]:
    """{path: array} of the arrays under ``tree``'s nested dicts, and of its top-level
    arrays; with ``like`` (another result of this function), only under the top-level keys
    it has."""
    out = {}
    for top, sub in tree.items():
        if like is not None and not any(k[0] == top for k in like):
            continue
        if isinstance(sub, dict):
            out.update({(top, *k): v for k, v in traverse_util.flatten_dict(sub).items()
                        if hasattr(v, "shape")})
        elif hasattr(sub, "shape"):
            out[(top,)] = sub
    return out
