"""The errors a user can cause, and the ones that stop a run as designed.

Commands (`cli.run`) print a `UserError` as one line naming the file or key and the
way out, and exit 2; a `RunStopped` as one line, exit 1. Every other exception is a
bug and keeps its traceback. The user errors also derive from the built-in error
they refine (``ValueError``, ``FileNotFoundError``), so library callers may catch
either.

This module imports nothing: every layer may raise these.
"""


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


class NonFiniteError(RunStopped, FloatingPointError):
    """A step produced a non-finite loss or parameters; the message names the last good
    checkpoint."""
