"""torchvision's names and shapes for our trunks, and which architecture a state dict holds.

Layouts: conv weights OIHW <-> Flax HWIO, linear weights (out, in) <-> (in, out),
BatchNorm weight / bias / running_mean / running_var <-> scale / bias (params)
and mean / var (batch_stats). Module names follow torchvision's ("layer3.5.conv2"
is our "layer3_5/conv2", "downsample.0/1" our "downsample_conv/bn"); VGG-16's
13 convs are torchvision's ``features.{0,2,5,...,28}`` and our ``conv1_1`` ..
``conv5_3``, fc6 / fc7 are ``classifier.0`` / ``classifier.3``. VGG-16 flattens
its 7x7x512 map channel-first, as torchvision does, so fc6 needs no reordering.
VGG-Face's ``vgg_face_dag`` layout (``conv1_1.weight`` ... ``fc7.bias``) uses our
module names.

`detect_architecture` names what a state dict holds from its keys and shapes
alone: a torchvision ResNet or VGG (with or without BatchNorm), VGG-Face, or a
description of the variant or unknown network found.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fgmask_jax.models import vgg

ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg16")
# (blocks per stage, bottleneck) -> torchvision's name.
_RESNETS = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}
_VGGS = {8: "vgg11", 10: "vgg13", 13: "vgg16", 16: "vgg19"}
CLASSIFIERS = {
    "resnet": ("fc.weight", "fc.bias"),
    "torchvision": ("classifier.6.weight", "classifier.6.bias"),
    "vgg_face_dag": ("fc8.weight", "fc8.bias"),
}
_TO_TORCH_LEAF = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}


def check_model(model: str) -> None:
    """A ValueError unless `model` is one of ARCHITECTURES."""
    if model not in ARCHITECTURES:
        raise ValueError(
            f"no torchvision layout for model {model!r}; choose one of {', '.join(ARCHITECTURES)}"
        )


@functools.cache
def flax_shapes(model: str) -> dict[tuple[str, ...], tuple[tuple[int, ...], str]]:
    """Our trunk's arrays: path (collection, module..., leaf) -> (shape, collection).

    The path's first element is "params" or "batch_stats". Computed with
    `jax.eval_shape` (no compute), in the trunk's module order.
    """
    from fgmask_jax import models  # the package imports this module's siblings

    trunk = models.create_trunk(model)
    variables = jax.eval_shape(
        lambda: trunk.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    )
    shapes = {}
    for collection in ("params", "batch_stats"):
        flat = jax.tree_util.tree_flatten_with_path(variables.get(collection, {}))[0]
        for keys, leaf in flat:
            path = (collection, *(k.key for k in keys))
            shapes[path] = (tuple(leaf.shape), collection)
    return shapes


def _vgg_feature_index() -> dict[str, int]:
    """conv{b}_{c} -> its index in torchvision's vgg16 `features` (conv, ReLU, ..., pool)."""
    index, position = {}, 0
    for b, block in enumerate(vgg.BLOCKS):
        for c in range(len(block)):
            index[f"conv{b + 1}_{c + 1}"] = position
            position += 2  # the conv and its ReLU
        position += 1  # the block's max-pool
    return index


def _torch_module(layout: str, module: str) -> str:
    """One of our module names -> torchvision's (dotted)."""
    if layout == "resnet":
        if m := re.fullmatch(r"layer(\d+)_(\d+)", module):
            return f"layer{m[1]}.{m[2]}"
        return {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(
            module, module
        )
    if layout == "torchvision":
        if module in ("fc6", "fc7"):
            return {"fc6": "classifier.0", "fc7": "classifier.3"}[module]
        return f"features.{_vgg_feature_index()[module]}"
    return module  # vgg_face_dag uses our names


def _layout(model: str) -> str:
    return "resnet" if model.startswith("resnet") else "torchvision"


@functools.cache
def torch_names(model: str, layout: str | None = None) -> dict[str, tuple[str, ...]]:
    """torchvision key -> our path (collection, module..., leaf), in module order.

    Args:
      model: one of ARCHITECTURES.
      layout: "resnet" / "torchvision" (VGG) by default; "vgg_face_dag" for VGG-Face.
    """
    check_model(model)
    layout = layout or _layout(model)
    names = {}
    for path in flax_shapes(model):
        modules = ".".join(_torch_module(layout, m) for m in path[1:-1])
        names[f"{modules}.{_TO_TORCH_LEAF[path[-1]]}"] = path
    return names


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 4:  # HWIO -> OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:  # (in, out) -> (out, in)
        return (shape[1], shape[0])
    return shape


def torchvision_shapes(model: str, layout: str | None = None) -> dict[str, tuple[int, ...]]:
    """torchvision key -> the shape PyTorch gives it, for the trunk of `model` (no classifier)."""
    shapes = flax_shapes(model)
    return {
        name: _torch_shape(shapes[path][0]) for name, path in torch_names(model, layout).items()
    }


def to_flax(value: np.ndarray) -> np.ndarray:
    """A torchvision array in our layout: OIHW -> HWIO, (out, in) -> (in, out)."""
    # Transposed views, not copies: placing them on a device copies them anyway.
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2:
        return value.T
    return value


def to_torch(value: np.ndarray) -> np.ndarray:
    """A contiguous copy in torchvision's layout: HWIO -> OIHW, (in, out) -> (out, in)."""
    if value.ndim == 4:
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if value.ndim == 2:
        return np.ascontiguousarray(value.T)
    return np.ascontiguousarray(value)


def detect_architecture(shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, str]:
    """What a state dict holds, from its keys and shapes: (architecture, layout).

    The architecture is a torchvision name ("resnet50", "vgg16_bn", ...), or a
    description such as "unknown (first keys: ...)"; layout is "resnet",
    "torchvision" (VGG), "vgg_face_dag" or "".
    """
    keys = set(shapes)
    if "conv1_1.weight" in keys:
        return "vgg16", "vgg_face_dag"
    features = {int(m[1]) for k in keys if (m := re.fullmatch(r"features\.(\d+)\.\w+", k))}
    if features:
        batch_norm = any(k.startswith("features.") and k.endswith("running_mean") for k in keys)
        convs = len(features) // (2 if batch_norm else 1)
        name = _VGGS.get(convs, f"a VGG-like network with {convs} convs")
        return name + ("_bn" if batch_norm else ""), "torchvision"
    if any(k.startswith("layer1.0.") for k in keys):
        stages = tuple(
            len({m[1] for k in keys if (m := re.match(rf"layer{i}\.(\d+)\.", k))})
            for i in range(1, 5)
        )
        bottleneck = any(k.startswith("layer1.0.conv3.") for k in keys)
        name = _RESNETS.get((stages, bottleneck))
        block = "Bottleneck" if bottleneck else "BasicBlock"
        if name is None:
            return f"a ResNet of {block} stages {stages}", "resnet"
        conv2 = shapes.get("layer1.0.conv2.weight", (0, 0))
        conv1 = shapes.get("layer1.0.conv1.weight", (64,))
        if conv2[0] != conv2[1] or conv1[0] != 64:
            return f"a wide or grouped-conv variant of {name} (wide_resnet / resnext)", "resnet"
        return name, "resnet"
    return f"unknown (first keys: {', '.join(sorted(keys)[:3])})", ""
