"""Task heads and the model that joins one trunk to several heads."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class TaskHead(nn.Module):
    """Classifier for one task: float[B, D] -> float32 logits[B, num_classes].

    With `hidden` > 0 it is Dense(hidden) + ReLU + dropout + Dense(num_classes)
    (the study's 1024-unit layer); with 0 a single Dense. Submodules are named
    "hidden" and "logits".

    Attributes:
      num_classes: output classes.
      hidden: width of the hidden layer; 0 for none.
      dropout: dropout rate after the hidden layer (train mode only).
      dtype: computation dtype; parameters stay float32.
    """

    num_classes: int
    hidden: int = 0
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array, train: bool = False) -> jax.Array:
        x = features
        if self.hidden > 0:
            x = nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(x)
            x = nn.relu(x)
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(x)
        # Losses and metrics want float32 whatever the compute dtype.
        return x.astype(jnp.float32)


class TaskHeads(nn.Module):
    """One `TaskHead` per task, each reading the feature level chosen for it.

    Submodules are named by task, so parameters are {task: {"logits": ...}}.

    Attributes:
      tasks: ((task name, number of classes), ...), in output order.
      hidden: hidden width of each head (0: a single Dense).
      dropout: dropout rate in each head's hidden layer.
      levels: ((task name, level), ...), 1-based; a task not named reads the top.
      dtype: computation dtype.
    """

    tasks: Sequence[tuple[str, int]]
    hidden: int = 0
    dropout: float = 0.0
    levels: Sequence[tuple[str, int]] = ()
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self, features: tuple[jax.Array, ...], train: bool = False
    ) -> dict[str, jax.Array]:
        """Logits per task: levels (float[B, D_1], ..., float[B, D_L]) -> {task: float32[B, C]}."""
        chosen = dict(self.levels)
        logits = {}
        for task, num_classes in self.tasks:
            level = chosen.get(task, len(features))
            head = TaskHead(
                num_classes, hidden=self.hidden, dropout=self.dropout, dtype=self.dtype, name=task
            )
            logits[task] = head(features[level - 1], train=train)
        return logits


class MultiTaskModel(nn.Module):
    """One trunk, one head per task.

    The trunk maps images float[B, H, W, 3] to features: either one array
    float[B, D] or a tuple of levels (float[B, D_1], ..., float[B, D_L]), the
    last being the top. Each head reads the top unless `head_levels` names a
    level (1-based) for its task. Parameters: {"trunk": ..., "heads": {task: ...}},
    so an optimiser can freeze or re-rate the trunk by its top-level key.

    Attributes:
      trunk: the feature extractor (a submodule named "trunk").
      tasks: ((task name, number of classes), ...), in output order.
      head_hidden: hidden width of each head (0: a single Dense).
      dropout: dropout rate in each head's hidden layer.
      head_levels: ((task name, level), ...) for trunks that return levels.
      dtype: computation dtype of the heads.
    """

    trunk: nn.Module
    tasks: Sequence[tuple[str, int]]
    head_hidden: int = 0
    dropout: float = 0.0
    head_levels: Sequence[tuple[str, int]] = ()
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.heads = TaskHeads(
            self.tasks,
            hidden=self.head_hidden,
            dropout=self.dropout,
            levels=self.head_levels,
            dtype=self.dtype,
        )

    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """Logits per task: images float[B, H, W, 3] -> {task: float32[B, classes]}."""
        return self.heads(self._levels(x, train), train=train)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Top-level trunk features, float32[B, D] (for example VGG-Face fc7)."""
        return self._levels(x, train)[-1].astype(jnp.float32)

    def _levels(self, x: jax.Array, train: bool) -> tuple[jax.Array, ...]:
        levels = self.trunk(x, train=train)
        return levels if isinstance(levels, tuple) else (levels,)
