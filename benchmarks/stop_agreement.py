"""What agreeing on a stop costs: the train step with its stop reduction, and without.

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python benchmarks/stop_agreement.py
  python benchmarks/stop_agreement.py --models=resnet18 --sizes=64 --batch_sizes=32   # a GPU

Every step of a run hands each process's pending signal to the step (one int32 per device)
and returns their maximum with the other scalars, so that all processes stop at the same
step (`train.Steps.train`). The peer here is the very same jitted step with that output
dropped, which XLA then leaves out: the ratio is the step's time with the reduction over
its time without (1.00: free). Both run on every local device, interleaved, on one batch.
"""

from __future__ import annotations

import functools
import time

import jax
import numpy as np
from absl import app, flags

from fgmask_jax import config_lib, runs, train
from fgmask_jax.train.steps import train_step

_MODELS = flags.DEFINE_list("models", ["resnet_tiny", "resnet18"], "Models.")
_SIZES = flags.DEFINE_list("sizes", ["32"], "Input sides in pixels.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["32"], "Global batch sizes.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per side and round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds; the best round counts.")

TASKS = {"age_group": 4, "gender": 2, "expression": 3}


def seconds_per_step(step, state, batch, *extra) -> tuple[float, object]:
    start = time.perf_counter()
    for _ in range(_STEPS.value):
        state, scalars = step(state, batch, *extra)
    jax.block_until_ready(scalars)
    return (time.perf_counter() - start) / _STEPS.value, state


def compare(model: str, size: int, batch: int) -> tuple[float, float]:
    """(ms per step with the stop reduction, ms without), best of the rounds."""
    c = config_lib.neural_config(f"model={model},size={size}", tasks=tuple(TASKS))
    c.batch_size, c.warmup_epochs = batch, 0.0
    c.augment.update(flip=False, min_scale=1.0, color_jitter=0.0)
    tx, _ = train.make_optimizer(c, steps_per_epoch=100, total_steps=1000)
    model_ = runs.make_model(c)
    steps = train.Steps(model_, tx, c, train.make_mesh())
    rng = np.random.default_rng(0)
    host = {"image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)}
    host.update({t: rng.integers(0, n, batch).astype(np.int32) for t, n in TASKS.items()})
    data = jax.device_put(host, steps.data)

    def without_stop(state, batch, flag):
        state, scalars = train_step(state, batch, flag, model=model_, tx=tx, config=c)
        return state, {k: v for k, v in scalars.items() if k != "stop"}

    plain = jax.jit(without_stop, in_shardings=(steps.replicated, steps.data, steps.data),
                    out_shardings=(steps.replicated, steps.replicated), donate_argnums=0)
    flag = jax.make_array_from_process_local_data(
        steps.data, np.zeros(len(steps.mesh.local_devices), np.int32))
    with_stop = functools.partial(steps.train, signum=None)
    state = steps.init(jax.random.key(0))
    for step, extra in ((with_stop, ()), (plain, (flag,))):  # compile, warm up
        _, state = seconds_per_step(step, state, data, *extra)
    best = [float("inf"), float("inf")]
    for _ in range(_ROUNDS.value):
        for i, (step, extra) in enumerate(((with_stop, ()), (plain, (flag,)))):
            seconds, state = seconds_per_step(step, state, data, *extra)
            best[i] = min(best[i], seconds)
    return best[0] * 1e3, best[1] * 1e3


def main(argv):
    del argv
    print(f"JAX on {jax.device_count()} x {jax.devices()[0].device_kind}; best of "
          f"{_ROUNDS.value} rounds of {_STEPS.value} steps")
    print(f"{'model':<12} {'size':>5} {'batch':>6} {'with ms':>8} {'without ms':>11} "
          f"{'ratio':>6}")
    for model in _MODELS.value:
        for size in map(int, _SIZES.value):
            for batch in map(int, _BATCHES.value):
                with_ms, without_ms = compare(model, size, batch)
                print(f"{model:<12} {size:>5} {batch:>6} {with_ms:>8.2f} {without_ms:>11.2f} "
                      f"{with_ms / without_ms:>6.3f}", flush=True)


if __name__ == "__main__":
    app.run(main)
