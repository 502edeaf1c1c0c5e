"""A study run's config: its config file, the study's shortening, the command's overrides
(``--neural_override``), and what ran in words."""

from __future__ import annotations

from typing import TYPE_CHECKING

import ml_collections

from fgmask_jax import config_lib, errors
from fgmask_jax.data import labels as labels_lib
from fgmask_jax.experiments.method import is_neural

if TYPE_CHECKING:
    from fgmask_jax.experiments.study import Run

TASKS = tuple(labels_lib.TASKS)



def parse_overrides(items) -> list[tuple[str, str]]:
    """``--neural_override`` values ``KEY=VALUE`` as (key, value) pairs.

    Raises:
      errors.ConfigError: an item without ``=``.
    """
    overrides = []
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise errors.ConfigError(f"--neural_override={item!r}: use KEY=VALUE")
        overrides.append((key.strip(), value))
    return overrides


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> None:
    """Sets ``key=value`` pairs (dotted keys; values converted to the field's type).

    Raises:
      errors.ConfigError: a key the config does not have (the message lists the valid
        keys), or a value that does not convert to its field's type.
    """
    items = overrides.items() if isinstance(overrides, dict) else overrides
    keys = config_lib.leaf_keys(config)
    for key, value in items:
        if key not in keys:
            raise errors.ConfigError(
                f"config has no key {key!r}; valid keys: {', '.join(keys)}")
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        try:
            node[leaf] = _converted(node, leaf, value)
        except (TypeError, ValueError) as e:
            raise errors.ConfigError(f"{key}={value!r}: {e}") from None


def _converted(node: ml_collections.ConfigDict, leaf: str, value):
    """``value`` in the type of the field ``node[leaf]`` (a string parsed, an int widened)."""
    old = node[leaf]
    kind = type(old) if old is not None else node.get_ref(leaf).get_type()  # None: auto
    if isinstance(value, str) and kind is not str:
        if kind is bool:
            return value.lower() in ("1", "true", "yes")
        if kind in (int, float):
            return kind(value)  # int("2.5") fails: no silent rounding
    elif isinstance(old, float) and isinstance(value, int):
        return float(value)
    return value


def make_config(run: Run, *, dataset: str = "", data_dir: str = "", manual_dir: str = "",
                neural_overrides=None, lopo_folds: int = 0) -> ml_collections.ConfigDict:
    """The resolved config of one run: its config file, the study's shortening, the options.

    ``dataset`` (e.g. ``synthetic_masked_faces/small``) replaces the config's dataset;
    ``neural_overrides`` ({key: value}) applies to the neural runs after the study's own;
    ``lopo_folds``: under protocol=lopo, the folds of persons of every run, so that all
    methods are tested on the same folds; 0 -> the neural configs' default (10, or 5
    under runlocal), where a classical config alone would take one fold per person.
    """
    config = config_lib.load(run.spec)
    apply_overrides(config, run.overrides)
    if config.protocol == "lopo":
        config.lopo_folds = lopo_folds or config_lib.neural_config(
            "runlocal" if config.runlocal else "", tasks=TASKS).lopo_folds
    if is_neural(config) and neural_overrides:
        apply_overrides(config, neural_overrides)
    if run.seed:  # the run's training seed, counted from the config's (0 unless overridden)
        config.seed += run.seed
    if dataset:
        config.dataset = dataset
    if data_dir:
        config.data_dir = data_dir
    if manual_dir:
        config.manual_dir = manual_dir
    return config


def describe(config) -> str:
    """What ran, in words: 'VGG-16 trained end to end at 32 px, 1 epoch' and the like."""
    if not is_neural(config):
        from fgmask_jax.baselines import run as run_lib

        return f"{run_lib.describe(config)}; images at {config.image_size} px" + _folds(config)
    length = (f"{config.num_train_steps} steps" if config.num_train_steps
              else f"{config.num_epochs:g} epochs")
    model = "VGG-16 trained end to end (no VGG-Face weights)" if config.model == "vgg16" \
        else config.model
    return (f"{model} at {config.image_size} px, {length} of batch {config.batch_size}"
            + _folds(config))


def _folds(config) -> str:
    if config.protocol != "lopo":
        return ""
    return ("; one fold per person" if not config.lopo_folds
            else f"; {config.lopo_folds} folds of persons")
