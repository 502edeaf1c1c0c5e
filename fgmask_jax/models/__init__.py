"""Models: trunks (ResNet, the study's CNN, VGG-16) joined to one head per task.

    model = create_model("resnet152", {"age_group": 4, "gender": 2, "expression": 3})
    variables = model.init({"params": key, "dropout": key}, x, train=False)  # x: float[B, H, W, 3]
    logits = model.apply(variables, x, train=False)  # {task: float32[B, classes]}
    fc7 = model.apply(variables, x, method="features")  # top trunk features, float32[B, D]

Parameters are {"trunk": ..., "heads": {task: ...}}; ResNets add "batch_stats". The
convs and max-pools run the "cpu" or "xla" kernels (`layers`), chosen when the model is
built (`kernels="auto"`: by the default backend); parameters are the same in both.
"""

import re
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fgmask_jax.models import vgg as vgg_lib
from fgmask_jax.models.cnn import SmallCNN
from fgmask_jax.models.heads import MultiTaskModel, TaskHead, TaskHeads
from fgmask_jax.models.layers import KERNELS, Conv, conv_as_matmul, resolve_kernels
from fgmask_jax.models.resnet import (
    ResNet,
    ResNet18,
    ResNet34,
    ResNet50,
    ResNet101,
    ResNet152,
    ResNetTiny,
)
from fgmask_jax.models.vgg import VGG16

_TRUNKS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "resnet101": ResNet101,
    "resnet152": ResNet152,
    "cnn": SmallCNN,
    "vgg16": VGG16,
    "resnet_tiny": ResNetTiny,
}
MODELS: tuple[str, ...] = tuple(_TRUNKS)
# Levels of the study's CNN that a head may read (conv1..conv3).
CNN_LEVELS = (1, 2, 3)

__all__ = [
    "CNN_LEVELS",
    "KERNELS",
    "MODELS",
    "Conv",
    "MultiTaskModel",
    "ResNet",
    "SmallCNN",
    "TaskHead",
    "TaskHeads",
    "VGG16",
    "conv_as_matmul",
    "create_model",
    "create_trunk",
    "frozen_parts",
    "part_of",
    "resolve_kernels",
    "trunk_parts",
]


def create_trunk(name: str, *, dtype: jnp.dtype = jnp.float32,
                 frozen: Sequence[str] = (), kernels: str = "auto") -> nn.Module:
    """The feature extractor alone: images float[B, H, W, 3] -> features.

    ResNets give float[B, D] (D = 512 for 18/34, 2048 for 50+, 8 for resnet_tiny),
    "vgg16" its fc7 float[B, 4096], "cnn" its three levels (float[B, 10],
    float[B, 20], float[B, 30]). Call with `train=`; ResNets keep "batch_stats".

    ``frozen``: ResNet parts (see `trunk_parts`) whose BatchNorm layers keep
    their running statistics while training; other trunks have no BatchNorm.
    ``kernels``: "cpu", "xla" or "auto" ("cpu" on a CPU backend, else "xla"); see
    `layers.resolve_kernels`. The variables are the same whichever runs.

    Raises:
      ValueError: `name` is not one of MODELS, or `kernels` not auto, cpu or xla.
    """
    if name not in _TRUNKS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    options = {"dtype": dtype, "kernels": resolve_kernels(kernels)}
    if frozen and name.startswith("resnet"):
        options["frozen"] = tuple(frozen)
    return _TRUNKS[name](**options)


def create_model(
    name: str,
    tasks: Mapping[str, int],
    *,
    dtype: jnp.dtype = jnp.float32,
    head_hidden: int = 0,
    head_depths: Mapping[str, int] | None = None,
    dropout: float = 0.0,
    frozen: Sequence[str] = (),
    kernels: str = "auto",
) -> MultiTaskModel:
    """A trunk with one classification head per task.

    Args:
      name: one of MODELS.
      tasks: task name -> number of classes, e.g. {"age_group": 4, "gender": 2,
        "expression": 3}; one task makes the single-task model.
      dtype: computation dtype (bfloat16 on accelerators); parameters stay
        float32 and logits come out float32.
      head_hidden: > 0: each head is Dense(head_hidden) + ReLU (+ dropout) +
        Dense(classes); 0: one Dense.
      head_depths: only for "cnn": task -> conv level 1..3 its head reads (the
        study: {"age_group": 3, "gender": 2, "expression": 1}); None: all read conv3.
      dropout: dropout rate after each head's hidden layer.
      frozen: trunk parts that are not trained (BatchNorm keeps its statistics there).
      kernels: the trunk's conv and max-pool kernels, "cpu" or "xla"; "auto": "cpu" on a
        CPU default backend, else "xla" (`layers.resolve_kernels`). Same variables in both.

    Returns:
      A module whose apply(variables, x: float[B, H, W, 3], train=...) gives
      {task: float32[B, classes]}.

    Raises:
      ValueError: an unknown model name or kernels, no tasks, a task with fewer than
        one class, or head_depths that are not levels 1..3 of known tasks on "cnn".
    """
    trunk = create_trunk(name, dtype=dtype, frozen=frozen, kernels=kernels)
    if not tasks:
        raise ValueError("tasks is empty; give at least one task name -> number of classes")
    for task, num_classes in tasks.items():
        if int(num_classes) < 1:
            raise ValueError(f"task {task!r} has {num_classes} classes; it needs at least one")
    if head_hidden < 0:
        raise ValueError(f"head_hidden must be >= 0, got {head_hidden}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    head_levels = ()
    if head_depths:
        if name != "cnn":
            raise ValueError(f"head_depths applies only to model 'cnn', not {name!r}")
        for task, level in head_depths.items():
            if task not in tasks:
                raise ValueError(f"head_depths names task {task!r}, not in tasks {list(tasks)}")
            if level not in CNN_LEVELS:
                raise ValueError(f"head_depths[{task!r}] = {level}; levels are {CNN_LEVELS}")
        head_levels = tuple((task, int(level)) for task, level in head_depths.items())
    return MultiTaskModel(
        trunk=trunk,
        tasks=tuple((task, int(n)) for task, n in tasks.items()),
        head_hidden=head_hidden,
        dropout=dropout,
        head_levels=head_levels,
        dtype=dtype,
    )


# --- a trunk's named parts: what config.freeze names (train/optim freezes them)


def trunk_parts(model: str) -> tuple[str, ...]:
    """The part names `freeze` may use for `model`, in input-to-output order."""
    # Its structure only: kernels named, so that no backend is asked for (a cluster's
    # processes must not start one before they join: fgmask_jax.distributed).
    trunk = create_trunk(model, kernels="xla")
    if isinstance(trunk, ResNet):
        return ("stem", *(f"layer{i + 1}" for i in range(len(trunk.stage_sizes))))
    if model == "vgg16":
        return (*(f"block{b + 1}" for b in range(len(vgg_lib.BLOCKS))), "fc6", "fc7")
    if model == "cnn":
        return tuple(f"conv{i + 1}" for i in range(3))
    raise ValueError(f"no trunk parts defined for model {model!r}")


def part_of(model: str, module: str) -> str:
    """The part a top-level trunk module belongs to (ResNet's conv1/bn1 -> stem, ...)."""
    if module in ("conv1", "bn1") and model != "cnn":
        return "stem"
    if m := re.fullmatch(r"(layer\d+)_\d+", module):
        return m[1]
    if m := re.fullmatch(r"conv(\d+)_\d+", module):
        return f"block{m[1]}"
    return module  # fc6, fc7, the CNN's conv1..conv3


def frozen_parts(model: str, freeze: str) -> tuple[str, ...]:
    """The parts named in `freeze` ("stem,layer1"; "" for none; "trunk" for all), validated.

    Raises:
      ValueError: a part `model` does not have, listing those it has.
    """
    valid = trunk_parts(model)
    names = [p.strip() for p in freeze.split(",") if p.strip()]
    unknown = [p for p in names if p not in valid and p != "trunk"]
    if unknown:
        raise ValueError(
            f"freeze names {', '.join(map(repr, unknown))}, not a part of {model}; "
            f"its parts are {', '.join(valid)} (or 'trunk' for all)"
        )
    if "trunk" in names:
        return valid
    return tuple(p for p in valid if p in names)
