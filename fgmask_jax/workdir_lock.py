"""One run per workdir: ``WORKDIR/run.lock`` exists while a run writes there.

    with workdir_lock.held(workdir):
        ...  # train, write checkpoints and results

Two live runs in one workdir (a command launched twice, a job resubmitted while the old
one still runs) would write one set of checkpoints and results over each other. `held`
makes the second one stop at once with `errors.WorkdirLockedError`, whose one line names
the run that holds the workdir: when and on which host it started, its process id and
its command line.

The lock is the file ``WORKDIR/run.lock``, created atomically (``O_CREAT | O_EXCL``),
holding JSON: {host, pid, started, command}, and under SLURM {slurm_job, slurm_restart}.
It is removed when the block ends, however it ends (an exception, Ctrl-C, SIGTERM).
A run killed outright (SIGKILL, a lost node) leaves it behind; the next run takes it
over, with a warning naming the old holder, when the holder is known to be gone:

- it ran on this host and its process no longer exists (or it is this very process
  id, reused by a new process after a restart);
- it is an earlier start of this SLURM job (the same ``SLURM_JOB_ID``, a lower
  ``SLURM_RESTART_COUNT``): SLURM requeues a job only once its old start has ended;
- the file cannot be read (empty or partial: a run that died while writing it) and has
  not changed for `WRITE_GRACE_SECONDS`.

Otherwise (another host, a live process) the lock stands: the message says to delete
the file once that run no longer runs. Take-overs are serialised by a second file,
``run.lock.takeover``, so that of two runs taking over the same stale lock one wins and
the other is refused.

Nested `held` on the same workdir in one process is a no-op: a process is one run.

Several processes (a multi-host job): process 0 alone holds the lock, and when there is
more than one process, it shares its outcome with the others (one broadcast), so that
every process raises the same error instead of waiting for a peer that stopped.

URL workdirs (``gs://...``) take no lock: object stores have no atomic exclusive create
of the kind used here. `held` logs that once and lets the run proceed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import sys
import time

from absl import logging

from fgmask_jax import errors, paths

LOCK_NAME = "run.lock"
TAKEOVER_SUFFIX = ".takeover"
# An unreadable lock younger than this may be one a starting run is writing right now.
WRITE_GRACE_SECONDS = 5.0
# A take-over lasts milliseconds; a takeover file older than this was left by a crash.
TAKEOVER_STALE_SECONDS = 30.0
RETRY_SECONDS = 0.05
# Bound on the attempts to take the lock: each ends in a decision or a short wait.
MAX_ATTEMPTS = int(3 * WRITE_GRACE_SECONDS / RETRY_SECONDS)
MESSAGE_LENGTH = 2048  # characters of the refusal shared with the other processes

TAKEN, REFUSED, FAILED = 0, 1, 2

_held: set[str] = set()  # the lock paths this process holds (or, off process 0, is inside)
_url_logged: set[str] = set()


def lock_path(workdir: str) -> str:
    """``WORKDIR/run.lock``, with ``workdir`` made absolute."""
    return os.path.join(paths.absolute(workdir), LOCK_NAME)


def this_run(command: str = "") -> dict:
    """The record that a lock of this process holds."""
    record = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "command": command or shlex.join(getattr(sys, "orig_argv", sys.argv))}
    if os.environ.get("SLURM_JOB_ID"):
        record["slurm_job"] = os.environ["SLURM_JOB_ID"]
        record["slurm_restart"] = _slurm_restart()
    return record


def _slurm_restart() -> int:
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def read(path: str) -> tuple[dict | None, tuple | None]:
    """(the lock's record, the file's identity) of the lock at ``path``.

    The record is None when there is no file, {} when it cannot be read as a lock
    (empty, partly written, not JSON, no host or pid). The identity (device, inode,
    size, modification time) tells whether the file changed between two reads.
    """
    try:
        with open(path, "rb") as f:
            identity = _identity(os.fstat(f.fileno()))
            data = f.read()
    except FileNotFoundError:
        return None, None
    try:
        record = json.loads(data.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both
        return {}, identity
    pid = record.get("pid") if isinstance(record, dict) else None
    if not (isinstance(pid, int) and pid > 0 and isinstance(record.get("host"), str)):
        return {}, identity
    return record, identity


def _identity(stat: os.stat_result) -> tuple:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def gone_because(holder: dict) -> str | None:
    """Why the run of ``holder`` (a lock's record) is known to have ended, or
    None while it may still run. An unreadable lock still within its grace is neither:
    the caller waits and reads again (`_unreadable_and_young`)."""
    if not holder:
        return "it cannot be read (a run that stopped while writing it)"
    if holder["host"] == socket.gethostname():
        if holder["pid"] == os.getpid():
            return "its process id is this process's, reused after the run that wrote it"
        if not alive(holder["pid"]):
            return "its process no longer exists"
    job = os.environ.get("SLURM_JOB_ID")
    if (job and str(holder.get("slurm_job")) == job
            and isinstance(holder.get("slurm_restart"), int)
            and holder["slurm_restart"] < _slurm_restart()):
        return f"it is an earlier start of SLURM job {job}, requeued since"
    return None


def _unreadable_and_young(holder: dict, identity: tuple) -> bool:
    return not holder and time.time() - identity[3] / 1e9 < WRITE_GRACE_SECONDS


def describe(holder: dict) -> str:
    """'the run started T on host H (pid P): COMMAND', in one line."""
    if not holder:
        return "a run whose lock cannot be read"
    job = f", SLURM job {holder['slurm_job']}" if holder.get("slurm_job") else ""
    command = " ".join(str(holder.get("command", "?")).split())
    return (f"the run started {holder.get('started', '?')} on host {holder['host']} "
            f"(pid {holder['pid']}{job}): {command}")


def refusal(workdir: str, holder: dict) -> str:
    """The one-line message of a workdir in use by ``holder``'s run."""
    return (f"{paths.absolute(workdir)} is in use by {describe(holder)}; wait for it to "
            f"end, or if it no longer runs, delete {lock_path(workdir)}")


def _create(path: str, data: bytes) -> bool:
    """Creates ``path`` holding ``data`` unless it exists; returns whether it did."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        os.remove(path)  # no half-written lock of ours left behind
        raise
    os.close(fd)
    return True


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def take(path: str, mine: dict) -> dict | None:
    """Takes the lock at ``path`` for the record ``mine``: creates it, or takes over a
    lock whose run has ended (`gone_because`). Returns None when taken, else the record
    of the run that holds it ({} for a lock that stays unreadable)."""
    data = json.dumps(mine).encode("utf-8")
    holder: dict | None = {}
    for _ in range(MAX_ATTEMPTS):
        if _create(path, data):
            return None
        holder, identity = read(path)
        if holder is None:  # released since: try again
            continue
        if _unreadable_and_young(holder, identity):
            time.sleep(RETRY_SECONDS)
            continue
        reason = gone_because(holder)
        if reason is None:
            return holder
        if _take_over(path, data, identity):
            logging.warning("Took over %s: %s; it was held by %s", path, reason,
                            describe(holder))
            return None
    return holder or {}


def _take_over(path: str, data: bytes, identity: tuple) -> bool:
    """Replaces the lock at ``path`` with ``data`` if the file is still the one whose run
    was judged gone (``identity``); returns whether it did.

    One taker at a time (the takeover file), and the lock is replaced by a rename, never
    removed, so a run starting meanwhile finds a lock and judges it in turn.
    """
    guard = path + TAKEOVER_SUFFIX
    if not _create(guard, data):
        with contextlib.suppress(FileNotFoundError):
            if time.time() - os.path.getmtime(guard) > TAKEOVER_STALE_SECONDS:
                _remove(guard)
        time.sleep(RETRY_SECONDS)
        return False
    try:
        if read(path)[1] != identity:  # changed since it was judged: judge it again
            return False
        temp = f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"
        try:
            with open(temp, "wb") as f:
                f.write(data)
            os.replace(temp, path)
        finally:
            _remove(temp)
        return read(path)[0] == json.loads(data)
    finally:
        _remove(guard)


def release(path: str, mine: dict) -> None:
    """Removes the lock at ``path`` if it still holds ``mine``."""
    holder, _ = read(path)
    if holder == mine:
        _remove(path)
    elif holder is not None:
        logging.warning("%s is no longer this run's (it names %s); left in place", path,
                        describe(holder))


def _take_on_process_0(workdir: str, path: str, mine: dict) -> tuple[int, str]:
    """(TAKEN, "") or (REFUSED, the one-line message)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    holder = take(path, mine)
    return (TAKEN, "") if holder is None else (REFUSED, refusal(workdir, holder))


def _shared(status: int, message: str) -> tuple[int, str]:
    """Process 0's (status, message), on every process (one broadcast)."""
    import numpy as np
    from jax.experimental import multihost_utils

    codes = np.zeros(MESSAGE_LENGTH, np.int32)
    text = [ord(c) for c in message[:MESSAGE_LENGTH]]
    codes[:len(text)] = text
    status_out, codes_out = multihost_utils.broadcast_one_to_all((np.int32(status), codes))
    codes_out = np.asarray(codes_out)
    return int(status_out), "".join(chr(c) for c in codes_out[codes_out > 0])


@contextlib.contextmanager
def held(workdir: str, command: str = ""):
    """Holds ``WORKDIR/run.lock`` for the block (see the module docstring).

    ``command``: the command line the lock names ('' -> this process's own). The workdir
    is created if needed (by process 0). A URL workdir (``gs://``) takes no lock.

    Raises:
      errors.WorkdirLockedError: another run holds the workdir (on every process).
    """
    if "://" in workdir:
        if workdir not in _url_logged:
            _url_logged.add(workdir)
            logging.info("%s is a URL: no run.lock is taken there, so nothing stops a "
                         "second run in the same workdir", workdir)
        yield
        return
    import jax

    path = lock_path(workdir)
    if path in _held:  # already held by this process: nothing more to take or share
        yield
        return
    mine = this_run(command)
    status, message, error, taken = TAKEN, "", None, False
    try:
        if jax.process_index() == 0:
            try:
                status, message = _take_on_process_0(workdir, path, mine)
                taken = status == TAKEN
            except Exception as e:
                if jax.process_count() == 1:
                    raise
                # The others wait for the outcome: they learn of the error, then it is raised.
                status, message, error = FAILED, f"{type(e).__name__}: {e}", e
        if jax.process_count() > 1:
            status, message = _shared(status, message)
        if error is not None:
            raise error
        if status == REFUSED:
            raise errors.WorkdirLockedError(message)
        if status == FAILED:
            raise OSError(f"process 0 could not take {path}: {message}")
        _held.add(path)
        yield
    finally:
        _held.discard(path)
        if taken:
            release(path, mine)
