"""Trunk weights in and out of torchvision's layout, and which trunk parts to freeze.

Reading (`load_torchvision`, `with_pretrained_trunk`) takes a torchvision
state dict of resnet18/34/50/101/152 or vgg16, as `.safetensors` (read with
safetensors' numpy API: no torch, no unpickling) or `.pth` / `.pt` / `.bin`
(torch's zip format, read with ``torch.load(weights_only=True)`` when torch is
installed). VGG-16 may also come in the ``vgg_face_dag`` layout of VGG-Face
(``conv1_1.weight`` ... ``fc7.bias``). Accepted on the way in: a ``module.``
prefix on every key (DataParallel / DDP), a checkpoint dict that holds the state
dict under ``state_dict`` or ``model``, the classifier (``fc.*``,
``classifier.6.*``, VGG-Face's ``fc8.*``) and ``*.num_batches_tracked``, which are
dropped. Everything else is strict: a trunk array that is missing, unexpected
or of another shape, a file of another architecture, a truncated file or a
``.pth`` holding pickled Python objects is a `WeightsError` naming the file;
nothing is left at its random initialisation.

Layouts: conv weights OIHW <-> Flax HWIO, linear weights (out, in) <-> (in, out),
BatchNorm weight / bias / running_mean / running_var <-> scale / bias (params)
and mean / var (batch_stats). Module names follow torchvision's ("layer3.5.conv2"
is our "layer3_5/conv2", "downsample.0/1" our "downsample_conv/bn"); VGG-16's
13 convs are torchvision's ``features.{0,2,5,...,28}`` and our ``conv1_1`` ..
``conv5_3``, fc6 / fc7 are ``classifier.0`` / ``classifier.3``. VGG-16 flattens
its 7x7x512 map channel-first, as torchvision does, so fc6 needs no reordering.

Writing (`export_torchvision`) gives a ``.safetensors`` file that a PyTorch user
loads into torchvision with strict checking, once the classifier is swapped for
an identity (the file holds everything else, including ``num_batches_tracked``)::

    from safetensors.torch import load_file
    model = torchvision.models.resnet50()
    model.fc = torch.nn.Identity()            # vgg16: model.classifier[6] = torch.nn.Identity()
    model.load_state_dict(load_file("trunk.safetensors"))   # strict: every key matches
    features = model.eval()(images)           # float32[B, 2048], our `features`

or, keeping a classifier to train, ``model.load_state_dict(sd, strict=False)``,
which reports exactly ``fc.weight`` and ``fc.bias`` missing and nothing unexpected.

Freezing (`freeze_mask`): trunk parts by name. ResNets: ``stem`` (conv1 + bn1),
``layer1`` .. ``layer4`` (torchvision's stages); VGG-16: ``block1`` .. ``block5``
(the convs conv{b}_1 .. conv{b}_k before each max-pool) and ``fc6``, ``fc7``;
the study's CNN: ``conv1`` .. ``conv3``; ``trunk`` names every part. The trainer
uses the mask as::

    mask = freeze_mask(params, config.model, config.freeze)
    labels = jax.tree.map(lambda frozen: "frozen" if frozen else "trained", mask)
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)

`freeze_mask` also takes ``batch_stats`` ({"trunk": ...}): True marks the
BatchNorm statistics of frozen parts. A frozen part should run its BatchNorm in
inference mode (running statistics, not updated), as Keras does for a layer with
``trainable=False``; `frozen_parts` gives the validated part names a model needs
for that.

The study's "Keras ResNet152V2, layers 0-136 frozen", in our stage names. Keras
lists ResNet152V2's layers (include_top=False: 564) as: 0 input, 1-4 the stem
(conv1_pad, conv1_conv, pool1_pad, pool1_pool; a V2 stem has no BatchNorm), then
stacks conv2..conv5 of 3, 8, 36 and 3 pre-activation blocks. A block has 11
layers (preact_bn, preact_relu, 1_conv, 1_bn, 1_relu, 2_pad, 2_conv, 2_bn,
2_relu, 3_conv, out), 12 when it also has a shortcut layer (the first block of a
stack: a 1x1 "0_conv"; the last block of conv2..conv4, which strides: a 1x1
max-pool). So conv2 takes layers 5-39 (12 + 11 + 12), conv3 40-129
(12 + 6 * 11 + 12) and conv4_block1 starts at 130: layer 136 is inside
conv4_block1 (its 3x3 2_conv where Keras lists the shortcut's 0_conv just before
3_conv, as its model summaries do; its 2_pad if 0_conv came right after
preact_relu: inside conv4_block1 either way). The same count gives
ResNet50V2's well-known 190 layers. Keras's conv2..conv5 are torchvision's
layer1..layer4, so the study froze the stem, layer1, layer2 and part of
layer3's first block: at stage granularity ``freeze="stem,layer1,layer2"``. (Our
ResNets are v1.5, post-activation, with the stride on a stage's first block;
V2 is pre-activation with the stride on a stack's last block, so the parts
correspond by position, not weight for weight.)
"""

from __future__ import annotations

import functools
import os
import pickle
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fgmask_jax.errors import WeightsError
from fgmask_jax.models import vgg
from fgmask_jax.models.resnet import ResNet

ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg16")
SUFFIXES_TORCH = (".pth", ".pt", ".bin")
# (blocks per stage, bottleneck) -> torchvision's name.
_RESNETS = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}
_VGGS = {8: "vgg11", 10: "vgg13", 13: "vgg16", 16: "vgg19"}
_CLASSIFIERS = {
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
CONVERT_COMMAND = (
    'python -c "import torch; from safetensors.torch import save_file; '
    "save_file(torch.load('{src}', weights_only=True, map_location='cpu'), '{dst}')\""
)




# ---------------------------------------------------------------- layouts


def _check_model(model: str) -> None:
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
    _check_model(model)
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


def _to_flax(value: np.ndarray) -> np.ndarray:
    # Transposed views, not copies: placing them on a device copies them anyway.
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2:
        return value.T
    return value


def _to_torch(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if value.ndim == 2:
        return np.ascontiguousarray(value.T)
    return np.ascontiguousarray(value)


# ---------------------------------------------------------------- reading files


def _convert_hint(path: str) -> str:
    stem = os.path.splitext(path)[0]
    return CONVERT_COMMAND.format(src=path, dst=stem + ".safetensors")


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="np") as f:
            return {name: f.get_tensor(name) for name in f.keys()}
    except SafetensorError as e:
        raise WeightsError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {e}"
        ) from e


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise WeightsError(
            f"{path}: reading a PyTorch file needs torch, which is not installed. "
            f"Convert it to safetensors where torch is installed:\n  {_convert_hint(path)}\n"
            "and pass the .safetensors file instead"
        ) from e
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"{path}: holds pickled Python objects besides tensors, which torch.load("
            "weights_only=True) refuses to unpickle (they could run code). Save the "
            "weights alone, torch.save(model.state_dict(), path), or convert a file you "
            "trust to safetensors"
        ) from e
    except Exception as e:  # torch raises RuntimeError, KeyError, EOFError ... on bad bytes
        raise WeightsError(
            f"{path}: cannot be read as a PyTorch file (truncated or corrupt?): "
            f"{type(e).__name__}: {str(e)[:200]}"
        ) from e
    state = _unwrap_checkpoint(path, state, torch.is_tensor)
    arrays = {}
    for name, value in state.items():
        if not torch.is_tensor(value):
            raise WeightsError(
                f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor; "
                "a state dict holds only tensors"
            )
        value = value.detach()
        if value.is_floating_point() and value.dtype not in (
            torch.float16,
            torch.float32,
            torch.float64,
        ):
            value = value.float()  # bfloat16 and others numpy lacks
        arrays[name] = value.numpy()
    return arrays


def _unwrap_checkpoint(path: str, state, is_tensor) -> Mapping:
    """A state dict, or the one inside a training checkpoint {"state_dict" | "model": ...}."""
    while isinstance(state, Mapping) and not any(is_tensor(v) for v in state.values()):
        inner = [k for k in ("state_dict", "model") if isinstance(state.get(k), Mapping)]
        if not inner:
            break
        state = state[inner[0]]
    if not isinstance(state, Mapping):
        raise WeightsError(
            f"{path}: holds a {type(state).__name__}, not a state dict of named tensors"
        )
    return state


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """All named arrays of a `.safetensors` or `.pth`/`.pt`/`.bin` file, as numpy arrays.

    Raises:
      FileNotFoundError: no file at `path`.
      WeightsError: another suffix, an unreadable file, pickled objects, or a
        `.pth` file without torch installed (with the command to convert it).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} not found")
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    if path.endswith(SUFFIXES_TORCH):
        return _read_torch(path)
    raise WeightsError(
        f"{path}: unknown weights format; give a .safetensors file or a PyTorch "
        f"{' / '.join(SUFFIXES_TORCH)} file"
    )


# ---------------------------------------------------------------- architectures


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


def _without_prefix(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Without the `module.` prefix DataParallel / DDP put on every key."""
    if arrays and all(k.startswith("module.") for k in arrays):
        return {k[len("module.") :]: v for k, v in arrays.items()}
    return arrays


def _without_extras(arrays: dict[str, np.ndarray], layout: str) -> dict[str, np.ndarray]:
    """Without num_batches_tracked and the classifier, which the trunk does not use."""
    dropped = set(_CLASSIFIERS.get(layout, ()))
    return {
        k: v
        for k, v in arrays.items()
        if k not in dropped and not k.endswith(".num_batches_tracked")
    }


def _check_arrays(
    path: str, arrays: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]]
) -> None:
    """Every expected key present with its shape and a float dtype, and no other key."""
    problems = []
    for name, shape in expected.items():
        if name not in arrays:
            problems.append(f"missing {name!r} (expected shape {shape})")
            continue
        found = tuple(arrays[name].shape)
        if found != shape:
            problems.append(f"{name!r} has shape {found}, expected {shape}")
        elif not jnp.issubdtype(arrays[name].dtype, jnp.floating):  # bfloat16 too
            problems.append(f"{name!r} has dtype {arrays[name].dtype}, expected a float")
    for name in arrays:
        if name not in expected:
            problems.append(f"unexpected {name!r} (shape {tuple(arrays[name].shape)})")
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise WeightsError(f"{path}: {len(problems)} problem(s):\n  {shown}{more}")


def load_torchvision(path: str, model: str) -> dict[str, dict]:
    """A torchvision-layout weights file as our trunk's variables.

    Args:
      path: `.safetensors`, or `.pth` / `.pt` / `.bin` (needs torch), of a
        torchvision `model` (or VGG-Face's vgg_face_dag layout for "vgg16").
      model: one of ARCHITECTURES.

    Returns:
      {"params": trunk params, "batch_stats": trunk statistics ({} for vgg16)},
      nested dicts of float32 numpy arrays, shaped as `create_trunk(model)`'s.

    Raises:
      ValueError: `model` has no torchvision layout.
      FileNotFoundError: no file at `path`.
      WeightsError: naming the file, for any array missing, unexpected, of
        another shape or not float; a file of another architecture (naming
        both); an unreadable file or format.
    """
    _check_model(model)
    path = os.fspath(path)
    arrays = _without_prefix(read_state_dict(path))
    found, layout = detect_architecture({k: tuple(v.shape) for k, v in arrays.items()})
    if found != model:
        raise WeightsError(
            f"{path} holds {found} weights (judged from its keys and shapes), not {model}; "
            f"choose the model the file was saved from"
        )
    arrays = _without_extras(arrays, layout)
    names = torch_names(model, layout)
    _check_arrays(path, arrays, torchvision_shapes(model, layout))
    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for name, (collection, *modules, leaf) in names.items():
        node = variables[collection]
        for module in modules:
            node = node.setdefault(module, {})
        node[leaf] = _to_flax(np.asarray(arrays[name], np.float32))
    return variables


# ---------------------------------------------------------------- full models


def _flat(tree: Mapping) -> dict[tuple[str, ...], object]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(k.key for k in keys): leaf for keys, leaf in flat}


def _count(tree: Mapping) -> int:
    return len(jax.tree_util.tree_leaves(tree))


def _replace_trunk(current: Mapping, loaded: Mapping, path: str, collection: str) -> dict:
    """`loaded` cast to the dtypes of `current`, after checking they hold the same arrays."""
    have, new = _flat(current), _flat(loaded)
    if set(have) != set(new):
        odd = sorted(set(have) ^ set(new))[:3]
        raise WeightsError(
            f"{path}: the model's trunk {collection} and the file's differ at {odd}; "
            "was the model created with the same name as the file's architecture?"
        )
    for key, leaf in have.items():
        if tuple(leaf.shape) != new[key].shape:
            raise WeightsError(
                f"{path}: trunk {collection} {'/'.join(key)} has shape {new[key].shape} "
                f"in the file, {tuple(leaf.shape)} in the model"
            )
    return jax.tree.map(lambda old, value: value.astype(old.dtype), current, loaded)


def with_pretrained_trunk(variables: Mapping, path: str, model: str) -> tuple[dict, str]:
    """A full model's variables with the trunk read from `path`; heads stay as they are.

    Args:
      variables: {"params": {"trunk": ..., "heads": ...}, "batch_stats": {"trunk": ...}}
        of `create_model(model, ...)` (arrays or `jax.ShapeDtypeStruct`s).
      path: the weights file (see `load_torchvision`).
      model: one of ARCHITECTURES, the name the model was created with.

    Returns:
      (variables, description): new variables whose trunk arrays are numpy, in
      the dtypes of `variables`; a one-line summary for the log, e.g.
      "resnet50 trunk from W.pth: 265 arrays (23,561,152 parameters); heads
      age_group, gender freshly initialised".

    Raises:
      ValueError / FileNotFoundError / WeightsError: as `load_torchvision`, and
        a WeightsError when `variables` are not those of `model`.
    """
    loaded = load_torchvision(path, model)
    params = dict(variables["params"])
    params["trunk"] = _replace_trunk(params["trunk"], loaded["params"], path, "params")
    out = {**variables, "params": params}
    if loaded["batch_stats"]:
        stats = dict(variables["batch_stats"])
        stats["trunk"] = _replace_trunk(stats["trunk"], loaded["batch_stats"], path, "batch_stats")
        out["batch_stats"] = stats
    weights = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(loaded["params"]))
    arrays = _count(loaded["params"]) + _count(loaded["batch_stats"])
    heads = ", ".join(params.get("heads", {})) or "none"
    description = (
        f"{model} trunk from {path}: {arrays} arrays ({weights:,} parameters); "
        f"heads {heads} freshly initialised"
    )
    return out, description


def export_torchvision(variables: Mapping, model: str, path: str) -> list[str]:
    """Writes the trunk as a torchvision state dict in `.safetensors` (float32).

    The file holds every key of torchvision's `model` except the classifier
    (fc.* / classifier.6.*), with `num_batches_tracked` as int64 zeros, and the
    metadata {"format": "pt", "architecture": model}. PyTorch loads it with
    `safetensors.torch.load_file`; `load_state_dict` then matches strictly
    once the classifier is an identity, or with strict=False reports only the
    classifier missing (see the module docstring). The file is written under a
    temporary name and renamed, so a crash leaves no half-written file.

    Args:
      variables: a full model's {"params": {"trunk", "heads"}, "batch_stats": {"trunk"}},
        or trunk variables {"params", "batch_stats"} as `load_torchvision` gives.
      model: one of ARCHITECTURES.
      path: destination ending in ".safetensors".

    Returns:
      The keys written.

    Raises:
      ValueError: `model` has no torchvision layout, or `path` is not .safetensors.
      WeightsError: the variables are not those of `model`'s trunk.
    """
    from safetensors.numpy import save_file

    _check_model(model)
    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        raise ValueError(f"{path}: export writes safetensors; end the path with .safetensors")
    params, stats = variables["params"], variables.get("batch_stats", {})
    if "trunk" in params:  # a full model's variables
        params, stats = params["trunk"], stats.get("trunk", {})
    have = {("params", *k): v for k, v in _flat(params).items()}
    have.update({("batch_stats", *k): v for k, v in _flat(stats).items()})
    tensors = {}
    for name, path_ in torch_names(model).items():
        if path_ not in have:
            raise WeightsError(f"{path}: the variables lack {'/'.join(path_)} of {model}'s trunk")
        value = np.asarray(jax.device_get(have[path_]), np.float32)
        if value.shape != flax_shapes(model)[path_][0]:
            raise WeightsError(
                f"{path}: {'/'.join(path_)} has shape {value.shape}, "
                f"{model} needs {flax_shapes(model)[path_][0]}"
            )
        tensors[name] = _to_torch(value)
        if path_[-1] == "var":  # one counter per BatchNorm, as torchvision keeps
            tensors[name.replace("running_var", "num_batches_tracked")] = np.zeros((), np.int64)
    extra = sorted(set(have) - set(torch_names(model).values()))
    if extra:
        raise WeightsError(
            f"{path}: the variables hold {'/'.join(extra[0])}, not in {model}'s trunk"
        )
    save_file(tensors, path + ".tmp", metadata={"format": "pt", "architecture": model})
    os.replace(path + ".tmp", path)
    return list(tensors)


# ---------------------------------------------------------------- freezing


def trunk_parts(model: str) -> tuple[str, ...]:
    """The part names `freeze` may use for `model`, in input-to-output order."""
    from fgmask_jax import models

    trunk = models.create_trunk(model)
    if isinstance(trunk, ResNet):
        return ("stem", *(f"layer{i + 1}" for i in range(len(trunk.stage_sizes))))
    if model == "vgg16":
        return (*(f"block{b + 1}" for b in range(len(vgg.BLOCKS))), "fc6", "fc7")
    if model == "cnn":
        return tuple(f"conv{i + 1}" for i in range(3))
    raise ValueError(f"no trunk parts defined for model {model!r}")


def _part_of(model: str, module: str) -> str:
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


def freeze_mask(tree: Mapping, model: str, freeze: str) -> dict:
    """True for each array of a frozen trunk part, False elsewhere (heads are never frozen).

    Args:
      tree: a full model's params {"trunk": ..., "heads": ...}, or its
        batch_stats {"trunk": ...}.
      model: the name the model was created with.
      freeze: comma-separated part names (see `frozen_parts`); "" trains everything.

    Returns:
      A pytree of bools with the structure of `tree`.

    Raises:
      ValueError: an unknown part (listing the valid ones) or model.
    """
    frozen = set(frozen_parts(model, freeze))
    mask = {key: _fill(sub, False) for key, sub in tree.items()}
    if "trunk" in tree:
        mask["trunk"] = {
            module: _fill(sub, _part_of(model, module) in frozen)
            for module, sub in tree["trunk"].items()
        }
    return mask


def _fill(tree, value: bool):
    return jax.tree.map(lambda _: value, tree)
