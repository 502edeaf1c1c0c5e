"""Trains and evaluates one method: ``python -m fgmask_jax.main --config=... --workdir=...``.

This file is intentionally kept short: the work happens in `train`.

Example:
  python -m fgmask_jax.main --config=configs/multitask.py:data=synthetic,runlocal \
      --workdir=/tmp/fgmask/multitask
"""


from absl import app, flags
from ml_collections import config_flags

from fgmask_jax import distributed  # also defines --coordinator_address, --num_processes, ...

flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the report go.")
flags.mark_flags_as_required(["workdir"])
config_flags.DEFINE_config_file(
    "config", None, "A config file in configs/, with variants after a colon.", lock_config=True
)
flags.mark_flags_as_required(["config"])


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but an unknown ``--config.KEY`` names the keys the config has."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError):
        from fgmask_jax import config_lib

        spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
        if spec is None:
            raise
        keys = config_lib.leaf_keys(config_lib.load(spec))
        given = [a[len("--config."):].split("=")[0] for a in argv if a.startswith("--config.")]
        unknown = [k for k in given if k not in keys]
        if not unknown:
            raise
        raise SystemExit(
            f"Unknown config key {unknown[0]!r} (--config.{unknown[0]}). "
            f"Valid keys: {', '.join(keys)}"
        ) from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from fgmask_jax.evaluation import writers

    writers.quiet_library_logs()
    try:
        distributed.maybe_initialize()  # joins a cluster job; before any JAX computation
    except (ValueError, distributed.ClusterJoinError) as e:
        raise SystemExit(f"fgmask_jax.main: {e}") from None
    import jax  # after flag parsing: grain workers need parsed flags
    from jax.experimental import multihost_utils

    from fgmask_jax import baselines, build_data, train
    from fgmask_jax.data import pipeline

    config = flags.FLAGS.config
    # Process 0 builds a missing dataset while the others wait: on shared storage they
    # then find it built; on a disk of their own (TPU VM workers) they build their copy.
    if jax.process_index() == 0:
        build_data.build(config.dataset, pipeline.data_dir(config), config.manual_dir or None)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("fgmask_jax: dataset built")
        if jax.process_index() != 0:
            build_data.build(config.dataset, pipeline.data_dir(config),
                             config.manual_dir or None)
    if config.get("method") in baselines.METHODS:  # a classical method
        from fgmask_jax.baselines import run

        run.run_and_evaluate(config, flags.FLAGS.workdir)
    else:
        train.train_and_evaluate(config, flags.FLAGS.workdir)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
