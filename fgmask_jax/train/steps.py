"""The pure step functions of a run and their jitted forms over one device mesh.

Data parallelism is one `jax.jit` over a mesh ``('data',)``: the batch is sharded
along ``data``, the state replicated, and XLA all-reduces the gradients. That is
what ``pmap`` did, in its current form; it spans every device of every host
unchanged, and BatchNorm sees the global batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fgmask_jax import errors, runs
from fgmask_jax.data import pipeline
from fgmask_jax.train import optim
from fgmask_jax.train.state import TrainState, init_state, model_variables


def task_losses(logits: dict, batch: dict, label_smoothing: float = 0.0) -> dict[str, jax.Array]:
    """Per-example cross-entropy of each task: {task: float32[B]}."""
    out = {}
    for task, z in logits.items():
        labels = optax.smooth_labels(jax.nn.one_hot(batch[task], z.shape[-1]), label_smoothing)
        out[task] = optax.softmax_cross_entropy(z.astype(jnp.float32), labels)
    return out


def train_step(state: TrainState, batch: dict, stop: jax.Array, seen: dict, *, model, tx,
               config) -> tuple[TrainState, dict]:
    """One optimiser step on a global batch; returns the new state and scalar metrics.

    ``stop``: int32[devices], each process's pending signal (0 for none) on its devices.
    ``seen``: {"stop", "bad_step"} of the step before (zeros at first). ``scalars["stop"]``
    is the largest signal of this step and those before, the same on every process;
    ``scalars["bad_step"]`` the first step whose loss or parameters were not finite (0:
    none). The host reads both only when it syncs anyway (`loop.Loop`), never every step.
    """
    step_rng = jax.random.fold_in(state.rng, state.step)
    aug_rng, dropout_rng = jax.random.split(step_rng)
    images = pipeline.augment(aug_rng, batch["image"], **config.augment)
    x = pipeline.normalize(images, runs.compute_dtype(config))

    def loss_fn(params):
        logits, updates = model.apply(
            model_variables(params, state.batch_stats), x, train=True,
            mutable=["batch_stats"], rngs={"dropout": dropout_rng},
        )
        losses = task_losses(logits, batch, config.label_smoothing)
        per_task = {t: v.mean() for t, v in losses.items()}
        total = 0.0
        for t, value in per_task.items():
            w = config.loss_weights[t]
            if config.uncertainty_weighting:
                s = params["log_vars"][t]  # log sigma^2 (Kendall et al., 2018)
                total = total + w * (jnp.exp(-s) * value + 0.5 * s)
            else:
                total = total + w * value
        accuracy = {t: (z.argmax(-1) == batch[t]).mean() for t, z in logits.items()}
        return total, (per_task, accuracy, updates.get("batch_stats", {}))

    (loss, (per_task, accuracy, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # The norm of what is trained: frozen parts' gradients, which the optimizer discards,
    # are then used by nothing, and XLA drops their whole backward pass.
    trained = jax.tree.map(lambda g, label: jnp.zeros((), g.dtype) if label == "frozen" else g,
                           grads, optim.param_labels(state.params, config))
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    scalars = {
        "loss": loss,
        "l2_grads": optax.tree.norm(trained["model"]),
        "l2_params": optax.tree.norm(params["model"]),
        **{f"loss_{t}": v for t, v in per_task.items()},
        **{f"accuracy_{t}": v for t, v in accuracy.items()},
    }
    finite = jnp.isfinite(loss) & jnp.isfinite(scalars["l2_params"])
    scalars["stop"] = jnp.maximum(seen["stop"], jnp.max(stop))
    scalars["bad_step"] = jnp.where((seen["bad_step"] == 0) & ~finite,
                                    state.step + 1, seen["bad_step"]).astype(jnp.int32)
    return new_state, scalars


def eval_step(state: TrainState, batch: dict, *, model, config) -> dict:
    """Per-example outputs of a global batch: {pred_t, logits_t, loss_t, label_t, and the
    batch's index and subject_id if it has them: [B], mask: bool[B]}."""
    x = pipeline.normalize(batch["image"], runs.compute_dtype(config))
    logits = model.apply(model_variables(state.params, state.batch_stats), x, train=False)
    losses = task_losses(logits, batch)
    out = {f"pred_{t}": z.argmax(-1).astype(jnp.int32) for t, z in logits.items()}
    out.update({f"logits_{t}": z.astype(jnp.float32) for t, z in logits.items()})
    out.update({f"loss_{t}": v for t, v in losses.items()})
    out.update({f"label_{t}": batch[t] for t in logits})
    for key in ("index", "subject_id", "mask"):  # pipeline batches carry all three
        if key in batch:
            out[key] = batch[key]
    return out


class Steps:
    """The jitted steps of one run over one mesh, and the shardings they use."""

    def __init__(self, model, tx, config, mesh: jax.sharding.Mesh):
        self.mesh = mesh
        self.replicated = NamedSharding(mesh, P())
        self.data = NamedSharding(mesh, P("data"))
        self._train = jax.jit(
            functools.partial(train_step, model=model, tx=tx, config=config),
            in_shardings=(self.replicated, self.data, self.data, self.replicated),
            out_shardings=(self.replicated, self.replicated),
            donate_argnums=0,
        )
        self._flags: dict[int, jax.Array] = {}
        self.nothing_seen = jax.device_put(
            {"stop": np.int32(0), "bad_step": np.int32(0)}, self.replicated)
        self.eval = jax.jit(
            functools.partial(eval_step, model=model, config=config),
            in_shardings=(self.replicated, self.data),
            out_shardings=self.data,
        )
        self.init = jax.jit(
            functools.partial(init_state, model, tx, config), out_shardings=self.replicated
        )
        # Whole-dataset mode: the batch is gathered from the replicated dataset on device.
        self.gather = jax.jit(
            lambda data, index: jax.tree.map(lambda a: a[index], data),
            in_shardings=(self.replicated, self.data),
            out_shardings=self.data,
        )
        # ... and an evaluation batch: index -1 pads the last one (masked out). The batch's
        # "index" is the examples' dataset index, gathered from the data like a label.
        self.gather_eval = jax.jit(
            lambda data, index: {**jax.tree.map(lambda a: a[jnp.maximum(index, 0)], data),
                                 "mask": index >= 0},
            in_shardings=(self.replicated, self.data),
            out_shardings=self.data,
        )
        # A copy of the state in new buffers (the train step donates the state's).
        self.copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree),
                            in_shardings=self.replicated, out_shardings=self.replicated)

    def train(self, state: TrainState, batch: dict, signum: int | None = None,
              seen: dict | None = None) -> tuple[TrainState, dict]:
        """`train_step` over the mesh. ``signum``: a signal this process received (None:
        none); ``seen``: the previous step's scalars (None: the first step). Every process
        reads the same ``scalars["stop"]``, the largest signal number given to this step or
        an earlier one by any process, so that all of them stop at the same step: the
        agreement rides on the step's own collectives, with no extra round trip."""
        flag = int(signum or 0)
        if flag not in self._flags:  # one small array per signal, reused every step
            local = np.full(len(self.mesh.local_devices), flag, np.int32)
            self._flags[flag] = jax.make_array_from_process_local_data(self.data, local)
        seen = self.nothing_seen if seen is None else {k: seen[k] for k in self.nothing_seen}
        return self._train(state, batch, self._flags[flag], seen)

    def lower_train(self, state, batch: dict) -> jax.stages.Lowered:
        """The train step as `train` runs it, lowered for ``state`` and ``batch`` (arrays or
        `jax.ShapeDtypeStruct`s): ``.compile().as_text()`` is the program a device runs."""
        flag = jax.ShapeDtypeStruct((self.mesh.size,), jnp.int32, sharding=self.data)
        return self._train.lower(state, batch, flag, self.nothing_seen)


def check_batch(global_batch: int, mesh: jax.sharding.Mesh) -> None:
    """Raises `errors.ConfigError` unless ``global_batch`` divides over the mesh's devices
    (each device takes the same number of rows), naming the nearest sizes that do."""
    n = mesh.size
    if global_batch % n:
        below, above = global_batch // n * n, (global_batch // n + 1) * n
        sizes = f"{below} or {above}" if below else f"{above}"
        raise errors.ConfigError(
            f"config.batch_size={global_batch} does not divide over the {n} devices (each "
            f"takes the same number of rows): use {sizes} (main: --config.batch_size=N; "
            "study, mask_gap: --neural_override=batch_size=N)")


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D mesh ``('data',)`` over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else devices
    return jax.sharding.Mesh(np.asarray(devices), ("data",))
