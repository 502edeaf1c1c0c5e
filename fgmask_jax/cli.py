"""What every command does at entry and exit: absolute paths, one-line errors, interruptions.

    if __name__ == "__main__":
        cli.run(main, prog="fgmask_jax.main", flags_parser=parse_flags)

`run` is ``absl.app.run`` with these rules:

- a mistake in the command's input (an `errors.UserError`) prints one line naming
  the file or key and the way out, and exits 2;
- a run that stops as designed (an `errors.RunStopped`, such as checkpoints that do
  not restore, or a non-finite loss) prints its one-line reason and exits 1;
- Ctrl-C and SIGTERM print one line (where the run stopped, how to resume) and
  exit 130 and 143; in-flight checkpoint saves finish first (see `signals`);
- anything else is a bug and keeps its traceback.

Library logs (JAX, Orbax, TFDS, grain) are kept quiet; ``--verbosity=1`` shows them.

XLA's compiled programs are kept in a persistent cache (`compilation_cache_dir`), so
that the second run of a config starts its first step without compiling again.
``JAX_COMPILATION_CACHE_DIR`` chooses another folder; set empty, it turns the cache off.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from collections.abc import Callable

from absl import app, flags

from fgmask_jax import errors, signals
from fgmask_jax.paths import absolute  # noqa: F401 - commands call cli.absolute at entry

# The cache's size bound (least recently used entries go first) unless
# JAX_COMPILATION_CACHE_MAX_SIZE says otherwise.
COMPILATION_CACHE_MAX_BYTES = 4 * 2**30


def compilation_cache_dir() -> str:
    """``$JAX_COMPILATION_CACHE_DIR`` if set (empty: no cache), else
    ``$XDG_CACHE_HOME/fgmask_jax/xla`` (``~/.cache/fgmask_jax/xla``)."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache_home, "fgmask_jax", "xla")


def use_compilation_cache() -> None:
    """Turns on JAX's persistent compilation cache in `compilation_cache_dir`."""
    import jax

    jax.config.update("jax_compilation_cache_dir", compilation_cache_dir() or None)
    if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ:
        jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_MAX_BYTES)


def fail(prog: str, message: str, code: int, at_once: bool = False) -> None:
    """Prints ``prog: message`` on stderr and exits with ``code``; ``at_once`` skips the
    interpreter's clean-up (for a full disk: the libraries' background writers would only
    fail again, at length, after the message)."""
    sys.stdout.flush()
    print(f"{prog}: {message}", file=sys.stderr, flush=True)
    if at_once:
        sys.stderr.flush()
        os._exit(code)
    if threading.current_thread() is threading.main_thread():
        # A further Ctrl-C or SIGTERM during the interpreter's clean-up (the work was saved
        # before the line above) ends the process there, without a traceback from the clean-up.
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_DFL)
    sys.exit(code)


HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "-?")


def parse_flags(argv: list[str], prog: str, usage: Callable[[], str] | None = None) -> list[str]:
    """absl's flag parsing with help on ``--help`` (exit 0; ``usage()`` or the command's
    docstring and flags) and a bad or missing flag as one line (exit 2)."""
    if any(a in HELP_FLAGS for a in argv[1:]):
        try:
            if usage is not None and "--helpfull" not in argv:
                print(usage())
            else:
                main_module = sys.modules["__main__"]
                print((main_module.__doc__ or "").strip() + "\n")
                print(flags.FLAGS.get_help() if "--helpfull" in argv
                      else flags.FLAGS.main_module_help(), flush=True)
        except BrokenPipeError:  # `--help | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = str(e).splitlines()[0]
        if (name := _required_missing(message)) is not None:
            message = f"--{name} is required: {flags.FLAGS[name].help}"
        fail(prog, f"{message} (--help lists the flags)", 2)


def _required_missing(message: str) -> str | None:
    """The flag named by absl's "Flag --NAME must have a value other than None", if so."""
    marker = " must have a value other than None"
    if marker not in message or "Flag --" not in message:
        return None
    return message.split("Flag --", 1)[1].split(marker, 1)[0]


def define_cluster_flags() -> None:
    """Defines the flags of joining a multi-process JAX cluster (`distributed`); the
    commands that train call it once, at import."""
    from fgmask_jax import distributed

    flags.DEFINE_enum(
        "distributed", "auto", ["auto", "on", "off"],
        f"Join a multi-process JAX cluster: auto (when a cluster job is detected or "
        f"--coordinator_address is given), on (always), off (never). Default: "
        f"${distributed.ENV_SWITCH} (1/on, 0/off) if set, else auto.",
    )
    flags.DEFINE_string(
        "coordinator_address", None,
        "host:port of process 0, the same for every process (bare clusters, launch/local.sh).",
    )
    flags.DEFINE_integer(
        "num_processes", None, "How many processes take part (with --coordinator_address).",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "process_id", None, "This process's index, 0 .. num_processes-1 (0 hosts the coordinator).",
        lower_bound=0,
    )
    flags.DEFINE_string(
        "local_device_ids", "auto",
        "Which local devices this process drives: auto (see fgmask_jax/distributed), all, "
        "or a comma-separated list such as 0,1.",
    )
    flags.DEFINE_integer(
        "initialization_timeout", 300,
        "Seconds a process waits for the coordinator and for all processes to join.",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "heartbeat_timeout", 100,
        "Seconds without a heartbeat after which a process counts as dead and the job stops.",
        lower_bound=1,
    )


def cluster_options():
    """The parsed cluster flags as `distributed.Options`."""
    from fgmask_jax import distributed

    f = flags.FLAGS
    return distributed.Options(
        mode=distributed.mode_from(f.distributed, f["distributed"].present),
        coordinator_address=f.coordinator_address,
        num_processes=f.num_processes,
        process_id=f.process_id,
        local_device_ids=f.local_device_ids,
        initialization_timeout=f.initialization_timeout,
        heartbeat_timeout=f.heartbeat_timeout,
    )


def _quiet_closed_loops(unraisable) -> None:
    """Python's hook for errors nothing can catch, less one: after a failed save (a full
    disk), Orbax's background threads post results to event loops that have closed, and
    each would print "Event loop is closed" after the command's own one line."""
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
        sys.__unraisablehook__(unraisable)


def run(main: Callable[[list[str]], None], *, prog: str,
        flags_parser: Callable[[list[str]], list[str]] | None = None) -> None:
    """``app.run(main)`` with the exit rules of this module; ``flags_parser`` defaults to
    `parse_flags`."""

    def guarded(argv):
        # Imports JAX: only after the flags parsed, so that a bad flag answers fast.
        from fgmask_jax.evaluation import writers

        writers.quiet_library_logs()
        sys.unraisablehook = _quiet_closed_loops
        use_compilation_cache()
        signals.terminate_like_interrupt()
        try:
            return main(argv)
        except errors.UserError as e:
            fail(prog, str(e), 2)
        except errors.RunStopped as e:
            fail(prog, str(e), 1, at_once=isinstance(e, errors.DiskFullError))
        except signals.Interrupted as e:
            fail(prog, str(e), 128 + e.signum)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            fail(prog, f"the disk is full: no space left to write {e.filename or 'an output'}. "
                       "Free space there, then rerun the same command: it resumes from the last "
                       "checkpoint written.", 1, at_once=True)
        except KeyboardInterrupt as e:
            signum = signals.signum_of(e)
            name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
            fail(prog, f"stopped by {name}; rerunning the same command resumes from what it "
                       "had written.", 128 + signum)

    app.run(guarded, flags_parser=flags_parser or (lambda argv: parse_flags(argv, prog)))
