"""Every command keeps XLA's compiled programs in a persistent cache, on by default."""

import os
import subprocess
import sys
from pathlib import Path

from fgmask_jax import cli

REPO = Path(__file__).resolve().parents[1]


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cli.compilation_cache_dir() == str(tmp_path / "fgmask_jax" / "xla")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")  # set empty: no cache
    assert cli.compilation_cache_dir() == ""


def test_a_run_fills_the_default_cache(small_data_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    command = [sys.executable, "-m", "fgmask_jax.main",
               "--config=configs/multitask.py:data=synthetic,model=resnet_tiny,size=32",
               f"--workdir={tmp_path / 'run'}", "--config.dataset=synthetic_masked_faces/small",
               f"--config.data_dir={small_data_dir}", "--config.batch_size=8",
               "--config.num_train_steps=2", "--config.saliency_images=0"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compilation cache" not in result.stderr  # no warning that it could not be used
    assert os.listdir(tmp_path / "cache" / "fgmask_jax" / "xla")
