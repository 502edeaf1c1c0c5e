"""The train state, and where a run starts: its own latest checkpoint, another run's
weights (``config.init_from``), a pretrained trunk (``config.pretrained``) or scratch."""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from fgmask_jax import checkpointing, errors, runs
from fgmask_jax.evaluation import writers
from fgmask_jax.models import pretrained
from fgmask_jax.train import optim


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: one pytree."""

    step: jax.Array
    params: Any  # {"model": model params, "log_vars": {task: scalar}}
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def model_variables(params, batch_stats) -> dict:
    """``model.apply``'s variables from the state's ``params`` and ``batch_stats``."""
    v = {"params": params["model"]}
    if batch_stats:
        v["batch_stats"] = batch_stats
    return v


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


# Fields a resumed run may not change: they shape the state in its checkpoints (model, heads,
# optimizer state, frozen parts) or decide which examples are fit, validation and test
# (data, protocol, seeds, sizes). Every other field (epochs, learning rate, logging, eval
# and checkpoint cadence, data_dir ...) may change on a rerun; the change is logged and
# kept in config_history.jsonl, and config.json keeps describing the checkpoints.
STATE_FIELDS = ("dataset", "protocol", "val_fraction", "lopo_folds", "image_size", "tasks",
                "model", "head_hidden", "head_depths", "optimizer", "clip_norm", "freeze",
                "trunk_lr_multiplier", "batch_size", "seed", "split_seed")


def record_config(workdir: str, config) -> None:
    """Writes ``workdir/config.json`` for a new run. For a run to resume (its workdir holds
    checkpoints or folds), checks ``config`` against the one it was started with first.

    Raises:
      ConfigError: a field of `STATE_FIELDS` differs; nothing is written.
    """
    saved_path = epath.Path(workdir) / "config.json"
    if not (saved_path.exists() and _has_checkpoints(workdir)):
        writers.write_config(workdir, config)
        return
    saved = runs.as_run_now(json.loads(saved_path.read_text()))
    now = json.loads(config.to_json_best_effort())
    changes = {k: (saved.get(k), now.get(k)) for k in sorted({*saved, *now})
               if saved.get(k) != now.get(k)}
    refused = [k for k in changes if k in STATE_FIELDS]
    if refused:
        more = f" (and {', '.join(refused[1:])})" if refused[1:] else ""
        key, (old, new) = refused[0], changes[refused[0]]
        folds = (f", or delete {workdir}/fold_* to train every fold again"
                 if not (epath.Path(workdir) / "checkpoints").exists() else "")
        raise errors.ConfigError(
            f"{workdir} holds a run with {key}={old!r}, not {new!r}{more}: its checkpoints "
            "cannot continue under this config. Rerun with the run's config (its "
            f"config.json), or give a new --workdir{folds}")
    if changes:
        logging.info("Resuming %s with changed config: %s", workdir,
                     ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items()))
        if jax.process_index() == 0:
            with (epath.Path(workdir) / "config_history.jsonl").open("a") as f:
                f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                    "changes": {k: {"was": old, "now": new}
                                                for k, (old, new) in changes.items()}}) + "\n")


def _has_checkpoints(workdir: str) -> bool:
    """Whether ``workdir`` holds a checkpointed step or a leave-persons-out fold."""
    root = epath.Path(workdir)
    checkpoints = root / "checkpoints"
    if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
        return True
    return root.is_dir() and any(p.name.startswith("fold_") for p in root.iterdir())


def start(steps, model, config, ckpt: checkpointing.Checkpointer) -> tuple[TrainState, dict]:
    """(the state a run starts from, its bookkeeping ``meta``): ``ckpt``'s latest good
    checkpoint, else ``config.init_from``, else ``config.pretrained``'s trunk, else the
    initialisation of ``config.seed``."""
    # A pretrained trunk is read (and checked) before anything compiles; a resumed run
    # restores its own checkpoint instead.
    trunk = None
    if config.get("pretrained") and not ckpt.all_steps() and not config.init_from:
        trunk = read_pretrained(config, model)
    state = steps.init(jax.random.key(config.seed))
    meta = {"step": 0, "best_score": None, "best_step": None, "bad_evals": 0}
    restored = ckpt.restore_latest(checkpointing.abstract_like(state))
    if restored is not None:
        state, meta = restored
        logging.info("Resumed from %s at step %d", ckpt.directory, meta["step"])
    elif config.init_from:
        state = with_run_weights(state, config.init_from)
    elif trunk is not None:
        state = with_trunk(state, trunk)
    if config.get("freeze"):
        logging.info("freeze=%s: %s", config.freeze, optim.trained_and_frozen(state.params, config))
    return state, meta


def with_run_weights(state: TrainState, path: str) -> TrainState:
    """``state`` with the model weights of the run ``path`` whose names and shapes match;
    the rest kept."""
    other = runs.latest_checkpoint(path)

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


def read_pretrained(config, model) -> dict:
    """The trunk of the torchvision file ``config.pretrained``, checked against ``model``
    (by shapes alone: nothing is compiled, so a wrong file fails at once)."""
    x = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)
    key = jax.random.key(0)
    abstract = jax.eval_shape(functools.partial(model.init, train=False),
                              {"params": key, "dropout": key}, x)
    try:
        variables, description = pretrained.with_pretrained_trunk(
            abstract, config.pretrained, config.model)
    except errors.WeightsError as e:
        raise errors.ConfigError(f"config.pretrained: {e}") from None
    logging.info("pretrained: %s", description)
    return {"params": variables["params"]["trunk"],
            "batch_stats": variables.get("batch_stats", {}).get("trunk", {})}


def with_trunk(state: TrainState, trunk: dict) -> TrainState:
    """``state`` with ``trunk`` (from `read_pretrained`) in place of its trunk."""
    put = functools.partial(jax.device_put, device=state.step.sharding)
    params = {**state.params["model"], "trunk": put(trunk["params"])}
    batch_stats = dict(state.batch_stats)
    if trunk["batch_stats"]:
        batch_stats["trunk"] = put(trunk["batch_stats"])
    return state.replace(params={**state.params, "model": params}, batch_stats=batch_stats)
