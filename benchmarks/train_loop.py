"""The whole training run beside its step alone: how much validation, checkpoints and input
cost, and how long a run takes to reach its first step, cold and warm.

  python benchmarks/train_loop.py --config=configs/multitask.py:data=synthetic,runlocal

Three measurements of one config:
1. the step alone: our real jitted `train.train_step` (augmentation included) on one batch
   already on the device, repeated;
2. a cold run: ``python -m fgmask_jax.main`` with that config in a new workdir and an empty
   compilation cache; its training rate (every step after the first, with validation and
   checkpoints as configured, from its results.json) and the seconds from the command's
   start to the end of its first step (data, initialisation and compilation);
3. a warm run: the same command in another new workdir, with the cache the cold run filled.
The ratio is the run's rate over the step's: 1.0 would mean nothing but steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from fgmask_jax import config_lib, runs, train
from fgmask_jax.data import pipeline
from fgmask_jax.experiments import study

_CONFIG = flags.DEFINE_string("config", "configs/multitask.py:data=synthetic,runlocal",
                              "A config file with variants, as --config= of fgmask_jax.main.")
_OVERRIDES = flags.DEFINE_multi_string(
    "override", [], "A config field for every measurement, e.g. --override=batch_size=256.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data folder (default: the config's).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps of the step alone (after 2 warm-up).")


def load_config():
    config = config_lib.load(_CONFIG.value)
    study.apply_overrides(config, [item.split("=", 1) for item in _OVERRIDES.value])
    if _DATA_DIR.value:
        config.data_dir = _DATA_DIR.value
    return config


def step_alone(config) -> float:
    """Images/s of the jitted train step on one device-resident batch of real images."""
    steps_per_epoch = 100
    tx, _ = train.make_optimizer(config, steps_per_epoch, steps_per_epoch * 10)
    steps = train.Steps(runs.make_model(config), tx, config, train.make_mesh())
    state = steps.init(jax.random.key(config.seed))
    source = pipeline.open_split(config.dataset, "train", pipeline.data_dir(config))
    batch = pipeline.load_all(source, np.arange(config.batch_size), config.image_size)
    batch = jax.device_put(batch, steps.data)
    for _ in range(2):
        state, metrics = steps.train(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(_STEPS.value):
        state, metrics = steps.train(state, batch)
    jax.block_until_ready(metrics)
    return _STEPS.value * config.batch_size / (time.perf_counter() - start)


def whole_run(workdir: str, cache: str) -> tuple[float, float, float]:
    """(seconds from the command's start to its first step done, training images/s, the
    command's wall seconds) of one ``fgmask_jax.main`` run."""
    command = [sys.executable, "-m", "fgmask_jax.main", f"--config={_CONFIG.value}",
               f"--workdir={workdir}"]
    command += [f"--config.{item}" for item in _OVERRIDES.value]
    if _DATA_DIR.value:
        command.append(f"--config.data_dir={_DATA_DIR.value}")
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache}
    start = time.perf_counter()
    first = None
    with subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as p:
        for line in p.stderr:
            if first is None and "first step done" in line:
                first = time.perf_counter() - start
    wall = time.perf_counter() - start
    if p.returncode:
        raise SystemExit(f"{' '.join(command)} failed with exit code {p.returncode}")
    with open(os.path.join(workdir, "results.json")) as f:
        timing = json.load(f)["timing"]
    return first, timing["train_images_per_s"], wall


def main(argv):
    del argv
    config = load_config()
    print(f"{_CONFIG.value} {' '.join(_OVERRIDES.value)}: {config.model} at "
          f"{config.image_size} px, batch {config.batch_size}, on {jax.device_count()} x "
          f"{jax.devices()[0].device_kind}")
    with tempfile.TemporaryDirectory(prefix="train-loop-") as tmp:
        cache = os.path.join(tmp, "cache")
        cold = whole_run(os.path.join(tmp, "cold"), cache)
        warm = whole_run(os.path.join(tmp, "warm"), cache)
    alone = step_alone(config)
    print(f"{'step alone img/s':>17} {'run img/s':>10} {'ratio':>6} {'first step cold s':>18} "
          f"{'warm s':>7} {'run cold s':>11} {'warm s':>7}")
    rate = (cold[1] + warm[1]) / 2
    print(f"{alone:>17.1f} {rate:>10.1f} {rate / alone:>6.2f} {cold[0]:>18.1f} "
          f"{warm[0]:>7.1f} {cold[2]:>11.1f} {warm[2]:>7.1f}")


if __name__ == "__main__":
    app.run(main)
