"""One run per workdir: run.lock is taken and released, a second live run is refused with the
holder's pid and command, a lock whose run has ended is taken over, and the commands say so
in one line (one process and two)."""

import contextlib
import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_cli import main_command

from fgmask_jax import errors, workdir_lock

REPO = Path(__file__).resolve().parents[1]
HOLD = """\
import sys
from fgmask_jax import workdir_lock
with workdir_lock.held(sys.argv[1], command="holder of " + sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes it
"""


@contextlib.contextmanager
def holding(workdir: Path):
    """Another process holding ``workdir``'s lock until the block ends; yields its Popen."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], cwd=REPO, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert process.stdout.readline() == "held\n"
        yield process
    finally:
        process.stdin.close()
        assert process.wait(timeout=60) == 0


def write_lock(workdir: Path, text: str, age: float = 0.0) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / workdir_lock.LOCK_NAME
    path.write_text(text)
    if age:
        past = time.time() - age
        os.utime(path, (past, past))
    return path


def dead_pid() -> int:
    """The id of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def record(**changes) -> str:
    base = {"host": socket.gethostname(), "pid": 1, "started": "2026-01-02T03:04:05",
            "command": "python -m fgmask_jax.main --workdir=old"}
    return json.dumps({**base, **changes})


def test_the_lock_is_taken_and_released_also_after_an_error(tmp_path):
    workdir = tmp_path / "new" / "run"
    lock = workdir / "run.lock"
    with workdir_lock.held(str(workdir), command="python -m fgmask_jax.main --x"):
        held = json.loads(lock.read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        assert held["command"] == "python -m fgmask_jax.main --x" and held["started"]
        with workdir_lock.held(str(workdir)):  # nested in one process: the same run
            pass
        assert lock.exists()
    assert workdir.is_dir() and not lock.exists()

    with pytest.raises(KeyError), workdir_lock.held(str(workdir)):
        assert json.loads(lock.read_text())["command"] == shlex.join(sys.orig_argv)
        raise KeyError("boom")
    assert not lock.exists()
    with pytest.raises(KeyboardInterrupt), workdir_lock.held(str(workdir)):
        raise KeyboardInterrupt
    assert not lock.exists()


def test_a_live_run_elsewhere_refuses_the_second_and_keeps_its_lock(tmp_path):
    workdir = tmp_path / "run"
    with holding(workdir) as holder:
        before = (workdir / "run.lock").read_text()
        with pytest.raises(errors.WorkdirLockedError) as refused, \
                workdir_lock.held(str(workdir)):
            pytest.fail("the block ran although another process holds the workdir")
        message = str(refused.value)
        assert "\n" not in message
        assert message.startswith(f"{workdir} is in use by the run started ")
        assert f"on host {socket.gethostname()} (pid {holder.pid}): holder of {workdir};" \
            in message
        assert message.endswith(f"delete {workdir / 'run.lock'}")
        assert (workdir / "run.lock").read_text() == before
    assert not (workdir / "run.lock").exists()  # the holder released it


def test_a_lock_of_a_process_that_ended_is_taken_over_with_a_warning(tmp_path, caplog):
    workdir = tmp_path / "run"
    pid = dead_pid()
    write_lock(workdir, record(pid=pid))
    with caplog.at_level(logging.WARNING), workdir_lock.held(str(workdir)):
        assert json.loads((workdir / "run.lock").read_text())["pid"] == os.getpid()
    assert "its process no longer exists" in caplog.text
    assert f"(pid {pid}): python -m fgmask_jax.main --workdir=old" in caplog.text
    assert not (workdir / "run.lock").exists()


@pytest.mark.parametrize("text", ["", '{"host": "h", "pi', "\xff\xfe", "[1, 2]"])
def test_an_unreadable_lock_is_taken_over(tmp_path, caplog, text):
    workdir = tmp_path / "run"
    write_lock(workdir, text, age=2 * workdir_lock.WRITE_GRACE_SECONDS)
    with caplog.at_level(logging.WARNING), workdir_lock.held(str(workdir)):
        assert json.loads((workdir / "run.lock").read_text())["pid"] == os.getpid()
    assert "cannot be read" in caplog.text


def test_an_unreadable_lock_being_written_is_read_again(tmp_path):
    # A run that has just created its lock and not yet written it: read again, then refused.
    workdir = tmp_path / "run"
    lock = write_lock(workdir, "")
    writer = threading.Timer(0.3, lambda: lock.write_text(record(host="node-7", pid=42)))
    writer.start()
    with pytest.raises(errors.WorkdirLockedError, match=r"on host node-7 \(pid 42\)"), \
            workdir_lock.held(str(workdir)):
        pass
    writer.join()


def test_a_live_run_on_another_host_is_refused_but_an_earlier_start_of_this_slurm_job_is_not(
        tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    for holder in ({}, {"slurm_job": "76", "slurm_restart": 0},
                   {"slurm_job": "77", "slurm_restart": 1}):
        write_lock(workdir, record(host="node-7", pid=os.getpid(), **holder))
        with pytest.raises(errors.WorkdirLockedError, match="node-7"), \
                workdir_lock.held(str(workdir)):
            pass
    write_lock(workdir, record(host="node-7", pid=42, slurm_job="77", slurm_restart=0))
    with workdir_lock.held(str(workdir)):
        held = json.loads((workdir / "run.lock").read_text())
        assert (held["slurm_job"], held["slurm_restart"]) == ("77", 1)


def test_of_several_runs_taking_over_one_stale_lock_exactly_one_wins(tmp_path):
    path = str(write_lock(tmp_path, ""))
    stale = dead_pid()

    def taker(i, barrier, outcomes):
        # Records of other hosts: the threads share one pid, which would read as stale.
        mine = json.loads(record(host=f"taker-{i}", pid=1000 + i))
        barrier.wait()
        outcomes.append(workdir_lock.take(path, mine))

    for _ in range(20):
        Path(path).write_text(record(pid=stale))
        barrier, outcomes = threading.Barrier(6), []
        threads = [threading.Thread(target=taker, args=(i, barrier, outcomes))
                   for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [o for o in outcomes if o is None]
        assert len(winners) == 1, outcomes
        holder = json.loads(Path(path).read_text())
        assert all(o == holder for o in outcomes if o is not None)
        assert not os.path.exists(path + workdir_lock.TAKEOVER_SUFFIX)


def test_a_url_workdir_takes_no_lock(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with workdir_lock.held("gs://bucket/run"):
        pass
    assert not os.listdir(tmp_path)


LOG_RECORD = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d")  # absl's, as "I1205 06:10:31.1 ..."


def one_line_error(stderr: str) -> str:
    """The command's error line: the last of stderr, after nothing but log records (the
    process's start, such as its devices)."""
    *logs, last = stderr.strip().splitlines()
    assert all(LOG_RECORD.match(line) for line in logs), stderr
    assert "Traceback" not in stderr and last.startswith("fgmask_jax.main: "), stderr
    return last


def _wait_for(path: Path, process: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


def test_a_second_launch_of_a_running_command_exits_2_naming_the_first(small_data_dir,
                                                                       tmp_path):
    command = main_command(tmp_path, small_data_dir, "run", "--config.num_train_steps=100000",
                           "--config.eval_every_steps=100000")
    lock = tmp_path / "run" / "run.lock"
    log = tmp_path / "first.txt"
    with open(log, "w") as stderr:
        first = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                 stderr=stderr)
        try:
            _wait_for(lock, first, log)
            t0 = time.monotonic()
            second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                                    timeout=120, check=False)
            assert time.monotonic() - t0 < 60
            assert second.returncode == 2, second.stderr[-3000:]
            line = one_line_error(second.stderr)
            assert line.startswith(
                f"fgmask_jax.main: {tmp_path / 'run'} is in use by the run started ")
            assert f"(pid {first.pid}): " in line and "-m fgmask_jax.main --config=" in line
            assert first.poll() is None  # refused by a live run, which goes on
            assert json.loads(lock.read_text())["pid"] == first.pid
            first.send_signal(signal.SIGINT)
            assert first.wait(timeout=120) == 130, log.read_text()[-3000:]
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    assert not lock.exists()
    assert "Traceback" not in log.read_text()


def test_every_process_of_a_job_gets_the_same_one_line_refusal(small_data_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_"))}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    command = main_command(tmp_path, small_data_dir, "run")
    with holding(tmp_path / "run") as holder:
        processes = [subprocess.Popen(
            [*command, f"--coordinator_address=localhost:{port}", "--num_processes=2",
             f"--process_id={i}", "--initialization_timeout=60"], cwd=tmp_path, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
        try:
            outs = [p.communicate(timeout=180)[1] for p in processes]
        finally:
            for p in processes:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        assert [p.returncode for p in processes] == [2, 2], outs
        assert all(f"JAX process {i} of 2 " in out for i, out in enumerate(outs)), outs
        lines = [one_line_error(out) for out in outs]
        assert lines[0] == lines[1], lines
        assert lines[0].startswith(f"fgmask_jax.main: {tmp_path / 'run'} is in use by the run ")
        assert f"(pid {holder.pid}): holder of {tmp_path / 'run'};" in lines[0]
