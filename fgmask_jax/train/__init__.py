"""Training and evaluation of the neural methods.

Data parallelism is one `jax.jit` over a device mesh ``('data',)``: the batch is
sharded along ``data``, the state replicated, and XLA all-reduces the gradients.
That is what ``pmap`` did, in its current form; it spans every device of every
host unchanged, and BatchNorm sees the global batch.

The modules, in the order a run meets them: `state` (the TrainState, and where a
run starts), `optim` (the optimizer and freezing), `steps` (the pure train and eval
steps, jitted over the mesh), `loop` (the epochs: logging, validation, early
stopping, checkpoints, signals), `evaluate` (exact metrics over a split), `fit`
(one model, as a list of phases) and `lopo` (one model per fold of persons).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from fgmask_jax.data import pipeline
from fgmask_jax.train import fit, lopo
from fgmask_jax.train.evaluate import evaluate
from fgmask_jax.train.fit import fit_and_test, fit_val_indices, step_counts
from fgmask_jax.train.optim import make_optimizer, param_labels
from fgmask_jax.train.state import TrainState, init_state
from fgmask_jax.train.steps import Steps, check_batch, eval_step, make_mesh, train_step

__all__ = [
    "Steps", "TrainState", "check_batch", "eval_step", "evaluate", "fit_and_test",
    "fit_val_indices", "init_state", "make_mesh", "make_optimizer", "param_labels", "step_counts",
    "train_and_evaluate", "train_step",
]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, mesh=None) -> dict:
    """Trains, early-stops on the validation subset, then reports on the test split.

    Resumes from ``workdir``'s latest good checkpoint if there is one, else
    starts from ``config.init_from`` if set, else from scratch. Under
    ``protocol=lopo`` it trains one model per fold of persons (`lopo.train_lopo`).
    Returns {"test": {task: summary}, "validation": {...}, "steps": int, "best_step": int}.
    """
    if config.protocol == "lopo":
        return lopo.train_lopo(config, workdir, mesh)
    train_name, test_name = pipeline.split_names(config.protocol)
    train_source = pipeline.open_split(config.dataset, train_name, pipeline.data_dir(config))
    test_source = pipeline.open_split(config.dataset, test_name, pipeline.data_dir(config))
    return fit.fit_and_test(config, workdir, train_source, np.arange(len(train_source)),
                            test_source, np.arange(len(test_source)), mesh=mesh,
                            test_name=f"{test_name} split")
