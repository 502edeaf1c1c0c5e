"""The commands as a user types them: relative paths, Ctrl-C and SIGTERM, mistakes, --help."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from test_train import _files, final_state

from fgmask_jax import checkpointing, config_lib, train

REPO = Path(__file__).resolve().parents[1]
SPEC = "configs/multitask.py:data=synthetic,model=resnet_tiny,size=32"


def main_command(cwd: Path, data_dir: str, workdir: str, *overrides: str) -> list[str]:
    """``python -m fgmask_jax.main`` on the 60-image set, with paths relative to ``cwd``."""
    config = os.path.relpath(REPO / SPEC.split(":")[0], cwd) + ":" + SPEC.split(":")[1]
    return [sys.executable, "-m", "fgmask_jax.main", f"--config={config}",
            f"--workdir={workdir}", "--config.dataset=synthetic_masked_faces/small",
            f"--config.data_dir={os.path.relpath(data_dir, cwd)}",
            "--config.batch_size=8", "--config.warmup_epochs=0", "--config.saliency_images=0",
            *overrides]


def run(command, cwd, timeout=300, env=None):
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False, env=env)


def test_relative_workdir_from_another_directory(small_data_dir, tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    command = main_command(cwd, small_data_dir, "runs/rel", "--config.num_train_steps=4",
                           "--config.checkpoint_every_steps=2", "--config.eval_every_steps=2")
    # Without JAX_COMPILATION_CACHE_DIR, the default compilation cache is used and filled.
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"))
    result = run(command, cwd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.listdir(tmp_path / "cache" / "fgmask_jax" / "xla")
    assert "compilation cache" not in result.stderr  # no warning that it could not be used
    workdir = cwd / "runs" / "rel"
    assert (workdir / "results.json").exists() and (workdir / "report.md").exists()
    assert checkpointing.Checkpointer(str(workdir / "checkpoints")).all_steps() == [2, 4]
    assert "Test metrics" in result.stderr and "Traceback" not in result.stderr
    assert "Unable to initialize backend" not in result.stderr  # library noise is quiet


LONG = ("--config.num_train_steps=150", "--config.log_every_steps=5",
        "--config.checkpoint_every_steps=50", "--config.eval_every_steps=75")


@pytest.fixture(scope="module")
def uninterrupted(small_data_dir, tmp_path_factory):
    """The workdir of the LONG run, trained without interruption."""
    config = config_lib.load(str(REPO / SPEC))
    config.update(dataset="synthetic_masked_faces/small", data_dir=small_data_dir,
                  batch_size=8, warmup_epochs=0.0, saliency_images=0)
    for item in LONG:
        key, value = item[len("--config."):].split("=")
        config[key] = int(value)
    workdir = tmp_path_factory.mktemp("uninterrupted")
    train.train_and_evaluate(config, str(workdir))
    return workdir


def _interrupt(command, cwd: Path, signum: int, after: str) -> int:
    """Runs ``command``, sends ``signum`` once ``after`` is logged; checks the one-line
    message and the exit code; returns the step it stopped at."""
    log = cwd / "stderr.txt"
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr,
                                   text=True)
        deadline = time.monotonic() + 240
        while after not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        process.send_signal(signum)
        assert process.wait(timeout=120) == 128 + signum
    text = log.read_text()
    assert "Traceback" not in text
    last = text.strip().splitlines()[-1]
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    assert last.startswith(f"fgmask_jax.main: stopped by {name} at step "), last
    step = int(last.split(" at step ")[1].split()[0])
    assert f"saved a checkpoint at step {step} in {cwd / 'run' / 'checkpoints'}" in last
    assert final_state(cwd / "run")[0] == step
    return step


def test_ctrl_c_and_sigterm_stop_with_one_line_and_the_rerun_ends_bitwise_equal(
        small_data_dir, tmp_path, uninterrupted):
    command = main_command(tmp_path, small_data_dir, "run", *LONG)
    first = _interrupt(command, tmp_path, signal.SIGINT, "step 10/150")  # exit code 130
    assert 10 <= first < 150
    # Resumed, then stopped again by SIGTERM (a cluster's preemption notice): 143.
    second = _interrupt(command, tmp_path, signal.SIGTERM, "first step done")
    assert f"Resumed from {tmp_path / 'run' / 'checkpoints'} at step {first}" in (
        tmp_path / "stderr.txt").read_text()
    assert first < second < 150

    result = run(command, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resumed from {tmp_path / 'run' / 'checkpoints'} at step {second}" in result.stderr
    _assert_same_end(uninterrupted, tmp_path / "run")


def test_a_signal_during_the_clean_up_after_the_stop_line_ends_the_process_quietly(tmp_path):
    # The line is printed and the saves are done; a second SIGTERM then lands in the
    # interpreter's clean-up (here an atexit hook, as JAX's own clean-up is).
    script = ("import atexit, os, signal, time\n"
              "from fgmask_jax import cli, signals\n"
              "signals.terminate_like_interrupt()\n"
              "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(5)))\n"
              "cli.fail('prog', 'stopped by SIGTERM at step 3', 143)\n")
    result = run([sys.executable, "-c", script], tmp_path, timeout=60)
    assert result.stderr.strip() == "prog: stopped by SIGTERM at step 3", result.stderr
    assert result.returncode == -signal.SIGTERM


def _assert_same_end(workdir_a: Path, workdir_b: Path) -> None:
    """The two runs of LONG ended bitwise equal, with the same test metrics."""
    step_a, state_a, meta_a = final_state(workdir_a)
    step_b, state_b, meta_b = final_state(workdir_b)
    assert step_a == step_b == 150 and meta_a == meta_b
    jax.tree.map(np.testing.assert_array_equal, state_a, state_b)  # bitwise
    results_a, results_b = (json.loads((w / "results.json").read_text())["test"]
                            for w in (workdir_a, workdir_b))
    assert results_a == results_b


def _kill_when(command, cwd: Path, ready, what: str) -> None:
    """Runs ``command`` and SIGKILLs it (no cleanup, no last save) as soon as
    ``ready(log text)`` holds."""
    log = cwd / "stderr.txt"
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 240
        while not ready(log.read_text()):
            assert process.poll() is None and time.monotonic() < deadline, \
                f"never {what}:\n{log.read_text()[-3000:]}"
            time.sleep(0.002)
        process.kill()
        assert process.wait(timeout=60) == -signal.SIGKILL


def test_sigkill_while_compiling_training_or_saving_loses_nothing(small_data_dir, tmp_path,
                                                                  uninterrupted):
    command = main_command(tmp_path, small_data_dir, "run", *LONG)
    checkpoints = tmp_path / "run" / "checkpoints"

    def saving(_) -> bool:  # Orbax writes a step into a temporary folder, then renames it
        return checkpoints.is_dir() and any("tmp" in n for n in os.listdir(checkpoints))

    _kill_when(command, tmp_path, lambda text: "data on " in text, "compiled")
    _kill_when(command, tmp_path, lambda text: "step 60/150" in text, "trained")
    # Resumed from step 50, saving every 5 steps: killed while one is written.
    _kill_when([*command, "--config.checkpoint_every_steps=5"], tmp_path, saving, "saved")

    # A rerun with another model is refused in a line or so and changes nothing.
    def state():  # the SIGKILLed run's stale run.lock is taken over: not compared
        return [_files(tmp_path / "run" / name) for name in ("checkpoints", "best")] + [
            (tmp_path / "run" / "config.json").read_bytes()]

    before = state()
    refused = run([*command, "--config.model=cnn"], tmp_path)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) <= 3, refused.stderr
    assert "holds a run with model='resnet_tiny', not 'cnn'" in lines[-1], lines[-1]
    assert state() == before
    result = run(command, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resumed from" in result.stderr and "damaged" not in result.stderr
    _assert_same_end(uninterrupted, tmp_path / "run")


@pytest.mark.parametrize("args, message", [
    (["--config=configs/multitask.py:model=resnet999"],
     "config variant model='resnet999' is not one of: resnet18"),
    (["--config=configs/nope.py"],
     "config file 'configs/nope.py' not found; the configs are: configs/eigenface.py"),
    (["--config=configs/multitask.py:data=synthetic,modle=cnn"],
     "unknown config variant 'modle'"),
    (["--config=configs/multitask.py", "--config.learning_rat=0.1"],
     "unknown config key 'learning_rat' (--config.learning_rat). Valid keys: augment.color_jitter"),
    (["--config=configs/multitask.py", "--config.batch_size=many"],
     "flag --config.batch_size=many"),
    (["--config=configs/multitask.py", "--config.model=resnet999"],
     "config.model='resnet999' is not one of: resnet18"),
    (["--config=configs/multitask.py:protocol=photos", "--workdir=x"],
     "config variant protocol='photos' is not one of: study, subject, photo, lopo"),
    (["--config=configs/multitask.py", "--config.init_from=runs/nope", "--workdir=x"],
     "config.init_from='runs/nope': no such folder"),
    (["--config=configs/multitask.py", "--config.profile_steps=(5,2)", "--workdir=x"],
     "config.profile_steps=(5, 2): give (first, last), two steps with 1 <= first <= last"),
    (["--workdir=x"], "--config is required"),
    (["--config=configs/multitask.py"], "--workdir is required"),
])
def test_user_errors_are_one_line_and_exit_2(args, message):
    result = run([sys.executable, "-m", "fgmask_jax.main", *args], REPO, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.count("\n") == 1, result.stderr  # one line, no traceback
    assert result.stderr.startswith("fgmask_jax.main: ") and message in result.stderr


def test_missing_dataset_says_where_the_archive_goes_and_leaves_nothing(tmp_path):
    data_dir = tmp_path / "tfds"
    result = run([sys.executable, "-m", "fgmask_jax.main", "--config=configs/multitask.py",
                  f"--config.data_dir={data_dir}", f"--workdir={tmp_path / 'run'}"], REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "FGNET-MASK_dataset.zip" in result.stderr and "--manual_dir" in result.stderr
    assert not data_dir.exists()  # no empty downloads/ or fgnet_mask/ folders left


def test_bad_archive_is_a_user_error(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "FGNET-MASK_dataset.zip").write_bytes(b"PK\x03\x04 cut short")
    result = run([sys.executable, "-m", "fgmask_jax.build_data", "--dataset=fgnet_mask",
                  f"--data_dir={tmp_path / 'tfds'}", f"--manual_dir={manual}"], REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not a readable zip" in result.stderr


def test_help_lists_configs_variants_and_keys():
    result = run([sys.executable, "-m", "fgmask_jax.main", "--help"], REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    for text in ("configs/multitask.py", "configs/lbp.py", "protocol=study|subject|photo|lopo",
                 "model=resnet18|", "--print_config", "--config.KEY=VALUE"):
        assert text in result.stdout
    keys = run([sys.executable, "-m", "fgmask_jax.main", "--config=configs/multitask.py",
                "--print_config"], REPO, timeout=120)
    assert keys.returncode == 0 and "learning_rate: 0.1" in keys.stdout


RAISES = """
import sys
from fgmask_jax import cli, errors

def main(argv):
    raise {error}

cli.run(main, prog="demo")
"""


@pytest.mark.parametrize("error, code, one_line", [
    ("errors.DataError('photos/: no images; give a folder of .jpg files')", 2, True),
    ("errors.RunNotFoundError('run/: no such folder')", 2, True),
    ("errors.CheckpointError('checkpoints/7 does not restore')", 1, True),
    ("ValueError('a bug: shapes (3,) and (4,) do not match')", 1, False),
])
def test_user_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, error, code,
                                                               one_line):
    script = tmp_path / "command.py"
    script.write_text(RAISES.format(error=error))
    result = run([sys.executable, str(script)], tmp_path, timeout=120)
    assert result.returncode == code, result.stderr[-2000:]
    message = error.split("'")[1]
    if one_line:
        assert result.stderr == f"demo: {message}\n"
    else:
        assert "Traceback" in result.stderr and message in result.stderr


@pytest.mark.parametrize("command, args, message", [
    ("fgmask_jax.export", ["--workdir=runs/x"], "--out is required: "),
    ("fgmask_jax.build_data", [], "--dataset is required: Dataset to build: one of "),
])
def test_a_missing_required_flag_is_one_line_naming_it(tmp_path, command, args, message):
    result = run([sys.executable, "-m", command, *args], REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"{command}: {message}")


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (about six checkpoints of resnet_tiny), unmounted afterwards; skips
    where this process may not mount one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_is_one_line_and_the_last_checkpoint_resumes(small_data_dir, tmp_path,
                                                                 small_disk):
    command = main_command(tmp_path, small_data_dir, "disk/run", "--config.num_train_steps=12",
                           "--config.checkpoint_every_steps=1", "--config.keep_checkpoints=100",
                           "--config.eval_every_steps=12")
    result = run(command, tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr, result.stderr[-5000:]
    assert last.startswith("fgmask_jax.main: the disk"), last
    assert "is full" in last and "rerun the same command" in last
    saved = checkpointing.Checkpointer(str(small_disk / "run" / "checkpoints")).latest_step()
    assert saved and saved < 12

    # Space freed: the same command resumes from the last checkpoint and finishes.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    result = run(command, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resumed from {small_disk / 'run' / 'checkpoints'} at step {saved}" in result.stderr
