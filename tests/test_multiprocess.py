"""Several JAX processes on this machine: joining, training, predictions by dataset index,
data slices, preemption.

Each multi-process test starts tests/multiprocess_worker.py (or ``fgmask_jax.main``) in
subprocesses with 2 CPU devices each, joined through a coordinator on a free local port,
and compares the result with one process over 4 devices (this process:
tests/conftest.py) or with an uninterrupted run of the same processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import multiprocess_worker as worker
import numpy as np
import pytest

from fgmask_jax import checkpointing, distributed, errors

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("multiprocess_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(devices: int = 2, **extra: str) -> dict[str, str]:
    """This environment without cluster variables (the compilation cache kept), CPU only,
    ``devices`` devices per process."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "OMPI_", "JAX_", "TPU_", distributed.ENV_SWITCH))
           or k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    env.update(extra)
    return env


@contextlib.contextmanager
def started(commands: list[tuple[list[str], dict[str, str]]], log_dir: Path,
            program: tuple[str, ...] = (str(WORKER),)):
    """Starts each (args, env) as ``python program args``, the worker by default; yields the
    Popens; kills any still running."""
    procs = []
    try:
        for i, (args, env) in enumerate(commands):
            log = open(log_dir / f"worker_{i}.log", "w")  # noqa: SIM115 - closed below
            procs.append((subprocess.Popen([sys.executable, *program, *args], cwd=REPO,
                                           env=env, stdout=log, stderr=subprocess.STDOUT), log))
        yield [p for p, _ in procs]
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            log.close()


def wait_all(procs, log_dir: Path, timeout: float) -> list[str]:
    """Waits (at most ``timeout`` s in all) for every process; returns their logs."""
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            pass
    logs = [(log_dir / f"worker_{i}.log").read_text() for i in range(len(procs))]
    for i, p in enumerate(procs):
        assert p.returncode is not None, f"worker {i} still runs after {timeout} s:\n{logs[i]}"
    return logs


def cluster(n: int, port: int, *extra: str) -> list[list[str]]:
    return [[f"--coordinator_address=localhost:{port}", f"--num_processes={n}",
             f"--process_id={i}", "--initialization_timeout=60", *extra] for i in range(n)]


# --- end to end ---------------------------------------------------------------------------


def test_train_and_evaluate_in_two_processes(tmp_path):
    from fgmask_jax import train
    from fgmask_jax.data import build as build_data

    data_dir = tmp_path / "data"
    build_data.build("synthetic_masked_faces/small", str(data_dir))
    workdir = tmp_path / "two"
    args = cluster(2, free_port(), "--mode=train_and_evaluate", f"--out={workdir}",
                   "--steps=3", f"--data_dir={data_dir}")
    with started([(a, worker_env()) for a in args], tmp_path) as procs:
        config = worker.tiny_config()  # meanwhile, one process over 4 devices
        config.update(dataset="synthetic_masked_faces/small", data_dir=str(data_dir),
                      num_train_steps=3, eval_every_steps=3, checkpoint_every_steps=3,
                      log_every_steps=1)
        train.train_and_evaluate(config, str(tmp_path / "one"))
        logs = wait_all(procs, tmp_path, timeout=240)
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"worker {i} failed:\n{logs[i]}"
        # The processes agree on the least free memory (in MiB: bytes would wrap in int32).
        assert "data on device" in logs[i] and "-" not in logs[i].split("GiB free")[0][-8:]

    # Process 0 alone wrote the metrics: a second writer would append every record again.
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], tuple(sorted(r))) for r in records]
    assert len(keys) == len(set(keys)) and {r["step"] for r in records} == {1, 2, 3}
    assert len(list((workdir / "tensorboard").iterdir())) == 1

    def sections(report: Path) -> list[str]:
        return [line for line in report.read_text().splitlines() if line.startswith("#")]

    assert sections(workdir / "report.md") == sections(tmp_path / "one" / "report.md")
    assert "on 4 devices" in (workdir / "report.md").read_text()
    results = json.loads((workdir / "results.json").read_text())
    assert results["steps"] == 3 and set(results["test"]) == set(worker.TASKS)

    # Row for row by dataset index, the two processes predicted what one process did, and
    # their tables agree (the processes' devices hold the rows in another order).
    with np.load(workdir / "predictions.npz") as two, \
            np.load(tmp_path / "one" / "predictions.npz") as one:
        assert sorted(two.files) == sorted(one.files)
        np.testing.assert_array_equal(two["index"], np.arange(15))  # the 15 test images
        for name in one.files:
            np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=1e-5,
                                       err_msg=name)
    alone = json.loads((tmp_path / "one" / "results.json").read_text())
    assert results["subgroups"] == alone["subgroups"]
    for task, values in alone["calibration"].items():
        for key, value in values.items():
            assert results["calibration"][task][key] == pytest.approx(value, rel=1e-3), key

    # Each process read its own rows of every training batch; together, each epoch once.
    orders = [np.load(workdir / f"order_{i}.npy") for i in range(2)]
    whole = worker.training_order()  # this process: process_count() == 1, whole batches
    assert orders[0].shape == orders[1].shape == (worker.ORDER_BATCHES, worker.GLOBAL_BATCH // 2)
    np.testing.assert_array_equal(np.concatenate(orders, axis=1), whole)
    per_epoch = (worker.ORDER_EXAMPLES // worker.GLOBAL_BATCH)
    for epoch in range(worker.ORDER_BATCHES // per_epoch):
        rows = slice(epoch * per_epoch, (epoch + 1) * per_epoch)
        mine, theirs = set(orders[0][rows].ravel()), set(orders[1][rows].ravel())
        assert not mine & theirs
        seen = np.concatenate([orders[0][rows].ravel(), orders[1][rows].ravel()])
        assert len(set(seen)) == len(seen) == per_epoch * worker.GLOBAL_BATCH
        assert set(seen) <= set(range(worker.ORDER_EXAMPLES))


# --- preemption: every process stops at the same step ------------------------------------

STOP_RUN = ("--config.num_train_steps=40", "--config.log_every_steps=2",
            "--config.checkpoint_every_steps=20", "--config.eval_every_steps=20")


def main_args(workdir: Path, data_dir: str, port: int) -> list[list[str]]:
    """``python -m fgmask_jax.main`` arguments of each of two processes (STOP_RUN)."""
    return [[f"--config={REPO / 'configs' / 'multitask.py'}:data=synthetic,model=resnet_tiny,"
             "size=32", f"--workdir={workdir}", "--config.dataset=synthetic_masked_faces/small",
             f"--config.data_dir={data_dir}", "--config.batch_size=8",
             "--config.warmup_epochs=0", "--config.saliency_images=0", *STOP_RUN, *a]
            for a in cluster(2, port)]


def main_processes(workdir: Path, data_dir: str, log_dir: Path):
    """Starts two processes of ``main`` on ``workdir`` (`started`), logging to ``log_dir``."""
    log_dir.mkdir()
    args = main_args(workdir, data_dir, free_port())
    return started([(a, worker_env()) for a in args], log_dir, ("-m", "fgmask_jax.main"))


def run_main(workdir: Path, data_dir: str, log_dir: Path, signal_to: int | None = None,
             after: str = "") -> tuple[list[int], list[str]]:
    """Two processes of ``main`` on ``workdir``; with ``signal_to``, SIGTERM to that process
    once process 0 logs ``after``. Returns their exit codes and logs."""
    with main_processes(workdir, data_dir, log_dir) as procs:
        if signal_to is not None:
            deadline = time.monotonic() + 180
            while after not in (log_dir / "worker_0.log").read_text():
                assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                    (log_dir / "worker_0.log").read_text()
                time.sleep(0.05)
            procs[signal_to].send_signal(signal.SIGTERM)
        logs = wait_all(procs, log_dir, timeout=240)
    return [p.returncode for p in procs], logs


def stopped_at(codes: list[int], logs: list[str], workdir: Path) -> int:
    """The one step at which both processes stopped by SIGTERM (checked: exit 143, one line
    each, one checkpoint of that step)."""
    assert codes == [143, 143], logs
    lasts = [log.strip().splitlines()[-1] for log in logs]
    for last in lasts:
        assert last.startswith("fgmask_jax.main: stopped by SIGTERM at step "), lasts
    assert lasts[0] == lasts[1], lasts
    assert not any("Traceback" in log for log in logs), logs
    step = int(lasts[0].split(" at step ")[1].split()[0])
    assert f"saved a checkpoint at step {step} in {workdir / 'checkpoints'}" in lasts[0]
    assert checkpointing.Checkpointer(str(workdir / "checkpoints")).latest_step() == step
    return step


def test_sigterm_to_either_process_stops_both_at_one_step_and_the_rerun_ends_bitwise_equal(
        small_data_dir, tmp_path):
    from test_train import final_state

    whole, split = tmp_path / "whole", tmp_path / "split"
    with main_processes(whole, small_data_dir, tmp_path / "whole_logs") as procs:
        # Meanwhile, SIGTERM to process 1 while it trains, then to process 0 as it resumes.
        codes, logs = run_main(split, small_data_dir, tmp_path / "first", signal_to=1,
                               after="step 10/40")
        whole_logs = wait_all(procs, tmp_path / "whole_logs", timeout=240)
    assert [p.returncode for p in procs] == [0, 0], whole_logs
    first = stopped_at(codes, logs, split)
    assert 10 <= first < 40
    codes, logs = run_main(split, small_data_dir, tmp_path / "second", signal_to=0,
                           after=f"Resumed from {split / 'checkpoints'} at step {first}")
    second = stopped_at(codes, logs, split)
    assert first < second < 40

    codes, logs = run_main(split, small_data_dir, tmp_path / "last")
    assert codes == [0, 0], logs
    step_a, state_a, meta_a = final_state(whole)
    step_b, state_b, meta_b = final_state(split)
    assert step_a == step_b == 40 and meta_a == meta_b
    jax.tree.map(np.testing.assert_array_equal, state_a, state_b)  # bitwise
    results = [json.loads((w / "results.json").read_text()) for w in (whole, split)]
    assert results[0]["test"] == results[1]["test"]


# --- joining and failing in bounded time ------------------------------------------------


def test_unreachable_coordinator_and_missing_peer_fail_within_the_timeout(tmp_path):
    timeout = 3
    lone_worker = [f"--coordinator_address=localhost:{free_port()}", "--num_processes=2",
                   "--process_id=1", f"--initialization_timeout={timeout}", "--mode=join",
                   f"--out={tmp_path}"]
    lone_coordinator = [f"--coordinator_address=localhost:{free_port()}", "--num_processes=2",
                        "--process_id=0", f"--initialization_timeout={timeout}", "--mode=join",
                        f"--out={tmp_path}"]
    # An srun-like task whose process 0 never came: an error, not a run alone.
    slurm_task = worker_env(SLURM_JOB_ID="4243", SLURM_STEP_NODELIST="localhost",
                            SLURM_NTASKS="2", SLURM_STEP_NUM_NODES="1", SLURM_PROCID="1",
                            SLURM_LOCALID="1", JAX_COORDINATOR_PORT=str(free_port()))
    start = time.monotonic()
    with started([(lone_worker, worker_env()), (lone_coordinator, worker_env()),
                  ([f"--initialization_timeout={timeout}", "--mode=join", f"--out={tmp_path}"],
                   slurm_task)], tmp_path) as procs:
        logs = wait_all(procs, tmp_path, timeout=60)
    elapsed = time.monotonic() - start
    assert all(p.returncode != 0 for p in procs), logs
    assert "could not reach the coordinator at localhost:" in logs[2]
    assert "(from slurm)" in logs[2] and "ClusterJoinError" in logs[2]
    # Start-up (importing JAX) takes a few seconds on a busy machine; the wait itself is bounded.
    assert elapsed < timeout + 30, logs
    assert "could not reach the coordinator at localhost:" in logs[0]
    assert f"within {timeout} s" in logs[0] and "ClusterJoinError" in logs[0]
    assert f"waiting up to {timeout} s for all processes" in logs[1]
    assert "DEADLINE_EXCEEDED" in logs[1]
    assert not list(tmp_path.glob("topology_*.json"))


def test_slurm_job_is_detected_and_a_dead_peer_stops_it(tmp_path):
    """Two srun-like tasks on this host: JAX's SLURM detection, then process 1 crashes."""
    port = str(free_port())

    def slurm_env(i: int) -> dict[str, str]:
        return worker_env(SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="localhost",
                          SLURM_NTASKS="2", SLURM_STEP_NUM_NODES="1", SLURM_PROCID=str(i),
                          SLURM_LOCALID=str(i), JAX_COORDINATOR_PORT=port)

    heartbeat = 4
    args = ["--mode=join", f"--out={tmp_path}", "--exit_after_join=7",
            f"--heartbeat_timeout={heartbeat}", "--initialization_timeout=60"]
    with started([(args, slurm_env(0)), (args, slurm_env(1))], tmp_path) as procs:
        logs = wait_all(procs, tmp_path, timeout=90)
    topology = [json.loads((tmp_path / f"topology_{i}.json").read_text()) for i in range(2)]
    for i, info in enumerate(topology):
        assert info == {"joined": True, "process_index": i, "process_count": 2,
                        "local_devices": 2, "devices": 4, "all_reduce": 2.0}, logs
    assert "from slurm" in logs[0]
    assert procs[1].returncode == 7
    # Process 0 kept all-reducing with a dead peer: JAX stopped it, not our 120 s deadline.
    assert procs[0].returncode != 0, logs[0]
    assert "unhealthy" in logs[0] or "heartbeat" in logs[0].lower(), logs[0]
    assert "not noticed" not in logs[0]


# --- the decision to join (no processes started) -----------------------------------------


@pytest.fixture
def no_cluster(monkeypatch):
    for key in list(os.environ):
        if key.startswith(("SLURM_", "OMPI_", "TPU_", "JAX_COORDINATOR")) or \
                key == distributed.ENV_SWITCH:
            monkeypatch.delenv(key)
    return monkeypatch


def test_a_plain_run_joins_nothing(no_cluster):
    assert distributed.plan(distributed.Options()) is None
    assert distributed.plan(distributed.Options(mode="off")) is None


def test_explicit_flags_need_all_three(no_cluster):
    p = distributed.plan(distributed.Options(coordinator_address="h:1234", num_processes=4,
                                             process_id=3, local_device_ids="0,1"))
    assert p == distributed.Plan("flags", "h:1234", 4, 3, (0, 1))
    with pytest.raises(ValueError, match="without --num_processes, --process_id"):
        distributed.plan(distributed.Options(coordinator_address="h:1234"))
    with pytest.raises(ValueError, match="must be below"):
        distributed.plan(distributed.Options(coordinator_address="h:1", num_processes=2,
                                             process_id=2))
    with pytest.raises(ValueError, match="--distributed=off"):
        distributed.plan(distributed.Options(mode="off", coordinator_address="h:1",
                                             num_processes=2, process_id=0))
    with pytest.raises(ValueError, match="local_device_ids"):
        distributed.plan(distributed.Options(local_device_ids="gpu0"))


def test_environment_switch():
    assert distributed.mode_from("auto", False, {}) == "auto"
    assert distributed.mode_from("auto", False, {"FGMASK_DISTRIBUTED": "1"}) == "on"
    assert distributed.mode_from("auto", False, {"FGMASK_DISTRIBUTED": "0"}) == "off"
    assert distributed.mode_from("off", True, {"FGMASK_DISTRIBUTED": "1"}) == "off"
    with pytest.raises(ValueError, match="FGMASK_DISTRIBUTED='maybe'"):
        distributed.mode_from("auto", False, {"FGMASK_DISTRIBUTED": "maybe"})
    # On, with no cluster to detect: JAX's own detection gets to fill in everything.
    assert distributed.plan(distributed.Options(mode="on")).source == "jax"


@pytest.mark.parametrize(
    "tasks, nodes, local_id, expected_devices",
    [("2", "2", "0", None),  # one task per node: it drives every GPU of its node
     ("8", "2", "3", (3,))],  # one task per GPU: task i of a node takes GPU i (JAX's rule)
)
def test_slurm_detection(no_cluster, tasks, nodes, local_id, expected_devices):
    for key, value in dict(SLURM_JOB_ID="1234", SLURM_STEP_NODELIST="gpu[003-004]",
                           SLURM_NTASKS=tasks, SLURM_STEP_NUM_NODES=nodes, SLURM_PROCID="1",
                           SLURM_LOCALID=local_id).items():
        no_cluster.setenv(key, value)
    port = 1234 % 2**12 + 65535 - 2**12 + 1  # JAX's port for job 1234
    p = distributed.plan(distributed.Options())
    assert p == distributed.Plan("slurm", f"gpu003:{port}", int(tasks), 1, expected_devices)
    assert distributed.plan(distributed.Options(local_device_ids="all")).local_device_ids is None
    assert distributed.plan(distributed.Options(mode="off")) is None
    no_cluster.setenv("SLURM_NTASKS", "1")  # a one-task job runs alone
    no_cluster.setenv("SLURM_STEP_NUM_NODES", "1")
    assert distributed.plan(distributed.Options()) is None



def test_clusters_are_read_from_their_documented_variables(no_cluster):
    assert [distributed.first_host(h) for h in ("node001", "node001,host2", "gpu[003-004]",
                                                "a-b[07,9-12],c")] == [
        "node001", "node001", "gpu003", "a-b07"]
    assert distributed.detected_cluster({}) is None
    mpi = distributed.detected_cluster({"OMPI_COMM_WORLD_SIZE": "4"})
    assert (mpi.name, mpi.num_processes, mpi.coordinator_address) == ("ompi", 4, None)
    assert distributed.detected_cluster({"TPU_WORKER_HOSTNAMES": "t0,t1"}).num_processes == 2
    # Open MPI and TPU pods: jax.distributed.initialize's own detection fills in the rest.
    no_cluster.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert distributed.plan(distributed.Options()) == distributed.Plan("jax", None, None, None,
                                                                       None)
    no_cluster.setenv("OMPI_COMM_WORLD_SIZE", "one")
    with pytest.raises(errors.ConfigError, match="do not parse"):
        distributed.plan(distributed.Options())


@pytest.mark.parametrize("command", ["fgmask_jax.study", "fgmask_jax.mask_gap"])
def test_study_and_mask_gap_join_a_cluster_like_main(tmp_path, command):
    args = [sys.executable, "-m", command, f"--workdir={tmp_path / 'run'}",
            f"--coordinator_address=localhost:{free_port()}", "--num_processes=2",
            "--process_id=1", "--initialization_timeout=2"]
    result = subprocess.run(args, cwd=REPO, env=worker_env(), capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{command}: could not reach the coordinator at localhost:"), last
    assert not (tmp_path / "run").exists()
