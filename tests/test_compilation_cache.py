"""Every command keeps XLA's compiled programs in a persistent cache, on by default."""

from fgmask_jax import cli


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cli.compilation_cache_dir() == str(tmp_path / "fgmask_jax" / "xla")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")  # set empty: no cache
    assert cli.compilation_cache_dir() == ""
