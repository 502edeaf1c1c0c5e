"""The errors a user can cause, and the ones that stop a run as designed.

Commands (`cli.run`) print a `UserError` as one line naming the file or key and the
way out, and exit 2; a `RunStopped` as one line, exit 1. Every other exception is a
bug and keeps its traceback. The user errors also derive from the built-in error
they refine (``ValueError``, ``FileNotFoundError``), so library callers may catch
either.

This module imports nothing of the project: every layer may raise these.
"""

import errno


class UserError(Exception):
    """A mistake in a command's input; the message names it and the way out."""


class ConfigError(UserError, ValueError):
    """A config file, variant, key or value that does not exist or does not fit."""


class DataError(UserError, ValueError):
    """A dataset, image, label or file that cannot be read as asked."""


class WeightsError(UserError, ValueError):
    """A weights file that cannot be mapped onto the asked trunk, exactly."""


class RunNotFoundError(UserError, FileNotFoundError, ValueError):
    """A workdir, fold or export folder that holds no run usable as asked (no config or
    best checkpoint, a classical method's run, a leave-persons-out run without a fold)."""


class WorkdirLockedError(UserError):
    """A workdir that another live run holds (its ``run.lock``); the message names that run
    (start, host, pid, command) and the file to delete if it no longer runs."""


class RunStopped(Exception):
    """A run that stopped as designed (its reason is one line); exit 1."""


class CheckpointError(RunStopped, RuntimeError):
    """Checkpoints that cannot be written or read; the message names the folder."""


class DiskFullError(CheckpointError):
    """A checkpoint could not be written for want of space; nothing more can be written,
    so the command stops at once after its one line."""


def disk_full(error: BaseException | None) -> bool:
    """Whether ``error`` (or an error it wraps) is "no space left on device"."""
    for _ in range(10):  # the chain of causes, as far as it is sensible to look
        if error is None:
            return False
        if getattr(error, "errno", None) == errno.ENOSPC or "No space left" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


class NonFiniteError(RunStopped, FloatingPointError):
    """A step produced a non-finite loss or parameters; the message names the last good
    checkpoint."""
