"""Ctrl-C and SIGTERM (a cluster's preemption notice): finish the step, save, stop cleanly.

    with signals.deferred() as stop:
        for step in ...:
            state = train_step(state, batch)
            if stop.signum:  # a signal arrived during the step
                save(step, state)
                raise signals.Interrupted(stop.signum, f"... step {step} ...")

Inside `deferred` the first SIGINT or SIGTERM only sets ``stop.signum``: the
loop ends its step, writes a checkpoint and stops, so a rerun of the same command
resumes exactly there. A second signal stops at once (``KeyboardInterrupt``).
Outside it, SIGTERM raises `Terminated`, a ``KeyboardInterrupt``, so cleanup
(``finally``) runs as for Ctrl-C. The entry commands turn both into one line and
the exit code 128 + signal number (130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt."""

    signum = signal.SIGTERM


class Interrupted(Exception):
    """A run stopped by a signal; the message says where it stopped and how to resume."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = int(signum)


def signum_of(error: BaseException) -> int:
    """The signal behind an interruption: SIGTERM for `Terminated`, else SIGINT."""
    return int(getattr(error, "signum", signal.SIGINT))


def _raise_terminated(signum, frame):
    raise Terminated()


def terminate_like_interrupt() -> None:
    """Makes SIGTERM raise `Terminated` (from the main thread; entry commands call it)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


@dataclasses.dataclass
class Stop:
    signum: int | None = None  # the first signal received, if any


@contextlib.contextmanager
def deferred(enabled: bool = True):
    """Holds SIGINT and SIGTERM until the caller checks ``stop.signum``; yields a `Stop`.

    Disabled (or off the main thread, where Python cannot catch signals) it
    yields a `Stop` that never fires, and signals act as usual.
    """
    stop = Stop()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.signum is not None:  # the second signal: stop now
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        stop.signum = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
