"""Test set-up: four virtual CPU devices, so every test of a step is data-parallel."""

import os
import tempfile

# LLVM's optimisations off: the suite's tiny models spend far more time compiling than
# running (the whole suite: 8.3 minutes on 2 cores with it). XLA's own passes and the
# arithmetic (no fast math) are unchanged; the tests that start processes with their own
# XLA_FLAGS (multiprocess, topology) and the README's demo, which CI runs, compile as users do.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4 "
                      "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests train the same tiny models: a persistent compilation cache, shared with the
# commands the tests start, compiles each program once per session instead of once per run.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="fgmask-jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory):
    """The 60-image synthetic dataset (``synthetic_masked_faces/small``), built once per run."""
    from fgmask_jax.data import build as build_data

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    build_data.build("synthetic_masked_faces/small", data_dir)
    return data_dir


@pytest.fixture(scope="session")
def paired_small_data_dir(tmp_path_factory):
    """``synthetic_masked_faces/paired_small`` (68 masked copies of 20 photos and their 20
    unmasked twins, 32 px), built once per run."""
    from fgmask_jax.data import build as build_data

    data_dir = str(tmp_path_factory.mktemp("tfds_paired"))
    build_data.build("synthetic_masked_faces/paired_small", data_dir)
    return data_dir
