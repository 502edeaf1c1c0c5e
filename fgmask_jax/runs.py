"""A trained run, as the commands and the trainer read it back.

A run's workdir holds ``config.json`` (the resolved config), ``checkpoints/<step>``
and ``best/<step>`` (Orbax), and once finished ``results.json``; a leave-persons-out
run holds one such folder per fold, ``fold_<K>``. This module is the one place that
reads them: the folder of one model, its config, the model and compute dtype that
config describes, its best variables and its fitted temperatures (predict, export,
mask_gap), another run's weights (``config.init_from``), and the best validation state
of a run being tested.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from fgmask_jax import checkpointing, errors, models, paths
from fgmask_jax.data import labels as labels_lib

DTYPES = ("float32", "bfloat16")


def compute_dtype(config) -> jnp.dtype:
    """The dtype of activations: ``config.dtype``, or for "auto" float32 on CPU and
    bfloat16 on accelerators (this process's default backend). A run stores the dtype it
    trained in (`with_resolved_dtype`), which its predictions and exports then use."""
    if config.dtype == "auto":
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    return jnp.dtype(config.dtype)


def with_resolved_dtype(config) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose ``dtype`` is the one it computes in here ("auto"
    resolved): what a run writes to its config.json."""
    config = config.copy_and_resolve_references()
    config.dtype = jnp.dtype(compute_dtype(config)).name
    return config


def num_classes(config) -> dict[str, int]:
    return {t: len(labels_lib.TASKS[t]) for t in config.tasks}


def make_model(config, platforms: tuple[str, ...] | None = None):
    """The Flax model ``config`` describes (trunk, heads, dtype, frozen BatchNorm parts,
    kernels).

    ``config.kernels`` ("auto" when absent, as in older runs' configs) is resolved here,
    once, for ``platforms`` (None: this process's default backend; an export names its
    targets): "auto" is "cpu" when they are all CPU, else "xla".
    """
    return models.create_model(
        config.model,
        num_classes(config),
        dtype=compute_dtype(config),
        head_hidden=config.head_hidden,
        head_depths=dict(config.head_depths) if config.head_depths else None,
        dropout=config.dropout,
        frozen=models.frozen_parts(config.model, config.get("freeze", "")),
        kernels=models.resolve_kernels(config.get("kernels", "auto"), platforms),
    )


@dataclasses.dataclass(frozen=True)
class Run:
    """One trained model: ``variables`` are ``model.apply``'s (params, batch_stats)."""

    folder: str
    config: ml_collections.ConfigDict
    variables: dict
    step: int  # the best validation step, whose checkpoint ``variables`` come from
    finished: bool  # the run wrote results.json
    temperatures: dict[str, float]  # {task: T} fitted on the validation subset, if finished
    # The ood_score above which an input is unlike the training images, measured on the same
    # held-out persons as the temperatures; None if unfinished, or finished before it existed.
    ood_threshold: float | None = None


def _missing_run(path: str, what: str) -> errors.RunNotFoundError:
    return errors.RunNotFoundError(
        f"{path} holds no finished run: {what}. Pass the --workdir of a run that "
        "`python -m fgmask_jax.main` has trained (it writes config.json and best/<step>/), "
        "or a folder written by `python -m fgmask_jax.export`."
    )


def _folds(workdir: str) -> dict[int, str]:
    return {int(n.split("_", 1)[1]): n for n in os.listdir(workdir)
            if n.startswith("fold_") and n.split("_", 1)[1].isdigit()}


def run_folder(workdir: str, fold: int | None = None) -> str:
    """The folder of the one model in ``workdir`` (``fold_<K>`` of a leave-persons-out run).

    Raises:
      RunNotFoundError: no such folder, a leave-persons-out run without ``fold``, or
        a fold that is not there (the folds are listed).
    """
    workdir = paths.absolute(workdir)
    if not os.path.isdir(workdir):
        raise errors.RunNotFoundError(f"{workdir}: no such folder")
    folds = _folds(workdir)
    listed = ", ".join(map(str, sorted(folds)))
    if fold is None:
        if folds and not os.path.isdir(os.path.join(workdir, "best")):
            raise errors.RunNotFoundError(
                f"{workdir} is a leave-persons-out run: one model per fold of persons, none of "
                f"them the run's. Choose one with fold=K (--fold=K); folds here: {listed}"
            )
        return workdir
    if fold not in folds:
        raise errors.RunNotFoundError(f"{workdir} has no fold {fold}; folds here: "
                                      f"{listed or 'none'}")
    return os.path.join(workdir, folds[fold])


def read_config(folder: str) -> ml_collections.ConfigDict:
    """The resolved config a run wrote to ``folder/config.json`` (`as_run_now`)."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise _missing_run(folder, "no config.json")
    with open(path) as f:
        return ml_collections.ConfigDict(as_run_now(json.load(f)))


def as_run_now(saved: dict) -> dict:
    """A config.json written before a field existed, with the value its run used: a neural
    run's ``split_seed`` was its ``seed`` (which then also drew the splits)."""
    if "seed" in saved and "model" in saved and "split_seed" not in saved:
        saved = {**saved, "split_seed": saved["seed"]}
    return saved


def calibration(folder: str) -> tuple[dict[str, float], float | None]:
    """({task: T} of the temperature scaling a finished run fitted, its ood_score threshold
    or None); ({}, None) before it finished."""
    path = os.path.join(folder, "results.json")
    if not os.path.isfile(path):
        return {}, None
    with open(path) as f:
        results = json.load(f)
    threshold = results.get("ood_threshold")
    return ({t: float(c["temperature"]) for t, c in results.get("calibration", {}).items()},
            None if threshold is None else float(threshold))


def load(workdir: str, fold: int | None = None) -> Run:
    """The best validation model of the neural run in ``workdir`` (its fold ``fold``).

    Raises:
      RunNotFoundError: no config.json or no best/<step> checkpoint (what is missing
        named), a classical method's run, or a fold asked for that is not there.
    """
    folder = run_folder(workdir, fold)
    config = read_config(folder)
    if "method" in config:
        raise errors.RunNotFoundError(
            f"{folder} is a run of the classical method {config.method!r}, which keeps no "
            "fitted classifier: prediction on new photos is for the neural methods only"
        )
    best = os.path.join(folder, "best")
    steps = sorted(int(n) for n in os.listdir(best) if n.isdigit()) if os.path.isdir(best) else []
    if not steps:
        raise _missing_run(folder, "no best/<step> checkpoint (the run has not evaluated yet)")
    ckpt = checkpointing.Checkpointer(best, None)
    try:
        state, _ = ckpt.restore_here(steps[-1])
    finally:
        ckpt.close()
    temperatures, threshold = calibration(folder)
    variables = {"params": state["params"]["model"]}
    if state.get("batch_stats"):
        variables["batch_stats"] = state["batch_stats"]
    return Run(folder=folder, config=config, variables=variables, step=steps[-1],
               finished=os.path.isfile(os.path.join(folder, "results.json")),
               temperatures=temperatures, ood_threshold=threshold)


def latest_checkpoint(path: str) -> dict[str, Any]:
    """The latest checkpoint of the run ``path`` (a workdir with ``checkpoints/``, or a
    checkpoint folder) on this process's first device, whatever devices saved it:
    {"params": {"model", "log_vars"}, "batch_stats", ...}.

    Raises:
      ConfigError: ``path`` holds no checkpoint (it comes from ``config.init_from``).
    """
    directory = os.path.join(path, "checkpoints") if os.path.isdir(
        os.path.join(path, "checkpoints")) else path
    ckpt = checkpointing.Checkpointer(directory, max_to_keep=None)
    try:
        if ckpt.latest_step() is None:
            raise errors.ConfigError(
                f"config.init_from={path!r} holds no checkpoint: give a run's workdir (with "
                "checkpoints/) or one of its checkpoint folders")
        return ckpt.restore_here(ckpt.latest_step())[0]
    finally:
        ckpt.close()


def restore_best(state, meta: dict, *checkpointers) -> tuple[Any, int]:
    """(state of the best validation step ``meta["best_step"]``, that step), from the first
    of ``checkpointers`` that holds it, restored like ``state``; the given (final) state
    and its step if none does, with a warning."""
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
