"""Who may import whom, read from the source with `ast` (nothing is imported).

A command is a module run as ``python -m``: it has an ``if __name__ == "__main__":``
block (or is a package's ``__main__.py``). Commands read flags, make one library call
and turn the outcome into an exit code; the library never reads flags or calls a
command, and no command calls another. `cli` is what every command does at entry and
exit, so it may read flags too.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fgmask_jax"
BUILDERS = ROOT / "tfds_builder"  # shipped as fgmask_jax.tfds_builder
FLAG_MODULES = ("absl.flags", "absl.app", "ml_collections.config_flags")
COMMAND_SUPPORT = ("fgmask_jax.cli",)
# Lower layers never import these (a model knows nothing of data or training; the data
# and the masks know nothing of the trainer; masks are below data).
FORBIDDEN = {
    "fgmask_jax.tfds_builder": ("fgmask_jax.train", "fgmask_jax.runs", "fgmask_jax.experiments",
                                "fgmask_jax.inference", "fgmask_jax.baselines",
                                "fgmask_jax.models", "fgmask_jax.evaluation"),
    "fgmask_jax.models": ("fgmask_jax.data", "fgmask_jax.train", "fgmask_jax.evaluation",
                          "fgmask_jax.runs", "fgmask_jax.experiments", "fgmask_jax.inference",
                          "fgmask_jax.baselines"),
    "fgmask_jax.data": ("fgmask_jax.train", "fgmask_jax.runs", "fgmask_jax.experiments",
                        "fgmask_jax.inference", "fgmask_jax.baselines", "fgmask_jax.models"),
    "fgmask_jax.masks": ("fgmask_jax.data", "fgmask_jax.train", "fgmask_jax.models"),
    "fgmask_jax.evaluation": ("fgmask_jax.train", "fgmask_jax.runs", "fgmask_jax.experiments",
                              "fgmask_jax.inference"),
    "fgmask_jax.checkpointing": ("fgmask_jax.train", "fgmask_jax.runs"),
}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[0] == BUILDERS.name:
        parts = ("fgmask_jax", *parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_command(path: pathlib.Path, tree: ast.Module) -> bool:
    if path.name == "__main__.py":
        return True
    return any(isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)
               and "__main__" in ast.unparse(node.test) for node in tree.body)


def imported(name: str, tree: ast.Module) -> set[str]:
    """Every module the source of module ``name`` imports, anywhere in it (functions
    included); ``from pkg import x`` counts as importing ``pkg`` and ``pkg.x``."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{name}: relative import; the project imports absolutely"
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def modules() -> dict[str, tuple[pathlib.Path, ast.Module]]:
    paths = [*PACKAGE.rglob("*.py"), *(p for p in BUILDERS.rglob("*.py")
                                         if not p.name.endswith("_test.py"))]
    return {module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in sorted(paths)}


MODULES = modules()
COMMANDS = {n for n, (p, tree) in MODULES.items() if is_command(p, tree)}


def _refers_to(imports: set[str], target: str) -> bool:
    return any(i == target or i.startswith(target + ".") for i in imports)


def test_the_commands_are_those_the_docs_run():
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "Makefile",
             *sorted((ROOT / "launch").iterdir())]
    documented = set()
    for path in texts:
        documented.update(re.findall(r"-m (fgmask_jax(?:\.\w+)+)", path.read_text()))
    # A package runs as its __main__; a name that is no module is a function's, not a command.
    documented = {d + ".__main__" if d + ".__main__" in MODULES else d for d in documented}
    documented = {d for d in documented if d in MODULES}
    assert documented, "the docs name no command"
    assert documented <= COMMANDS, f"documented but not runnable: {documented - COMMANDS}"
    assert {"fgmask_jax.main", "fgmask_jax.study", "fgmask_jax.predict"} <= COMMANDS


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_follow_the_layers(name):
    path, tree = MODULES[name]
    imports = imported(name, tree)
    if name in COMMANDS:
        others = [c for c in COMMANDS - {name} if c in imports
                  and not name.startswith(c + ".")]  # a package's __main__ uses the package
        assert not others, f"the command {name} imports the command(s) {others}"
        return
    called = [c for c in COMMANDS if c in imports]
    assert not called, f"the library module {name} imports the command(s) {called}"
    if name not in COMMAND_SUPPORT:
        entry = [c for c in COMMAND_SUPPORT if c in imports]
        assert not entry, f"the library module {name} imports {entry}, the commands' entry"
    if name not in COMMAND_SUPPORT:
        flags = [m for m in FLAG_MODULES if _refers_to(imports, m)]
        assert not flags, f"the library module {name} imports {flags}: flags are the commands'"
    for layer, forbidden in FORBIDDEN.items():
        if name == layer or name.startswith(layer + "."):
            bad = [f for f in forbidden if _refers_to(imports, f)]
            assert not bad, f"{name} (in {layer}) imports {bad}, a layer above it"


def test_the_check_catches_a_command_importing_a_command():
    tree = ast.parse("def main():\n    from fgmask_jax import predict\n")
    assert "fgmask_jax.predict" in imported("fgmask_jax.export", tree)
    assert "fgmask_jax.predict" in COMMANDS
    tree = ast.parse("from absl import flags\n")
    assert _refers_to(imported("fgmask_jax.runs", tree), "absl.flags")
