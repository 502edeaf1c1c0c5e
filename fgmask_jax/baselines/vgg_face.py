"""VGG-Face features: fc7 of the VGG-16 trunk with pretrained VGG-Face weights, L2-normalised.

Weights cannot be fetched at run time: they are read from a local safetensors
file (``config.vgg_face.init_weights``), with safetensors' numpy API, which never
unpickles. The file holds PyTorch tensors under the names of the common
``vgg_face_dag`` conversion of the MatConvNet model (layer names of the original
VGG-Face release):

    conv1_1.weight  float[64, 3, 3, 3]   (out, in, kh, kw: OIHW)
    conv1_1.bias    float[64]
    ...             conv1_2, conv2_1, conv2_2, conv3_1..conv3_3, conv4_1..conv4_3,
                    conv5_1..conv5_3
    fc6.weight      float[4096, 25088]   (out, in), in = 512 * 7 * 7 flattened channel-first
    fc6.bias        float[4096]
    fc7.weight      float[4096, 4096]
    fc7.bias        float[4096]

``fc8.weight`` / ``fc8.bias`` (the 2,622-identity classifier) may be present and
are ignored; any other name is an error. Float16, float32 and float64 tensors
are accepted and cast to float32. Convolutions are moved from OIHW to Flax's HWIO,
linear weights from (out, in) to Dense's (in, out); fc6 needs no reordering,
because the trunk flattens its 7x7x512 map channel-first, as PyTorch does.

Inputs are RGB in [0, 255] minus the VGG-Face mean colour (`MEAN_RGB`), no
scaling, as the conversion expects.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from fgmask_jax import models

# The VGG-Face training images' mean colour (RGB, 0-255 scale), from the model's metadata.
MEAN_RGB = (129.186279296875, 104.76238250732422, 93.59396362304688)
IGNORED = ("fc8.weight", "fc8.bias")


def trunk():
    """The VGG-16 trunk whose fc7 is the feature (see models.create_trunk('vgg16'))."""
    return models.create_trunk("vgg16")


def flax_param_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    """{layer: {"kernel": shape, "bias": shape}} of the trunk, in layer order (no compute)."""
    variables = jax.eval_shape(
        lambda: trunk().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    )
    return {layer: {k: tuple(v.shape) for k, v in p.items()}
            for layer, p in variables["params"].items()}


def expected_file_shapes() -> dict[str, tuple[int, ...]]:
    """File parameter name -> its PyTorch shape, in the order they are checked."""
    shapes = {}
    for layer, p in flax_param_shapes().items():
        kernel = p["kernel"]
        if len(kernel) == 4:  # HWIO -> OIHW
            shapes[f"{layer}.weight"] = (kernel[3], kernel[2], kernel[0], kernel[1])
        else:  # (in, out) -> (out, in)
            shapes[f"{layer}.weight"] = (kernel[1], kernel[0])
        shapes[f"{layer}.bias"] = p["bias"]
    return shapes


def _safe_open(path: str):
    try:
        from safetensors import safe_open
    except ImportError as e:  # an optional dependency: only this method needs it
        raise ImportError(
            "reading VGG-Face weights needs the 'safetensors' package, a dependency of this "
            "project: reinstall it with pip install -e . (from the repository's root)"
        ) from e
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"VGG-Face weights {path!r} not found: set config.vgg_face.init_weights to a "
            "local .safetensors file (see fgmask_jax/baselines/vgg_face.py for its layout)"
        )
    return safe_open(path, framework="np")


def load_vgg_face(path: str) -> dict[str, dict[str, np.ndarray]]:
    """Reads a VGG-Face safetensors file into the trunk's params {layer: {kernel, bias}} (float32).

    Raises:
      ImportError: safetensors is not installed.
      FileNotFoundError: no file at ``path``.
      ValueError: naming the first unexpected parameter, or the first expected
        one (in layer order) that is missing, has the wrong shape or is not float,
        with the expected shape.
    """
    expected = expected_file_shapes()
    with _safe_open(path) as f:
        names = list(f.keys())
        extra = sorted(set(names) - set(expected) - set(IGNORED))
        if extra:
            raise ValueError(
                f"{path}: unexpected parameter {extra[0]!r}; a VGG-Face file holds "
                f"{', '.join(list(expected)[:2])}, ..., fc7.bias (vgg_face_dag names) "
                f"and optionally {' / '.join(IGNORED)}"
            )
        for name, shape in expected.items():
            if name not in names:
                raise ValueError(f"{path}: parameter {name!r} is missing (expected shape {shape})")
            found = tuple(f.get_slice(name).get_shape())
            if found != shape:
                raise ValueError(
                    f"{path}: parameter {name!r} has shape {found}, expected {shape}"
                )
        tensors = {name: f.get_tensor(name) for name in expected}
    params = {}
    for name, value in tensors.items():
        if value.dtype not in (np.float16, np.float32, np.float64):
            raise ValueError(f"{path}: parameter {name!r} has dtype {value.dtype}, expected float")
        layer, kind = name.rsplit(".", 1)
        value = np.asarray(value, np.float32)
        if kind == "weight":
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
            params.setdefault(layer, {})["kernel"] = np.ascontiguousarray(value)
        else:
            params.setdefault(layer, {})["bias"] = value
    return params


@jax.jit
def fc7_features(params, images: jax.Array) -> jax.Array:
    """uint8[B, H, W, 3] (H, W >= 32) -> float32[B, 4096]: fc7 (after ReLU), unit L2 norm."""
    x = images.astype(jnp.float32) - jnp.asarray(MEAN_RGB, jnp.float32)
    f = trunk().apply({"params": params}, x, train=False).astype(jnp.float32)
    return f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)

