"""One method under one config, as ``python -m fgmask_jax.main`` and each run of the study
run it."""

from __future__ import annotations

import ml_collections


def is_neural(config) -> bool:
    """Whether ``config`` is a neural method's (trained by `train`), not a classical one."""
    from fgmask_jax import baselines

    return config.get("method") not in baselines.METHODS


def train_and_test(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains and tests the method of ``config`` in ``workdir``: a neural one (`train`) or a
    classical one (`baselines.run`). Returns the method's results."""
    if is_neural(config):
        from fgmask_jax import train

        return train.train_and_evaluate(config, workdir)
    from fgmask_jax.baselines import run

    return run.run_and_evaluate(config, workdir)


def run_method(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Builds ``config``'s dataset if it is missing (`data.build.ensure_built`), then
    `train_and_test` while holding the workdir (`workdir_lock.held`).

    Raises:
      errors.WorkdirLockedError: another live run holds ``workdir``.
    """
    from fgmask_jax import workdir_lock
    from fgmask_jax.data import build, pipeline

    build.ensure_built(config.dataset, pipeline.data_dir(config), config.manual_dir or None)
    # Taken once the data is there (a dataset that cannot be built leaves no workdir), and
    # before anything is written into the workdir.
    with workdir_lock.held(workdir):
        return train_and_test(config, workdir)
