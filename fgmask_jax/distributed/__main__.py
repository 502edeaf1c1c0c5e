"""Checks a cluster before a long job: every process joins, prints its devices and an
all-reduce, and exits 0 if the all-reduce is right.

  srun python -m fgmask_jax.distributed                     # SLURM
  launch/local.sh --module fgmask_jax.distributed 2 4       # 2 local processes

The flags are those of ``python -m fgmask_jax.main`` for joining a cluster.
"""

from absl import app

from fgmask_jax import cli, distributed

cli.define_cluster_flags()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        ok, line = distributed.smoke_check(cli.cluster_options())
    except (ValueError, distributed.ClusterJoinError) as e:
        raise SystemExit(f"fgmask_jax.distributed: {e}") from None
    print(line, flush=True)
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    app.run(main)
