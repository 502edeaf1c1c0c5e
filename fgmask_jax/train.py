"""Training and evaluation of the neural methods: state, pure steps, the loop, resume.

Data parallelism is one `jax.jit` over a device mesh ``('data',)``: the batch is
sharded along ``data``, the state replicated, and XLA all-reduces the gradients.
That is what ``pmap`` did, in its current form; it spans every device of every
host unchanged, and BatchNorm sees the global batch.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fgmask_jax import checkpointing, config_lib, models, signals
from fgmask_jax.data import labels as labels_lib
from fgmask_jax.data import pipeline, splits
from fgmask_jax.evaluation import calibration as calibration_lib
from fgmask_jax.evaluation import metrics as metrics_lib
from fgmask_jax.evaluation import report as report_lib
from fgmask_jax.evaluation import saliency as saliency_lib
from fgmask_jax.evaluation import subgroups as subgroups_lib
from fgmask_jax.evaluation import writers
from fgmask_jax.models import pretrained


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: one pytree."""

    step: jax.Array
    params: Any  # {"model": model params, "log_vars": {task: scalar}}
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


# --- set-up -----------------------------------------------------------------------------


def compute_dtype(config) -> jnp.dtype:
    if config.dtype == "auto":
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    return jnp.dtype(config.dtype)


def num_classes(config) -> dict[str, int]:
    return {t: len(labels_lib.TASKS[t]) for t in config.tasks}


def make_model(config):
    return models.create_model(
        config.model,
        num_classes(config),
        dtype=compute_dtype(config),
        head_hidden=config.head_hidden,
        head_depths=dict(config.head_depths) if config.head_depths else None,
        dropout=config.dropout,
        frozen=pretrained.frozen_parts(config.model, config.get("freeze", "")),
    )


def make_optimizer(config, steps_per_epoch: int, total_steps: int) -> optax.GradientTransformation:
    """optax from config: linear warmup + cosine decay (or constant); SGD+momentum or AdamW;
    clipping. The trunk parts in ``config.freeze`` are not updated; the rest of the trunk
    learns at ``config.trunk_lr_multiplier`` times the heads' rate."""
    peak = config.learning_rate * config.batch_size / 256
    warmup = min(int(config.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
    if config.get("lr_schedule", "cosine") == "constant":
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
    else:
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, peak, warmup_steps=max(warmup, 1) if warmup else 0,
            decay_steps=max(total_steps, 1))

    def base(rate):
        if config.optimizer == "sgd":
            return optax.chain(optax.add_decayed_weights(config.weight_decay),
                               optax.sgd(rate, momentum=config.momentum, nesterov=True))
        if config.optimizer == "adamw":
            return optax.adamw(rate, weight_decay=config.weight_decay)
        raise ValueError(f"config.optimizer={config.optimizer!r}: use 'sgd' or 'adamw'")

    multiplier = config.get("trunk_lr_multiplier", 1.0)
    if config.get("freeze") or multiplier != 1.0:
        opt = optax.multi_transform(
            {"heads": base(schedule),
             "trunk": base(lambda count: multiplier * schedule(count)),
             "frozen": optax.set_to_zero()},
            functools.partial(param_labels, config=config))
    else:
        opt = base(schedule)
    if config.clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(config.clip_norm), opt)
    if config.get("freeze"):  # frozen gradients count in no norm: zeroed first
        frozen = optax.masked(optax.set_to_zero(), lambda params: jax.tree.map(
            lambda label: label == "frozen", param_labels(params, config)))
        opt = optax.chain(frozen, opt)
    return opt, schedule


def param_labels(params: dict, config) -> dict:
    """"frozen", "trunk" or "heads" for each array of ``params`` ({"model", "log_vars"})."""
    frozen = pretrained.freeze_mask(params["model"], config.model, config.get("freeze", ""))
    labels = {k: jax.tree.map(lambda _: "heads", v) for k, v in params["model"].items()}
    labels["trunk"] = jax.tree.map(lambda f: "frozen" if f else "trunk", frozen["trunk"])
    return {"model": labels, "log_vars": jax.tree.map(lambda _: "heads", params["log_vars"])}


def init_state(model, tx, config, rng: jax.Array) -> TrainState:
    params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
    x = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    variables = model.init({"params": params_rng, "dropout": dropout_rng}, x, train=False)
    params = {
        "model": variables["params"],
        "log_vars": {t: jnp.zeros((), jnp.float32) for t in config.tasks},
    }
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=state_rng,
    )


# --- steps ------------------------------------------------------------------------------


def _variables(params, batch_stats):
    v = {"params": params["model"]}
    if batch_stats:
        v["batch_stats"] = batch_stats
    return v


def task_losses(logits: dict, batch: dict, label_smoothing: float = 0.0) -> dict[str, jax.Array]:
    """Per-example cross-entropy of each task: {task: float32[B]}."""
    out = {}
    for task, z in logits.items():
        labels = optax.smooth_labels(jax.nn.one_hot(batch[task], z.shape[-1]), label_smoothing)
        out[task] = optax.softmax_cross_entropy(z.astype(jnp.float32), labels)
    return out


def train_step(state: TrainState, batch: dict, *, model, tx, config) -> tuple[TrainState, dict]:
    """One optimiser step on a global batch; returns the new state and scalar metrics."""
    step_rng = jax.random.fold_in(state.rng, state.step)
    aug_rng, dropout_rng = jax.random.split(step_rng)
    images = pipeline.augment(aug_rng, batch["image"], **config.augment)
    x = pipeline.normalize(images, compute_dtype(config))

    def loss_fn(params):
        logits, updates = model.apply(
            _variables(params, state.batch_stats), x, train=True,
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
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    scalars = {
        "loss": loss,
        "l2_grads": optax.tree.norm(grads["model"]),
        "l2_params": optax.tree.norm(params["model"]),
        **{f"loss_{t}": v for t, v in per_task.items()},
        **{f"accuracy_{t}": v for t, v in accuracy.items()},
    }
    return new_state, scalars


def eval_step(state: TrainState, batch: dict, *, model, config) -> dict:
    """Per-example outputs of a global batch: {pred_t, loss_t, label_t, subject_id (if the
    batch has it): [B], mask: bool[B]}."""
    x = pipeline.normalize(batch["image"], compute_dtype(config))
    logits = model.apply(_variables(state.params, state.batch_stats), x, train=False)
    losses = task_losses(logits, batch)
    out = {f"pred_{t}": z.argmax(-1).astype(jnp.int32) for t, z in logits.items()}
    out.update({f"logits_{t}": z.astype(jnp.float32) for t, z in logits.items()})
    out.update({f"loss_{t}": v for t, v in losses.items()})
    out.update({f"label_{t}": batch[t] for t in logits})
    if "subject_id" in batch:  # pipeline batches carry it; predictions.npz saves it
        out["subject_id"] = batch["subject_id"]
    out["mask"] = batch["mask"]
    return out


class Steps:
    """The jitted steps of one run over one mesh, and the shardings they use."""

    def __init__(self, model, tx, config, mesh: jax.sharding.Mesh):
        self.mesh = mesh
        self.replicated = NamedSharding(mesh, P())
        self.data = NamedSharding(mesh, P("data"))
        self.train = jax.jit(
            functools.partial(train_step, model=model, tx=tx, config=config),
            in_shardings=(self.replicated, self.data),
            out_shardings=(self.replicated, self.replicated),
            donate_argnums=0,
        )
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
        # ... and an evaluation batch: index -1 pads the last one (masked out).
        self.gather_eval = jax.jit(
            lambda data, index: {**jax.tree.map(lambda a: a[jnp.maximum(index, 0)], data),
                                 "mask": index >= 0},
            in_shardings=(self.replicated, self.data),
            out_shardings=self.data,
        )
        # A copy of the state in new buffers (the train step donates the state's).
        self.copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree),
                            in_shardings=self.replicated, out_shardings=self.replicated)


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D mesh ``('data',)`` over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else devices
    return jax.sharding.Mesh(np.asarray(devices), ("data",))


# --- evaluation -------------------------------------------------------------------------


def host_eval_batches(steps: Steps, source, indices, config, workers: int = 0) -> Iterator:
    """Global evaluation batches of ``source[indices]``, decoded on the host (`pipeline`)."""
    batches = pipeline.eval_batches(
        source, indices, global_batch=config.batch_size, image_size=config.image_size)
    return (pipeline.to_global(b, steps.data) for b in pipeline.iterate(batches, workers=workers))


def device_eval_batches(steps: Steps, data: dict, rows: np.ndarray, global_batch: int
                        ) -> Iterator:
    """Global evaluation batches of ``data``'s ``rows``, gathered on the device from the
    replicated ``data`` (whole-dataset mode); the last batch is padded and masked."""
    n_batches = max(1, math.ceil(len(rows) / global_batch))
    padded = np.full(n_batches * global_batch, -1, np.int32)
    padded[:len(rows)] = rows
    local = pipeline.local_rows(global_batch)
    for index in padded.reshape(n_batches, global_batch):
        yield steps.gather_eval(data, jax.make_array_from_process_local_data(
            steps.data, index[local]))


def evaluate(steps: Steps, state: TrainState, batches, config,
             predictions_path: str | None = None, return_outputs: bool = False):
    """Exact metrics over evaluation ``batches`` (`host_eval_batches` or
    `device_eval_batches`): {task: summary (see metrics.summarize) + loss}.

    The outputs stay on the device until the pass ends, then come to the host at once.

    ``return_outputs``: also the per-example outputs in the batches' order,
    (results, {subject_id, label_<task>, pred_<task>, logits_<task>: [N, ...]}).

    ``predictions_path``: process 0 also saves the per-example ``subject_id``,
    ``label_<task>`` and ``pred_<task>`` (int64[N], pads removed) there as .npz.
    """
    outs = [steps.eval(state, batch) for batch in batches]
    out = jax.tree.map(lambda *xs: jnp.concatenate(xs), *outs) if len(outs) > 1 else outs[0]
    out = jax.device_get(multihost_utils.process_allgather(out, tiled=True))
    mask = out["mask"]
    if predictions_path and jax.process_index() == 0:
        writers.write_predictions(predictions_path, out["subject_id"][mask],
                                  {t: out[f"label_{t}"][mask] for t in config.tasks},
                                  {t: out[f"pred_{t}"][mask] for t in config.tasks})
    results = {}
    for t in config.tasks:
        y, pred = out[f"label_{t}"][mask], out[f"pred_{t}"][mask]
        results[t] = metrics_lib.summarize(y, pred, len(labels_lib.TASKS[t]))
        results[t]["loss"] = float(out[f"loss_{t}"][mask].mean())
    if return_outputs:
        return results, {k: v[mask] for k, v in out.items() if k != "mask"}
    return results


def _selection_score(results: dict[str, dict], metric: str) -> float:
    """Higher is better: minus the mean task loss, or the mean task accuracy."""
    if metric == "loss":
        return -float(np.mean([r["loss"] for r in results.values()]))
    if metric == "accuracy":
        return float(np.mean([r["accuracy"] for r in results.values()]))
    raise ValueError(f"config.early_stopping_metric={metric!r}: use 'loss' or 'accuracy'")


def _flat(results: dict[str, dict], prefix: str) -> dict[str, float]:
    return {
        f"{prefix}/{k}_{t}": r[k]
        for t, r in results.items()
        for k in ("loss", "accuracy", "balanced_accuracy", "macro_f1")
    }


# --- the run ----------------------------------------------------------------------------


def fit_val_indices(labels: dict[str, np.ndarray], config) -> tuple[np.ndarray, np.ndarray]:
    """The training examples carved into fit and validation (by person under subject and
    lopo): indices into ``labels``' arrays."""
    if config.protocol in ("subject", "lopo"):
        return splits.subject_split(labels["subject_id"], config.seed, config.val_fraction)
    if config.protocol == "photo":  # copies of one photo on one side only
        return splits.photo_split(labels["photo_id"], config.seed, config.val_fraction)
    return splits.study_split(len(labels["subject_id"]), config.seed, config.val_fraction)


def _restore_init_from(path: str, state: TrainState) -> TrainState:
    """Takes the model weights of another run whose names and shapes match; keeps the rest."""
    directory = os.path.join(path, "checkpoints") if os.path.isdir(
        os.path.join(path, "checkpoints")) else path
    ckpt = checkpointing.Checkpointer(directory, max_to_keep=None)
    if ckpt.latest_step() is None:
        raise config_lib.ConfigError(
            f"config.init_from={path!r} holds no checkpoint: give a run's workdir (with "
            "checkpoints/) or one of its checkpoint folders")
    other, _ = ckpt.restore(ckpt.latest_step(), None)
    ckpt.close()

    def merge(mine, theirs, what):
        flat_mine = flax.traverse_util.flatten_dict(flax.core.unfreeze(mine))
        flat_theirs = flax.traverse_util.flatten_dict(theirs or {})
        taken = 0
        for key, value in flat_mine.items():
            other_value = flat_theirs.get(key)
            if other_value is not None and np.shape(other_value) == value.shape:
                flat_mine[key] = jax.device_put(
                    np.asarray(other_value, value.dtype), value.sharding
                )
                taken += 1
        logging.info("init_from %s: took %d of %d %s arrays", path, taken, len(flat_mine), what)
        return flax.traverse_util.unflatten_dict(flat_mine)

    return state.replace(
        params={**state.params, "model": merge(state.params["model"],
                                               other["params"]["model"], "param")},
        batch_stats=merge(state.batch_stats, other.get("batch_stats"), "batch_stats"),
    )


def _read_pretrained(config, model) -> dict:
    """The trunk of the torchvision file ``config.pretrained``, checked against ``model``
    (by shapes alone: nothing is compiled, so a wrong file fails at once)."""
    x = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)
    key = jax.random.key(0)
    abstract = jax.eval_shape(functools.partial(model.init, train=False),
                              {"params": key, "dropout": key}, x)
    try:
        variables, description = pretrained.with_pretrained_trunk(
            abstract, config.pretrained, config.model)
    except pretrained.WeightsError as e:
        raise config_lib.ConfigError(f"config.pretrained: {e}") from None
    logging.info("pretrained: %s", description)
    return {"params": variables["params"]["trunk"],
            "batch_stats": variables.get("batch_stats", {}).get("trunk", {})}


def _with_trunk(state: TrainState, trunk: dict) -> TrainState:
    """``state`` with ``trunk`` (from `_read_pretrained`) in place of its trunk."""
    put = functools.partial(jax.device_put, device=state.step.sharding)
    params = {**state.params["model"], "trunk": put(trunk["params"])}
    batch_stats = dict(state.batch_stats)
    if trunk["batch_stats"]:
        batch_stats["trunk"] = put(trunk["batch_stats"])
    return state.replace(params={**state.params, "model": params}, batch_stats=batch_stats)


def _trained_and_frozen(params, config) -> str:
    labels = jax.tree.leaves(param_labels(params, config))
    sizes = [x.size for x in jax.tree.leaves(params)]
    frozen = sum(n for n, label in zip(sizes, labels, strict=True) if label == "frozen")
    return f"{sum(sizes) - frozen:,} parameters trained, {frozen:,} frozen"


def _inputs(steps: Steps, config, source, fit: np.ndarray, val: np.ndarray, start: int):
    """(training batches from step ``start`` on, a function giving the validation batches,
    decoding workers): on the device when the images fit (`pipeline.placement`), else
    decoded on the host by grain."""
    on_device, workers, why = pipeline.placement(config, len(fit) + len(val))
    if on_device:  # fit and validation images decoded once, replicated on every device
        logging.info("data on device (%s): decoding %d images once", why, len(fit) + len(val))
        data = jax.device_put(pipeline.load_all(source, np.concatenate([fit, val]),
                                                config.image_size, workers), steps.replicated)
        order = pipeline.batch_order(np.arange(len(fit)), global_batch=config.batch_size,
                                     seed=config.seed)
        batches = (steps.gather(data, jax.make_array_from_process_local_data(
            steps.data, ix)) for ix in pipeline.iterate(order, start))
        val_rows = np.arange(len(fit), len(fit) + len(val))
        return batches, lambda: device_eval_batches(steps, data, val_rows,
                                                    config.batch_size), workers
    logging.info("data on host (%s): grain with %d decoding processes", why, workers)
    host = pipeline.train_batches(source, fit, global_batch=config.batch_size,
                                  image_size=config.image_size, seed=config.seed)
    batches = (pipeline.to_global(b, steps.data) for b in pipeline.iterate(host, start, workers))
    return batches, lambda: host_eval_batches(steps, source, val, config, workers), workers


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, mesh=None) -> dict:
    """Trains, early-stops on the validation subset, then reports on the test split.

    Resumes from ``workdir``'s latest good checkpoint if there is one, else
    starts from ``config.init_from`` if set, else from scratch. Under
    ``protocol=lopo`` it trains one model per fold of persons (`train_lopo`).
    Returns {"test": {task: summary}, "validation": {...}, "steps": int, "best_step": int}.
    """
    if config.protocol == "lopo":
        return train_lopo(config, workdir, mesh)
    train_name, test_name = pipeline.split_names(config.protocol)
    train_source = pipeline.open_split(config.dataset, train_name, pipeline.data_dir(config))
    test_source = pipeline.open_split(config.dataset, test_name, pipeline.data_dir(config))
    return fit_and_test(config, workdir, train_source, np.arange(len(train_source)),
                        test_source, np.arange(len(test_source)), mesh=mesh,
                        test_name=f"{test_name} split")


def fit_and_test(config: ml_collections.ConfigDict, workdir: str, train_source,
                 train_indices: np.ndarray, test_source, test_indices: np.ndarray, *,
                 mesh=None, test_name: str = "test split") -> dict:
    """One model: trained on ``train_source[train_indices]`` (less a validation subset that
    early-stops it), then tested once on ``test_source[test_indices]``.

    ``test_name`` says in the log and report what was tested. Returns as
    `train_and_evaluate`.
    """
    began = time.perf_counter()
    mesh = mesh or make_mesh()
    is_main = jax.process_index() == 0
    writers.write_config(workdir, config)
    if config.get("runlocal"):
        logging.info("runlocal: a shrunk run for a laptop CPU (image_size=%d, %s epochs)",
                     config.image_size, config.num_epochs)

    train_indices = np.asarray(train_indices)
    labels = pipeline.read_labels(train_source)
    fit, val = fit_val_indices({k: v[train_indices] for k, v in labels.items()}, config)
    fit, val = train_indices[fit], train_indices[val]
    steps_per_epoch = len(fit) // config.batch_size
    if steps_per_epoch == 0:
        raise config_lib.ConfigError(
            f"{len(fit)} training examples make no batch of config.batch_size="
            f"{config.batch_size}; set a smaller one (main: --config.batch_size=N; study, "
            "mask_gap: --neural_override=batch_size=N)"
        )
    total_steps = config.num_train_steps or int(math.ceil(config.num_epochs * steps_per_epoch))
    eval_every = config.eval_every_steps or steps_per_epoch
    logging.info("%s/%s: %d fit, %d val, %d test examples; %d steps of %d on %d devices",
                 config.dataset, config.protocol, len(fit), len(val), len(test_indices),
                 total_steps, config.batch_size, mesh.size)

    model = make_model(config)
    tx, schedule = make_optimizer(config, steps_per_epoch, total_steps)
    steps = Steps(model, tx, config, mesh)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                      config.keep_checkpoints)
    best_ckpt = checkpointing.Checkpointer(os.path.join(workdir, "best"), 1)

    # A pretrained trunk is read (and checked) before anything compiles; a resumed run
    # restores its own checkpoint instead.
    trunk = None
    if config.get("pretrained") and not ckpt.all_steps() and not config.init_from:
        trunk = _read_pretrained(config, model)
    state = steps.init(jax.random.key(config.seed))
    meta = {"step": 0, "best_score": None, "best_step": None, "bad_evals": 0}
    restored = ckpt.restore_latest(checkpointing.abstract_like(state))
    if restored is not None:
        state, meta = restored
        logging.info("Resumed from %s at step %d", ckpt.directory, meta["step"])
    elif config.init_from:
        state = _restore_init_from(config.init_from, state)
    elif trunk is not None:
        state = _with_trunk(state, trunk)
    if config.get("freeze"):
        logging.info("freeze=%s: %s", config.freeze, _trained_and_frozen(state.params, config))
    start = int(meta["step"])
    # Best checkpoints after the resumed step belong to steps that are run again.
    if dropped := best_ckpt.delete_after(start):
        logging.info("Dropped best checkpoints of steps %s (after step %d, run again)",
                     dropped, start)

    stopped_early = False
    # The best validation state is copied on the device and written to best/ with the next
    # checkpoint (on time, at the end, on early stopping or a signal), not when it happens.
    best_state = None
    last_save = time.monotonic()
    first_step_s = loop_began = None
    pending = None  # (step, metrics) of the step before: checked one step late, to keep
    t0, n0 = time.perf_counter(), start  # the device busy while the host waits
    reached, saved = start, start  # the last step computed, the last one checkpointed
    # A single process finishes its step, saves and stops on Ctrl-C or SIGTERM (one that
    # comes while the data loads stops it after the first step). Processes of a cluster could
    # not agree on the step, so there a signal stops at once (saves in flight are still
    # completed).
    writer = writers.MetricWriter(workdir)
    try:
        with signals.deferred(enabled=jax.process_count() == 1) as stop:
            batches, val_batches, workers = _inputs(steps, config, train_source, fit, val,
                                                    start)
            for step in range(start + 1, total_steps + 1):
                state, scalars = steps.train(state, next(batches))
                reached = step
                if first_step_s is None:  # data, initialisation and compilation
                    jax.block_until_ready(scalars)
                    loop_began = time.perf_counter()
                    first_step_s = loop_began - began
                    logging.info("first step done %.1fs after the run started", first_step_s)
                if pending is not None:
                    _check_finite(*pending, ckpt)
                pending = (step, scalars)
                if step % config.log_every_steps == 0 or step == total_steps:
                    _check_finite(*pending, ckpt)
                    ckpt.check()
                    values = jax.device_get(scalars)
                    dt = time.perf_counter() - t0
                    rate = (step - n0) * config.batch_size / max(dt, 1e-9)
                    eta = (total_steps - step) * config.batch_size / max(rate, 1e-9)
                    logging.info("step %d/%d loss %.4f  %.1f img/s  ETA %.0fs", step,
                                 total_steps, values["loss"], rate, eta)
                    writer.write(step, {**{f"train/{k}": v for k, v in values.items()},
                                        "train/learning_rate": schedule(step - 1),
                                        "train/images_per_second": rate})
                    t0, n0 = time.perf_counter(), step
                if step % eval_every == 0 or step == total_steps:
                    _check_finite(*pending, ckpt)
                    results = evaluate(steps, state, val_batches(), config)
                    writer.write(step, _flat(results, "val"))
                    score = _selection_score(results, config.early_stopping_metric)
                    if meta["best_score"] is None or score > meta["best_score"]:
                        meta.update(best_score=score, best_step=step, bad_evals=0)
                        best_state = steps.copy(state)
                    else:
                        meta["bad_evals"] += 1
                    logging.info("step %d validation %s (best %.4f at step %s)", step,
                                 {t: round(r["accuracy"], 4) for t, r in results.items()},
                                 meta["best_score"], meta["best_step"])
                    patience = config.early_stopping_patience
                    if patience and meta["bad_evals"] >= patience:
                        logging.info("Early stop at step %d: no better validation %s in %d "
                                     "evaluations", step, config.early_stopping_metric, patience)
                        stopped_early = True
                if (step == total_steps or stopped_early or stop.signum is not None
                        or _checkpoint_due(config, step, last_save, eval_every)):
                    _check_finite(*pending, ckpt)
                    if best_state is not None:
                        best_ckpt.save(meta["best_step"], best_state,
                                       {**meta, "step": meta["best_step"]})
                        best_state = None
                    meta["step"] = saved = step
                    ckpt.save(step, state, meta)
                    last_save = time.monotonic()
                if stop.signum is not None:
                    ckpt.wait()
                    best_ckpt.wait()
                    raise signals.Interrupted(stop.signum, _stopped_message(
                        stop.signum, step, total_steps, f"saved a checkpoint at step {step} in "
                        f"{ckpt.directory}; rerun the same command to resume from it."))
                if stopped_early:
                    break
    except KeyboardInterrupt as e:  # a second signal, or one in a cluster: saves finish first
        writer.close()
        ckpt.wait()
        best_ckpt.wait()
        last = f"the last checkpoint is step {saved}" if saved else "no checkpoint was written"
        raise signals.Interrupted(signals.signum_of(e), _stopped_message(
            signals.signum_of(e), reached, total_steps,
            f"{last} in {ckpt.directory}; rerun the same command to resume from it.")) from e
    except BaseException:
        writer.close()
        raise
    finally:  # an interrupted run still completes the saves it started
        ckpt.wait()
        best_ckpt.wait()
    timing = {"first_step_s": first_step_s}
    if loop_began is not None and reached > start + 1:  # the steps after the first
        seconds = time.perf_counter() - loop_began
        timing.update(train_s=seconds,
                      train_images_per_s=(reached - start - 1) * config.batch_size / seconds)
        logging.info("trained %d steps in %.1fs after the first: %.1f img/s with validation "
                     "and checkpoints", reached - start - 1, seconds,
                     timing["train_images_per_s"])
    # The test split is read once, by the best model on the validation subset.
    state, tested_step = _restore_best(state, meta, best_ckpt, ckpt)
    ckpt.close()
    best_ckpt.close()
    test, test_out = evaluate(
        steps, state, host_eval_batches(steps, test_source, test_indices, config, workers),
        config, os.path.join(workdir, "predictions.npz"), return_outputs=True)
    validation, val_out = evaluate(steps, state, val_batches(), config, return_outputs=True)
    sections = {"test": test, "validation": validation}

    def by_task(out, key):
        return {t: out[f"{key}_{t}"] for t in config.tasks}

    # A temperature per task, fitted on the validation subset, judged on the test split.
    calibration = calibration_lib.calibrate_tasks(
        by_task(val_out, "logits"), by_task(val_out, "label"),
        by_task(test_out, "logits"), by_task(test_out, "label"))
    test_ix = np.asarray(test_indices)
    groups = {g: v[test_ix] for g, v in pipeline.read_labels(test_source).items()
              if g in labels_lib.TASKS}
    if (kinds := pipeline.read_mask_kinds(test_source)) is not None:
        groups["mask_kind"] = kinds[test_ix]
    subgroups = subgroups_lib.subgroup_accuracy(
        {t: test_out[f"label_{t}"] for t in config.tasks},
        {t: test_out[f"pred_{t}"] for t in config.tasks}, test_out["subject_id"], groups,
        group_names=dict(labels_lib.TASKS), seed=config.seed)
    writer.write(int(meta["step"]), _flat(sections["test"], "test"))
    writer.close()
    logging.info("Test metrics (%s, best validation model):\n%s", test_name,
                 report_lib.format_table(sections["test"]))
    if is_main:
        # predictions.npz is written first: a folder with results.json is a finished run.
        with (epath.Path(workdir) / "results.json").open("w") as f:
            json.dump({"best_step": meta["best_step"], "steps": int(meta["step"]), **sections,
                       "calibration": calibration_lib.scalars(calibration),
                       "subgroups": subgroups, "timing": timing}, f, indent=1)
        report_lib.write_report(
            workdir,
            f"{config.model} on {config.dataset}, protocol={config.protocol}",
            sections,
            notes=[
                f"tasks: {', '.join(config.tasks)}; image size {config.image_size}; "
                f"batch {config.batch_size} on {mesh.size} devices; tested on the {test_name}",
                _start_note(config, state.params),
                f"trained {meta['step']} steps; best validation at step {meta['best_step']} "
                f"({config.early_stopping_metric}); the test examples were read once, by the "
                + ("model of that step" if tested_step == meta["best_step"] else
                   f"model of step {tested_step} (the best one's checkpoint was lost)"),
                "majority rate: the accuracy of always answering the most frequent true class",
            ],
        )
        sections_md = [report_lib.calibration_section(workdir, calibration),
                       report_lib.subgroup_section(subgroups)]
        if config.get("saliency_images", 0) > 0:
            sections_md.append(_saliency_section(workdir, model, state, test_source,
                                                 test_indices, config))
        report_lib.append_sections(workdir, sections_md)
    return {"steps": int(meta["step"]), "best_step": meta["best_step"], **sections,
            "calibration": calibration_lib.scalars(calibration), "subgroups": subgroups,
            "timing": timing}


def train_lopo(config: ml_collections.ConfigDict, workdir: str, mesh=None) -> dict:
    """Leave persons out: one model per fold of persons, trained on every other image.

    The folds (`splits.person_folds` over all images, ``config.lopo_folds`` of
    them) are the classical methods' folds for the same seed. Fold ``k`` runs
    `fit_and_test` in ``workdir/fold_<k>`` (so an interrupted fold resumes from its
    checkpoints, and a finished one, with results.json, is not run again). Every
    image is then predicted once, by a model that never saw its person; the
    pooled ``predictions.npz``, ``results.json`` and ``report.md`` go in ``workdir``.

    Returns {"test": {task: pooled summary, with the mean test loss}, "folds":
    [each fold's `fit_and_test` result], "steps": total steps over the folds}.
    """
    mesh = mesh or make_mesh()
    writers.write_config(workdir, config)
    split, _ = pipeline.split_names("lopo")
    source = pipeline.open_split(config.dataset, split, pipeline.data_dir(config))
    subject_ids = pipeline.read_labels(source)["subject_id"]
    folds = splits.person_folds(subject_ids, config.lopo_folds, config.seed)
    width = len(str(len(folds)))
    fold_results, arrays = [], []
    for k, (train_ix, test_ix) in enumerate(folds, 1):
        folder = os.path.join(workdir, f"fold_{k:0{width}d}")
        results_path = epath.Path(folder) / "results.json"
        if jax.process_count() > 1:  # every process sees the same finished folds
            multihost_utils.sync_global_devices(f"fgmask_jax lopo fold {k}")
        if results_path.exists():
            logging.info("lopo: %s is finished; not run again", folder)
            results = json.loads(results_path.read_text())
        else:
            logging.info("lopo: fold %d of %d: %d training, %d test images", k, len(folds),
                         len(train_ix), len(test_ix))
            results = fit_and_test(config, folder, source, train_ix, source, test_ix,
                                   mesh=mesh, test_name=f"persons of fold {k} of {len(folds)}")
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"fgmask_jax lopo fold {k} written")
        with (epath.Path(folder) / "predictions.npz").open("rb") as f, np.load(f) as npz:
            arrays.append({name: npz[name] for name in npz.files})
        if not np.array_equal(np.sort(arrays[-1]["subject_id"]), np.sort(subject_ids[test_ix])):
            raise ValueError(
                f"{folder} tested other persons than fold {k} of {len(folds)} holds: it was run "
                "with other folds (config.lopo_folds, config.seed or the data changed). Use a "
                f"new workdir, or delete {workdir}/fold_* to train every fold again."
            )
        fold_results.append(results)

    pooled = {name: np.concatenate([a[name] for a in arrays]) for name in arrays[0]}
    test = {}
    for t in config.tasks:
        test[t] = metrics_lib.summarize(pooled[f"label_{t}"], pooled[f"pred_{t}"],
                                        len(labels_lib.TASKS[t]))
        # Each fold's loss is its mean over its images: weighted by them, the pooled mean.
        test[t]["loss"] = float(sum(r["test"][t]["loss"] * r["test"][t]["n"]
                                    for r in fold_results) / test[t]["n"])
    steps = sum(int(r["steps"]) for r in fold_results)
    if jax.process_index() == 0:
        with (epath.Path(workdir) / "predictions.npz").open("wb") as f:
            np.savez(f, **pooled)
        with (epath.Path(workdir) / "results.json").open("w") as f:
            json.dump({"steps": steps, "folds": len(folds), "test": test,
                       "fold_test": [r["test"] for r in fold_results]}, f, indent=1)
        writer = writers.MetricWriter(workdir)
        writer.write(0, _flat(test, "test"))
        writer.close()
        report_lib.write_report(
            workdir,
            f"{config.model} on {config.dataset}, protocol=lopo",
            {"test": test},
            notes=[
                f"tasks: {', '.join(config.tasks)}; image size {config.image_size}; "
                f"batch {config.batch_size} on {mesh.size} devices",
                f"leave-persons-out over {len(folds)} folds of persons: one model per fold, "
                f"{steps} steps in all; each image predicted once, by the model that never "
                "saw its person (each fold's report is in its fold_<k> folder)",
                "majority rate: the accuracy of always answering the most frequent true class",
            ],
        )
    logging.info("Test metrics (leave persons out, %d folds pooled):\n%s", len(folds),
                 report_lib.format_table(test))
    return {"steps": steps, "folds": fold_results, "test": test}


def _saliency_section(workdir: str, model, state: TrainState, source, indices,
                      config) -> str:
    """Grad-CAM of each task head over the first ``config.saliency_images`` test images, at
    the last feature map of at least 4x4 (a ResNet's last map is 2x2 at 64 px): the report's
    figure and the share of attribution on each image's mask, above it and elsewhere (from
    the dataset's landmarks; without them, the upper and lower half of the image). Runs on
    this process's devices only."""
    indices = np.asarray(indices)[:config.saliency_images]
    images = pipeline.load_all(source, indices, config.image_size)["image"]
    variables = jax.device_get(_variables(state.params, state.batch_stats))
    x = np.asarray(pipeline.normalize(images, jnp.float32))
    h, w = images.shape[1:3]
    if (on := pipeline.mask_regions(source, indices, config.image_size)) is not None:
        top = np.where(on.any(2), np.arange(h), h).min(1)  # each mask's first row
        above = np.arange(h)[None, :, None] < top[:, None, None]
        regions = {"above the mask": np.broadcast_to(above, on.shape), "on the mask": on,
                   "elsewhere": ~on & ~above}
    else:
        upper = saliency_lib.rows_above(h, w, h // 2)
        regions = {"upper half": upper, "lower half (mask)": ~upper}
    summary = saliency_lib.summarize_grad_cam(
        model, variables, x, regions=regions,
        batch_size=min(config.batch_size, len(x)), min_side=4)
    return report_lib.saliency_section(workdir, images.mean(0), summary["maps"],
                                       summary["shares"], method="Grad-CAM",
                                       areas=summary["areas"])


def _start_note(config, params) -> str:
    """Where the weights came from and what was trained, for the report."""
    if config.get("init_from"):
        start = f"started from the run {config.init_from}"
    elif config.get("pretrained"):
        start = (f"trunk started from the pretrained weights {config.pretrained}, "
                 "heads from scratch")
    else:
        start = "trained from scratch"
    frozen = (f"frozen: {config.freeze} ({_trained_and_frozen(params, config)})"
              if config.get("freeze") else "nothing frozen")
    rate = config.get("trunk_lr_multiplier", 1.0)
    return f"{start}; {frozen}" + (f"; trunk learning rate x{rate:g}" if rate != 1.0 else "")


def _stopped_message(signum: int, step: int, total_steps: int, rest: str) -> str:
    name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    return f"stopped by {name} at step {step} of {total_steps}; {rest}"


def _restore_best(state: TrainState, meta: dict, *checkpointers) -> tuple[TrainState, int]:
    """(state of the best validation step, that step), from the first of ``checkpointers``
    that holds it; the given (final) state if none does, with a warning."""
    best = meta["best_step"]
    abstract = checkpointing.abstract_like(state)
    for ckpt in checkpointers:
        if best in ckpt.all_steps():
            try:
                return ckpt.restore(best, abstract)[0], best
            except Exception as e:  # noqa: BLE001 - a damaged copy: try the next one
                logging.warning("Checkpoint %s/%s does not restore (%s)", ckpt.directory, best,
                                str(e).splitlines()[0][:300])
    logging.warning("No checkpoint of the best validation step %s is left; testing the model "
                    "of step %d instead.", best, meta["step"])
    return state, int(meta["step"])


def _checkpoint_due(config, step: int, last_save: float, eval_every: int) -> bool:
    """Whether ``step`` is a checkpoint step besides the last one: every
    ``config.checkpoint_every_steps`` steps, or when 0, the first log or validation step
    ``config.checkpoint_every_secs`` after the last save (every process agrees: process 0's
    clock decides)."""
    if config.checkpoint_every_steps:
        return step % config.checkpoint_every_steps == 0
    if step % config.log_every_steps and step % eval_every:
        return False
    due = time.monotonic() - last_save >= config.get("checkpoint_every_secs", 120.0)
    if jax.process_count() > 1:
        due = bool(multihost_utils.broadcast_one_to_all(np.int32(due)))
    return due


def _check_finite(step: int, scalars: dict, ckpt: checkpointing.Checkpointer) -> None:
    """Stops the run if step ``step`` produced a non-finite loss or parameters."""
    loss, l2_params = (float(v) for v in jax.device_get((scalars["loss"], scalars["l2_params"])))
    if not (math.isfinite(loss) and math.isfinite(l2_params)):
        ckpt.wait()
        raise FloatingPointError(
            f"non-finite loss ({loss}) at step {step}; the last good checkpoint is step "
            f"{ckpt.latest_step()} in {ckpt.directory}. Lower config.learning_rate or set "
            "config.clip_norm, then rerun the same command to resume from it."
        )
