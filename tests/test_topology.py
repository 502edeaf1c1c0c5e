"""A run trained on 4 devices and stopped by SIGTERM, read back by processes that have 1 and
2: predicted, exported, used as ``init_from`` and resumed there, with the predictions of
the 4-device process."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from test_train import tiny_config

from fgmask_jax import signals, train
from fgmask_jax.data import pipeline
from fgmask_jax.inference import Predictor

ONE_DEVICE = """
import json, sys
import jax
import numpy as np
from fgmask_jax import config_lib, runs, train
from fgmask_jax.inference import Predictor
from fgmask_jax.inference.export import export_run

run, out = sys.argv[1], sys.argv[2]
assert jax.device_count() == 1, jax.devices()
images = np.load(out + "/images.npy")
np.savez(out + "/one.npz", **Predictor.from_workdir(run, batch_size=8).probabilities(images))
export_run(run, out + "/served")
np.savez(out + "/served.npz",
         **Predictor.from_workdir(out + "/served", batch_size=8).probabilities(images))
config = runs.read_config(run)
config.init_from, config.num_train_steps = run, 2
config.eval_every_steps = config.checkpoint_every_steps = 2
tuned = train.train_and_evaluate(config, out + "/tuned")["steps"]
config = runs.read_config(run)
config.num_train_steps = 9  # the run resumed here, on 1 device, from its step 3
print(json.dumps([tuned, train.train_and_evaluate(config, run)["steps"]]))
"""

TWO_DEVICES = """
import sys
import jax
from fgmask_jax import runs, train

assert jax.device_count() == 2, jax.devices()
print(train.train_and_evaluate(runs.read_config(sys.argv[1]), sys.argv[1])["steps"])
"""


LOG_TO_STDERR = ("from absl import logging; logging.use_absl_handler(); "
                 "logging.set_verbosity('info')\n")


def run_with_devices(n: int, script: str, run, *args) -> str:
    """Runs ``script`` on ``n`` devices; checks that it resumed ``run`` from its step 3;
    returns its last line of output."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
    result = subprocess.run([sys.executable, "-c", LOG_TO_STDERR + script, str(run),
                             *map(str, args)],
                            capture_output=True, text=True, timeout=600, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resumed from {run / 'checkpoints'} at step 3" in result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_a_run_of_4_devices_stopped_by_sigterm_goes_on_with_1_or_2(small_data_dir, tmp_path,
                                                                   monkeypatch):
    import jax

    assert jax.device_count() == 4  # conftest: four virtual CPU devices
    real_steps, calls = train.Steps, []

    class SigtermAtStep3(real_steps):  # the cluster's notice comes during step 3
        def train(self, state, batch, signum=None, seen=None):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().train(state, batch, signum, seen)

    monkeypatch.setattr(train.fit, "Steps", SigtermAtStep3)
    run = tmp_path / "run"
    # A process alone stops at the step it received the signal, with all its devices.
    with pytest.raises(signals.Interrupted, match="stopped by SIGTERM at step 3 of 6"):
        train.train_and_evaluate(tiny_config(small_data_dir), str(run))
    monkeypatch.setattr(train.fit, "Steps", real_steps)
    shutil.copytree(run, tmp_path / "run_for_2")
    source = pipeline.open_split("synthetic_masked_faces/small", "test", small_data_dir)
    images = pipeline.load_all(source, np.arange(len(source)), 32)["image"]
    np.save(tmp_path / "images.npy", images)
    here = Predictor.from_workdir(run, batch_size=8).probabilities(images)

    assert json.loads(run_with_devices(1, ONE_DEVICE, run, tmp_path)) == [2, 9]
    assert run_with_devices(2, TWO_DEVICES, tmp_path / "run_for_2") == "6"
    # Resumed from step 3 (not set aside, not started over); the change is recorded.
    for folder in (run, tmp_path / "run_for_2"):
        assert not [n for n in os.listdir(folder / "checkpoints") if "damaged" in n]
    history = [json.loads(line) for line in open(run / "config_history.jsonl")]
    assert history[-1]["changes"]["num_train_steps"] == {"was": 6, "now": 9}
    for name in ("one.npz", "served.npz"):
        with np.load(tmp_path / name) as there:
            for task, p in here.items():
                np.testing.assert_allclose(there[task], p, atol=1e-5, err_msg=name)
    assert "init_from" in json.loads((tmp_path / "tuned" / "config.json").read_text())
