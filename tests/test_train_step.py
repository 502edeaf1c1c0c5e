"""The jitted steps on their own: data parallelism, losses, metrics."""

import functools

import jax
import numpy as np
import pytest

from fgmask_jax import config_lib, runs, train
from fgmask_jax.train.state import init_state
from fgmask_jax.train.steps import train_step

TASKS = ("age_group", "gender", "expression")


def tiny_config(**overrides):
    c = config_lib.neural_config("model=resnet_tiny,size=32", tasks=TASKS)
    c.batch_size = 8
    c.warmup_epochs = 0.0  # so that the first step already moves the parameters
    c.update(overrides)
    return c


def random_batch(n, size, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        "age_group": rng.integers(0, 4, n).astype(np.int32),
        "gender": rng.integers(0, 2, n).astype(np.int32),
        "expression": rng.integers(0, 3, n).astype(np.int32),
        "mask": np.ones(n, bool),
    }


def one_step(config, devices):
    model = runs.make_model(config)
    tx, _ = train.make_optimizer(config, steps_per_epoch=10, total_steps=100)
    steps = train.Steps(model, tx, config, train.make_mesh(devices))
    state = steps.init(jax.random.key(0))
    batch = {k: jax.device_put(v, steps.data) for k, v in random_batch(8, 32).items()}
    state, scalars = steps.train(state, batch)
    return jax.device_get(state.params), jax.device_get(state.batch_stats), scalars


def test_four_devices_equal_one_device():
    assert jax.device_count() == 4, "tests/conftest.py asks XLA for 4 CPU devices"
    params4, stats4, scalars4 = one_step(tiny_config(), jax.devices())
    params1, stats1, scalars1 = one_step(tiny_config(), jax.devices()[:1])
    assert float(scalars4["loss"]) == pytest.approx(float(scalars1["loss"]), rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 (params4, stats4), (params1, stats1))
    # The step did move the parameters.
    params0 = jax.device_get(train.Steps(
        runs.make_model(tiny_config()), train.make_optimizer(tiny_config(), 10, 100)[0],
        tiny_config(), train.make_mesh(jax.devices()[:1])).init(jax.random.key(0)).params)
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), params0, params1))
    assert max(moved) > 0


def test_uncertainty_weighting_learns_task_weights():
    params, _, _ = one_step(tiny_config(uncertainty_weighting=True, optimizer="adamw",
                                        learning_rate=0.1), jax.devices())
    assert all(abs(float(v)) > 0 for v in params["log_vars"].values())
    params, _, _ = one_step(tiny_config(), jax.devices())
    assert all(float(v) == 0 for v in params["log_vars"].values())


def test_eval_step_masks_padding():
    config = tiny_config()
    model = runs.make_model(config)
    tx, _ = train.make_optimizer(config, 10, 100)
    steps = train.Steps(model, tx, config, train.make_mesh())
    state = steps.init(jax.random.key(0))
    batch = random_batch(8, 32)
    batch["mask"][5:] = False
    out = jax.device_get(steps.eval(state, {k: jax.device_put(v, steps.data)
                                            for k, v in batch.items()}))
    assert out["pred_gender"].shape == (8,) and out["mask"].sum() == 5
    np.testing.assert_array_equal(out["label_expression"], batch["expression"])


def test_bfloat16_train_steps_track_float32():
    """ResNet-18 (32 px, batch 8, the CPU kernels) from the same initial state on the same
    batch, six steps of the real train step in bfloat16 and in float32: the loss of every
    step agrees to 5% relative (measured: at most 1.9%; bfloat16 keeps 8 bits of mantissa),
    while the loss itself moves by far more (the steps fit the batch). Compiled with XLA's
    backend optimisations off, which change no arithmetic here and halve the compile."""
    fast = {"xla_backend_optimization_level": 0}
    batch, stop = random_batch(8, 32), np.zeros(1, np.int32)
    seen = {"stop": np.int32(0), "bad_step": np.int32(0)}
    losses, initial = {}, None
    for dtype in ("float32", "bfloat16"):
        config = tiny_config(model="resnet18", dtype=dtype)
        model = runs.make_model(config)
        tx, _ = train.make_optimizer(config, steps_per_epoch=10, total_steps=100)
        if initial is None:  # float32 parameters in both: one initial state
            init = jax.jit(functools.partial(init_state, model, tx, config))
            initial = init.lower(jax.random.key(0)).compile(fast)(jax.random.key(0))
        state = initial  # this jit donates nothing: both runs start from the same arrays
        step = jax.jit(functools.partial(train_step, model=model, tx=tx, config=config)).lower(
            state, batch, stop, seen).compile(fast)
        losses[dtype] = []
        for _ in range(6):
            state, scalars = step(state, batch, stop, seen)
            losses[dtype].append(float(scalars["loss"]))
    f32, bf16 = np.array(losses["float32"]), np.array(losses["bfloat16"])
    assert np.all(np.abs(bf16 - f32) <= 0.05 * f32), (f32, bf16)
    assert f32.min() < 0.8 * f32[0]  # the steps learn: not an agreement of two flat lines
