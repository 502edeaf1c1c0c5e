"""Test set-up: four virtual CPU devices, so every test of a step is data-parallel."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory):
    """The 60-image synthetic dataset (``synthetic_masked_faces/small``), built once per run."""
    from fgmask_jax import build_data

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    build_data.build("synthetic_masked_faces/small", data_dir)
    return data_dir
