"""The cluster launchers in launch/: lint, help, dry runs, and local.sh for real."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (REPO / "launch").iterdir() if p.suffix in (".sh", ".sbatch"))


def run(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "JAX_", "XLA_", "FGMASK_"))}
    env.update(PYTHON=sys.executable, **extra)
    return env


def test_the_launchers_are_there():
    names = {p.name for p in SCRIPTS}
    assert {"local.sh", "tpu_vm.sh", "slurm.sh", "slurm.sbatch"} <= names


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (apt-get install shellcheck)")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
    result = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help(script):
    assert run("-n", str(script)).returncode == 0  # bash parses it
    result = run(str(script), "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage:") and len(result.stdout.splitlines()) > 5


# --- local.sh ---------------------------------------------------------------------------


def test_local_two_processes_join(tmp_path):
    result = run("launch/local.sh", "--log-dir", str(tmp_path), "--module",
                 "fgmask_jax.distributed", "2", "2", "--", "--initialization_timeout=60",
                 timeout=120, env=clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    for i in range(2):
        log = (tmp_path / f"process_{i}.log").read_text()
        assert f"OK: process {i} of 2 (joined a cluster), 2 local of 4 devices" in log, log


def test_local_stops_everything_when_one_process_fails(tmp_path):
    start = time.monotonic()
    # Process 1 exits with status 3 at once; process 0 would sleep for two minutes.
    result = run("launch/local.sh", "--log-dir", str(tmp_path), "--module",
                 "tests.multiprocess_worker", "2", "1", "--", "--mode=fail_one",
                 f"--out={tmp_path}", timeout=60, env=clean_env())
    assert result.returncode == 3, result.stdout + result.stderr
    assert time.monotonic() - start < 30
    assert "process 1 failed (exit status 3)" in result.stderr
    pids = [int((tmp_path / f"pid_{i}").read_text()) for i in range(2)]
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids), "a process was left behind"


def test_local_stops_everything_when_stopped(tmp_path):
    # One process that would sleep for two minutes; local.sh gets SIGTERM (or Ctrl-C).
    proc = subprocess.Popen(["bash", "launch/local.sh", "--log-dir", str(tmp_path), "--module",
                             "tests.multiprocess_worker", "1", "1", "--", "--mode=fail_one",
                             f"--out={tmp_path}"], cwd=REPO, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "pid_0").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        pid = int((tmp_path / "pid_0").read_text())
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130 and "stopping all processes" in err
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), "a process was left behind"


def test_local_rejects_bad_counts():
    result = run("launch/local.sh", "0", "2", env=clean_env())
    assert result.returncode == 2 and "N must be a positive integer" in result.stderr


# --- tpu_vm.sh and slurm.sh: the commands they would run --------------------------------


def test_tpu_vm_dry_run():
    weird = "--config.init_from=gs://b/run 1/it's"
    result = run("launch/tpu_vm.sh", "--name=my-tpu", "--zone", "us-central2-b",
                 "--project=p", "--config=configs/multitask.py:model=resnet152,data=synthetic",
                 "--workdir=gs://bucket/fgmask", "--dry-run", "--", "--config.batch_size=256",
                 weird)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("git -C ") and " archive " in lines[0]
    assert all("--worker=all" in line and "--zone=us-central2-b" in line and "--project=p"
               in line for line in lines[1:])
    assert lines[1].startswith("gcloud compute tpus tpu-vm scp ")
    assert any("'.[tpu]'" in line and "uv venv" in line and "--python 3.12" in line
               for line in lines)
    # The run command, as the workers' shell will split it.
    ssh = shlex.split(lines[-1])
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
    command = next(w for w in ssh if w.startswith("--command="))[len("--command="):]
    words = shlex.split(command)
    assert words[:6] == ["cd", "fgmask_jax", "&&", ".venv/bin/python", "-m", "fgmask_jax.main"]
    assert words[6:] == ["--config=configs/multitask.py:model=resnet152,data=synthetic",
                         "--workdir=gs://bucket/fgmask", "--config.batch_size=256", weird]


def test_tpu_vm_refuses_a_workdir_of_one_worker():
    result = run("launch/tpu_vm.sh", "--name=t", "--zone=z", "--config=c",
                 "--workdir=/tmp/run", "--dry-run")
    assert result.returncode == 2 and "gs://" in result.stderr
    result = run("launch/tpu_vm.sh", "--name=t", "--zone=z", "--repo=https://example.org/r.git",
                 "--install-only", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "git clone --quiet https://example.org/r.git fgmask_jax" in result.stdout
    assert "fgmask_jax.main" not in result.stdout


@pytest.mark.parametrize("per, cpus", [("node", 64), ("gpu", 8)])
def test_slurm_dry_run(per, cpus):
    result = run("launch/slurm.sh", "--nodes", "2", "--gpus-per-node", "8", "--per", per,
                 "--partition=gpu", "--config=configs/multitask.py:model=resnet152",
                 "--workdir=/shared/fgmask", "--dry-run", "--", "--config.batch_size=256")
    assert result.returncode == 0, result.stderr
    words = shlex.split(result.stdout)
    ntasks = 1 if per == "node" else 8
    assert words[0] == "sbatch" and "--nodes=2" in words and "--gres=gpu:8" in words
    assert f"--ntasks-per-node={ntasks}" in words and f"--cpus-per-task={cpus}" in words
    assert "--partition=gpu" in words and "--export=ALL,FGMASK_EXTRA=cuda12" in words
    script = words.index(str(REPO / "launch" / "slurm.sbatch"))
    assert words[script + 1:] == ["--config=configs/multitask.py:model=resnet152",
                                  "--workdir=/shared/fgmask", "--config.batch_size=256"]


def test_slurm_batch_script_checks_its_job():
    result = run("launch/slurm.sbatch", "--config=c", "--workdir=/shared/x", env=clean_env())
    assert result.returncode == 2 and "submit it with sbatch" in result.stderr
    env = clean_env(SLURM_JOB_ID="7", SLURM_JOB_NUM_NODES="2")
    result = run("launch/slurm.sbatch", "--config=c", "--workdir=/tmp/x", env=env)
    assert result.returncode == 2 and "node-local" in result.stderr
