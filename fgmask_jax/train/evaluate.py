"""Exact evaluation of a state over a split: padded global batches, per-example outputs
gathered from every process, metrics."""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from fgmask_jax import errors
from fgmask_jax.data import labels as labels_lib
from fgmask_jax.data import pipeline
from fgmask_jax.evaluation import metrics as metrics_lib
from fgmask_jax.evaluation import writers
from fgmask_jax.train.state import TrainState
from fgmask_jax.train.steps import Steps


def host_eval_batches(steps: Steps, source, indices, config, workers: int = 0) -> Iterator:
    """Global evaluation batches of ``source[indices]``, decoded on the host (`pipeline`)."""
    batches = pipeline.eval_batches(
        source, indices, global_batch=config.batch_size, image_size=config.image_size)
    return (pipeline.to_global(b, steps.data) for b in pipeline.iterate(batches, workers=workers))


def device_eval_batches(steps: Steps, data: dict, rows: np.ndarray, global_batch: int
                        ) -> Iterator:
    """Global evaluation batches of ``data``'s ``rows``, gathered on the device from the
    replicated ``data`` (whole-dataset mode); the last batch is padded and masked."""
    padded = pipeline.pad_rows(np.asarray(rows, np.int32), global_batch, fill=-1)
    local = pipeline.local_rows(global_batch)
    for index in padded.reshape(-1, global_batch):
        yield steps.gather_eval(data, jax.make_array_from_process_local_data(
            steps.data, index[local]))


def evaluate(steps: Steps, state: TrainState, batches, config,
             predictions_path: str | None = None, return_outputs: bool = False):
    """Exact metrics over evaluation ``batches`` (`host_eval_batches` or
    `device_eval_batches`): {task: summary (see metrics.summarize) + loss}.

    The outputs stay on the device until the pass ends, then come to the host at once.
    Every example carries its dataset index through the gather: the outputs are put in
    the order of that index, whatever order the devices of the processes gave them in.

    ``return_outputs``: also the per-example outputs, by dataset index, (results,
    {index, subject_id, label_<task>, pred_<task>, logits_<task>: [N, ...]}).

    ``predictions_path``: process 0 also saves them there (`writers.write_predictions`).

    Raises:
      RuntimeError: an example was evaluated twice (a bug in the batches).
    """
    outs = [steps.eval(state, batch) for batch in batches]
    out = jax.tree.map(lambda *xs: jnp.concatenate(xs), *outs) if len(outs) > 1 else outs[0]
    out = jax.device_get(multihost_utils.process_allgather(out, tiled=True))
    rows = np.flatnonzero(out.pop("mask"))
    rows = rows[np.argsort(out["index"][rows], kind="stable")]
    out = {k: v[rows] for k, v in out.items()}
    if len(np.unique(out["index"])) != len(rows):
        raise RuntimeError("an example was evaluated more than once: the evaluation batches "
                           "repeat a dataset index")
    if predictions_path and jax.process_index() == 0:
        writers.write_predictions(predictions_path, out, config.tasks)
    results = {}
    for t in config.tasks:
        results[t] = metrics_lib.summarize(out[f"label_{t}"], out[f"pred_{t}"],
                                           len(labels_lib.TASKS[t]))
        results[t]["loss"] = float(out[f"loss_{t}"].mean())
    if return_outputs:
        return results, out
    return results


def selection_score(results: dict[str, dict], metric: str) -> float:
    """Higher is better: minus the mean task loss, or the mean task accuracy."""
    if metric == "loss":
        return -float(np.mean([r["loss"] for r in results.values()]))
    if metric == "accuracy":
        return float(np.mean([r["accuracy"] for r in results.values()]))
    raise errors.ConfigError(
        f"config.early_stopping_metric={metric!r}: use 'loss' or 'accuracy'")


def flat(results: dict[str, dict], prefix: str) -> dict[str, float]:
    """{``prefix/metric_task``: value} of `evaluate`'s results, for the metric writer."""
    return {
        f"{prefix}/{k}_{t}": r[k]
        for t, r in results.items()
        for k in ("loss", "accuracy", "balanced_accuracy", "macro_f1")
    }
