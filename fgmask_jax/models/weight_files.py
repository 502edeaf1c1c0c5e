"""Weight files: every named array of a PyTorch state dict, as numpy arrays.

`.safetensors` files are read with safetensors' numpy API: no torch, no
unpickling. `.pth` / `.pt` / `.bin` files (torch's zip format) are read with
``torch.load(weights_only=True)`` when torch is installed; without torch the
error gives the command (`CONVERT_COMMAND`) that converts the file to
safetensors where torch is installed. A checkpoint dict that holds the state
dict under ``state_dict`` or ``model`` is unwrapped. A truncated file, a ``.pth``
holding pickled Python objects or an entry that is not a tensor is a
`WeightsError` naming the file.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping

import numpy as np

from fgmask_jax.errors import WeightsError

SUFFIXES_TORCH = (".pth", ".pt", ".bin")
CONVERT_COMMAND = (
    'python -c "import torch; from safetensors.torch import save_file; '
    "save_file(torch.load('{src}', weights_only=True, map_location='cpu'), '{dst}')\""
)


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
