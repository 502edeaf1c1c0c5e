"""Single-task: one trunk and one head for one task (the study's single-task baselines).

  python -m fgmask_jax.main --config=configs/single_task.py:task=gender --workdir=DIR

Variants after a colon (comma-separated): task=age_group|gender|expression (default
age_group), and those of configs/multitask.py: data=, model=, protocol=, size=, runlocal.
"""

from fgmask_jax import config_lib


def get_config(arg=None):
    task, rest = config_lib.split_variant(arg, "task", default="age_group")
    return config_lib.neural_config(rest, tasks=(task,), model="resnet152", size=112)
