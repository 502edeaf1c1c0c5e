"""VGG-Face: with pretrained weights, fc7 features and a linear classifier per task;
without them, VGG-16 trained end to end by the neural trainer.

Pretrained VGG-Face weights cannot be downloaded at run time: give a local
safetensors file (layout in fgmask_jax/baselines/vgg_face.py):

  python -m fgmask_jax.main --config=configs/vgg_face.py:weights=/path/vgg_face.safetensors \
      --workdir=DIR

Without ``weights=`` this config is the neural one of configs/multitask.py with
model=vgg16 (trained from scratch; its report is titled "vgg16 on ..."):

  python -m fgmask_jax.main --config=configs/vgg_face.py:data=synthetic,runlocal --workdir=DIR

(runlocal shrinks VGG-16 further than the other models: 32 px for 2 epochs, about 4.5 minutes
on 2 CPU cores; at 64 px for 8 epochs it would take about half an hour.)

Variants after a colon (comma-separated): weights=PATH, data=fgnet_mask|synthetic,
protocol=study|subject|photo|lopo, size=224 (the VGG-Face input), runlocal.
"""

from fgmask_jax import config_lib
from fgmask_jax.baselines import classical_config
from fgmask_jax.data import labels as labels_lib


def get_config(arg=None):
    weights, rest = config_lib.split_variant(arg, "weights", default="")
    if not weights:
        return config_lib.neural_config(rest, tasks=tuple(labels_lib.TASKS), model="vgg16",
                                        size=224)
    c, _ = classical_config(rest, "vgg_face", size=224)
    c.init_weights = weights  # a local .safetensors file of VGG-Face weights
    c.batch_size = 32
    return c
