"""A run trained on 4 devices, read back by a process that has 1: predicted, exported, used
as ``init_from`` and resumed there, with the predictions of the 4-device process."""

import json
import os
import subprocess
import sys

import numpy as np
from test_train import tiny_config

from fgmask_jax import train
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
config.num_train_steps = 9  # the run resumed here, on 1 device, from its step 6
print(json.dumps([tuned, train.train_and_evaluate(config, run)["steps"]]))
"""


def test_a_run_of_4_devices_is_predicted_exported_tuned_and_resumed_on_1(small_data_dir, tmp_path):
    import jax

    assert jax.device_count() == 4  # conftest: four virtual CPU devices
    run = tmp_path / "run"
    train.train_and_evaluate(tiny_config(small_data_dir), str(run))
    source = pipeline.open_split("synthetic_masked_faces/small", "test", small_data_dir)
    images = pipeline.load_all(source, np.arange(len(source)), 32)["image"]
    np.save(tmp_path / "images.npy", images)
    here = Predictor.from_workdir(run, batch_size=8).probabilities(images)

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    result = subprocess.run([sys.executable, "-c", ONE_DEVICE, str(run), str(tmp_path)],
                            capture_output=True, text=True, timeout=600, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [2, 9]
    # Resumed from its step 6 (not set aside, not started over): the change is recorded.
    assert not [n for n in os.listdir(run / "checkpoints") if "damaged" in n]
    history = [json.loads(line) for line in open(run / "config_history.jsonl")]
    assert history[-1]["changes"]["num_train_steps"] == {"was": 6, "now": 9}
    for name in ("one.npz", "served.npz"):
        with np.load(tmp_path / name) as there:
            for task, p in here.items():
                np.testing.assert_allclose(there[task], p, atol=1e-5, err_msg=name)
    assert "init_from" in json.loads((tmp_path / "tuned" / "config.json").read_text())
