"""One method under one config, as ``python -m fgmask_jax.main`` runs it."""

from __future__ import annotations

import ml_collections


def run_method(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Builds ``config``'s dataset if it is missing (`data.build.ensure_built`), then trains
    and tests the method: a classical one (`baselines.run`) or a neural one (`train`).
    Returns the method's results."""
    from fgmask_jax import baselines, train
    from fgmask_jax.baselines import run
    from fgmask_jax.data import build, pipeline

    build.ensure_built(config.dataset, pipeline.data_dir(config), config.manual_dir or None)
    if config.get("method") in baselines.METHODS:
        return run.run_and_evaluate(config, workdir)
    return train.train_and_evaluate(config, workdir)
