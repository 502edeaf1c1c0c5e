"""The optimizer of a run, and freezing: which parameters train, at which rate.

Every parameter is labelled "heads", "trunk" or "frozen" (`param_labels`): the
trunk parts named in ``config.freeze`` are frozen (their gradients zeroed before
clipping, their updates zero), the rest of the trunk learns at
``config.trunk_lr_multiplier`` times the heads' rate. The model itself only keeps
the frozen parts' BatchNorm statistics fixed (`runs.make_model`), and names its
parts (`models.trunk_parts`).

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
``trainable=False``; `models.frozen_parts` gives the validated part names a model needs
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
from collections.abc import Mapping

import jax
import optax

from fgmask_jax import errors, models


def make_optimizer(config, steps_per_epoch: int, total_steps: int) -> optax.GradientTransformation:
    """optax from config: linear warmup + cosine decay (or constant); SGD+momentum or AdamW;
    clipping. The trunk parts in ``config.freeze`` are not updated; the rest of the trunk
    learns at ``config.trunk_lr_multiplier`` times the heads' rate."""
    peak = config.learning_rate * config.batch_size / 256
    warmup = min(int(config.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
    if config.get("lr_schedule", "cosine") == "constant":
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
    else:
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, peak, warmup_steps=max(warmup, 1) if warmup else 0,
            decay_steps=max(total_steps, 1))

    def base(rate):
        if config.optimizer == "sgd":
            return optax.chain(optax.add_decayed_weights(config.weight_decay),
                               optax.sgd(rate, momentum=config.momentum, nesterov=True))
        if config.optimizer == "adamw":
            return optax.adamw(rate, weight_decay=config.weight_decay)
        raise errors.ConfigError(f"config.optimizer={config.optimizer!r}: use 'sgd' or 'adamw'")

    multiplier = config.get("trunk_lr_multiplier", 1.0)
    if config.get("freeze") or multiplier != 1.0:
        opt = optax.multi_transform(
            {"heads": base(schedule),
             "trunk": base(lambda count: multiplier * schedule(count)),
             "frozen": optax.set_to_zero()},
            functools.partial(param_labels, config=config))
    else:
        opt = base(schedule)
    if config.clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(config.clip_norm), opt)
    if config.get("freeze"):  # frozen gradients count in no norm: zeroed first
        frozen = optax.masked(optax.set_to_zero(), lambda params: jax.tree.map(
            lambda label: label == "frozen", param_labels(params, config)))
        opt = optax.chain(frozen, opt)
    return opt, schedule


def param_labels(params: dict, config) -> dict:
    """"frozen", "trunk" or "heads" for each array of ``params`` ({"model", "log_vars"})."""
    frozen = freeze_mask(params["model"], config.model, config.get("freeze", ""))
    labels = {k: jax.tree.map(lambda _: "heads", v) for k, v in params["model"].items()}
    labels["trunk"] = jax.tree.map(lambda f: "frozen" if f else "trunk", frozen["trunk"])
    return {"model": labels, "log_vars": jax.tree.map(lambda _: "heads", params["log_vars"])}


def trained_and_frozen(params, config) -> str:
    """How many parameters train and how many are frozen, for the log and the report."""
    labels = jax.tree.leaves(param_labels(params, config))
    sizes = [x.size for x in jax.tree.leaves(params)]
    frozen = sum(n for n, label in zip(sizes, labels, strict=True) if label == "frozen")
    return f"{sum(sizes) - frozen:,} parameters trained, {frozen:,} frozen"


def freeze_mask(tree: Mapping, model: str, freeze: str) -> dict:
    """True for each array of a frozen trunk part, False elsewhere (heads are never frozen).

    Args:
      tree: a full model's params {"trunk": ..., "heads": ...}, or its
        batch_stats {"trunk": ...}.
      model: the name the model was created with.
      freeze: comma-separated part names (see `models.frozen_parts`); "" trains everything.

    Returns:
      A pytree of bools with the structure of `tree`.

    Raises:
      ValueError: an unknown part (listing the valid ones) or model.
    """
    frozen = set(models.frozen_parts(model, freeze))
    mask = {key: _fill(sub, False) for key, sub in tree.items()}
    if "trunk" in tree:
        mask["trunk"] = {
            module: _fill(sub, models.part_of(model, module) in frozen)
            for module, sub in tree["trunk"].items()
        }
    return mask


def _fill(tree, value: bool):
    return jax.tree.map(lambda _: value, tree)
