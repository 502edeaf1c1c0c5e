"""Trains and evaluates one method: ``python -m fgmask_jax.main --config=... --workdir=...``.

This file is intentionally kept short: the work happens in `train` (neural methods)
and `baselines.run` (classical ones), called by `experiments.method.run_method`.

Example:
  python -m fgmask_jax.main --config=configs/multitask.py:data=synthetic,runlocal \
      --workdir=workdir/multitask
"""

import ast

from absl import flags
from ml_collections import config_flags

from fgmask_jax import cli, config_lib, distributed, errors

PROG = "fgmask_jax.main"
cli.define_cluster_flags()  # --coordinator_address, --num_processes, ...
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the report go; rerunning "
                    "the same command with the same workdir resumes.")
config_flags.DEFINE_config_file(
    "config", None, "A config file in configs/, with variants after a colon.", lock_config=True
)
flags.DEFINE_bool("print_config", False, "Print the config's keys and values, then exit.")

USAGE = """\
Train and evaluate one method.

  python -m fgmask_jax.main --config=FILE[:VARIANTS] --workdir=DIR [--config.KEY=VALUE ...]

Configs (each file's docstring holds its commands):
{configs}

Variants, after a colon, comma-separated (configs/multitask.py:data=synthetic,runlocal):
  data=fgnet_mask|synthetic|synthetic_paired|fgnet_paired
  protocol=study|subject|photo|lopo    size=N
  runlocal
  neural configs: model={models}
  single_task.py: task=age_group|gender|expression
  lbp.py: variant=study|uniform, sampling=circle|square, grid=N;  vgg_face.py: weights=FILE

Keys: every field of a config can be set with --config.KEY=VALUE (an unknown key is an
error that lists them); --print_config shows them all with their values:
  python -m fgmask_jax.main --config=configs/multitask.py --print_config

Rerunning a command with the same --workdir resumes it. Library logs are quiet; add
--verbosity=1 to see them. All flags: --helpfull.
"""


def usage() -> str:
    lines = []
    for path in config_lib.config_files():
        with open(path) as f:
            doc = ast.get_docstring(ast.parse(f.read())) or ""
        lines.append(f"  {path:26s} {doc.splitlines()[0] if doc else ''}")
    return USAGE.format(configs="\n".join(lines), models="|".join(config_lib.MODELS[:-1]))


def _flag_value(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """`cli.parse_flags` (help, one-line errors), with the config file, its variants and its
    keys checked first, so that a mistake there is named."""
    if any(a in cli.HELP_FLAGS for a in argv[1:]):
        return cli.parse_flags(argv, PROG, usage)
    spec = _flag_value(argv, "config")
    if spec is None:
        cli.fail(PROG, "--config is required, e.g. --config=configs/multitask.py "
                       "(--help lists the configs)", 2)
    try:  # the config file and its variants: a clear message, not config_flags' traceback
        keys = config_lib.leaf_keys(config_lib.load(spec))
    except config_lib.ConfigError as e:
        cli.fail(PROG, str(e), 2)
    given = [a[len("--config."):].split("=")[0] for a in argv if a.startswith("--config.")]
    unknown = [k for k in given if k not in keys]
    if unknown:
        cli.fail(PROG, f"unknown config key {unknown[0]!r} (--config.{unknown[0]}). "
                       f"Valid keys: {', '.join(keys)}", 2)
    return cli.parse_flags(argv, PROG)


def main(argv):
    if len(argv) > 1:
        raise errors.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = flags.FLAGS.config
    if flags.FLAGS.print_config:
        print(config)
        return
    config_lib.validate(config)
    if not flags.FLAGS.workdir:
        raise errors.UserError("--workdir is required: the folder for checkpoints, metrics "
                               "and the report")
    workdir = cli.absolute(flags.FLAGS.workdir)
    config.data_dir = cli.absolute(config.data_dir)
    config.manual_dir = cli.absolute(config.manual_dir)
    distributed.maybe_initialize(cli.cluster_options())  # before any JAX computation
    # After flag parsing: grain workers need parsed flags.
    from fgmask_jax.experiments.method import run_method

    run_method(config, workdir)


if __name__ == "__main__":
    cli.run(main, prog=PROG, flags_parser=parse_flags)
