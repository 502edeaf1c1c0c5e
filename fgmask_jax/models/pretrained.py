"""Trunk weights in and out of torchvision's layout.

Reading (`load_torchvision`, `with_pretrained_trunk`) takes a torchvision
state dict of resnet18/34/50/101/152 or vgg16, as `.safetensors` or `.pth` /
`.pt` / `.bin` (see `fgmask_jax.models.weight_files` for how each is read).
VGG-16 may also come in the ``vgg_face_dag`` layout of VGG-Face
(``conv1_1.weight`` ... ``fc7.bias``). Accepted on the way in: a ``module.``
prefix on every key (DataParallel / DDP), a checkpoint dict that holds the state
dict under ``state_dict`` or ``model``, the classifier (``fc.*``,
``classifier.6.*``, VGG-Face's ``fc8.*``) and ``*.num_batches_tracked``, which are
dropped. Everything else is strict: a trunk array that is missing, unexpected
or of another shape, a file of another architecture, a truncated file or a
``.pth`` holding pickled Python objects is a `WeightsError` naming the file;
nothing is left at its random initialisation.

Layouts: torchvision's names and shapes for our trunk's arrays, and the
transposes between them, are in `fgmask_jax.models.torchvision_layout`.

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
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fgmask_jax.errors import WeightsError
from fgmask_jax.models.torchvision_layout import ARCHITECTURES as ARCHITECTURES
from fgmask_jax.models.torchvision_layout import (
    CLASSIFIERS,
    check_model,
    detect_architecture,
    flax_shapes,
    to_flax,
    to_torch,
    torch_names,
    torchvision_shapes,
)
from fgmask_jax.models.weight_files import read_state_dict

# ---------------------------------------------------------------- loading


def _without_prefix(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Without the `module.` prefix DataParallel / DDP put on every key."""
    if arrays and all(k.startswith("module.") for k in arrays):
        return {k[len("module.") :]: v for k, v in arrays.items()}
    return arrays


def _without_extras(arrays: dict[str, np.ndarray], layout: str) -> dict[str, np.ndarray]:
    """Without num_batches_tracked and the classifier, which the trunk does not use."""
    dropped = set(CLASSIFIERS.get(layout, ()))
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
    check_model(model)
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
        node[leaf] = to_flax(np.asarray(arrays[name], np.float32))
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

    check_model(model)
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
        tensors[name] = to_torch(value)
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
