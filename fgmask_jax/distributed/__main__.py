# The help of ``python -m fgmask_jax.distributed`` is the library's docstring (below): when a
# process joins a cluster, and the check this command runs.
from absl import app, flags

from fgmask_jax import cli, distributed, errors

__doc__ = distributed.__doc__
cli.define_cluster_flags()
flags.adopt_module_key_flags(cli)  # --help lists them as this command's flags


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        ok, line = distributed.smoke_check(cli.cluster_options())
    except errors.UserError as e:  # a flag, or a coordinator out of reach
        raise SystemExit(f"fgmask_jax.distributed: {e}") from None
    print(line, flush=True)
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    app.run(main)
