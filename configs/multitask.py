"""Multi-task: one trunk, one head each for age group, gender and expression.

The study's best method (a ResNet-152 trunk). Train it:
  python -m fgmask_jax.main --config=configs/multitask.py --workdir=DIR

Variants after a colon (comma-separated):
  data=fgnet_mask|synthetic|synthetic_paired|fgnet_paired  model=resnet18..152|cnn|vgg16
  protocol=study|subject|photo|lopo
  size=112 (size=50 with model=cnn reproduces the study's setting)  runlocal (a laptop CPU run)
  python -m fgmask_jax.main --config=configs/multitask.py:data=synthetic,runlocal --workdir=DIR
Any field can be overridden too: --config.learning_rate=0.05
"""

from fgmask_jax import config_lib


def get_config(arg=None):
    return config_lib.neural_config(
        arg, tasks=("age_group", "gender", "expression"), model="resnet152", size=112
    )
