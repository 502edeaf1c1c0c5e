"""Configuration: the defaults of the neural methods and the big_vision-style variants.

A config file in ``configs/`` calls `neural_config(arg, ...)`; ``arg`` is the text
after the colon in ``--config=configs/multitask.py:data=synthetic,model=cnn,runlocal``:
comma-separated ``key=value`` pairs and bare flags. An unknown variant is an
error that lists the valid ones.
"""

from __future__ import annotations

import importlib.util

import ml_collections

from fgmask_jax.data import labels as labels_lib

DATASETS = {"fgnet_mask": "fgnet_mask", "synthetic": "synthetic_masked_faces"}
PROTOCOLS = ("study", "subject", "lopo")
MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "cnn", "vgg16",
          "resnet_tiny")


def parse_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
    """Parses ``'a=1,b=x,flag'`` against ``spec`` (name -> default; its type converts values).

    Raises:
      ValueError: for a name not in ``spec``, listing the valid names.
    """
    result = dict(spec)
    for item in filter(None, (arg or "").split(",")):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in spec:
            raise ValueError(
                f"unknown config variant {key!r} in {arg!r}; valid: {', '.join(sorted(spec))}"
            )
        default = spec[key]
        if not eq:
            if not isinstance(default, bool):
                raise ValueError(f"config variant {key!r} needs a value: {key}=...")
            result[key] = True
        elif isinstance(default, bool):
            result[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            result[key] = int(value)
        elif isinstance(default, float):
            result[key] = float(value)
        else:
            result[key] = value
    return ml_collections.ConfigDict(result)


def split_variant(arg: str | None, key: str, default: str) -> tuple[str, str]:
    """Takes ``key=value`` out of a variant string: (value or default, the rest)."""
    value, rest = default, []
    for item in filter(None, (arg or "").split(",")):
        name, _, v = item.partition("=")
        if name.strip() == key:
            value = v
        else:
            rest.append(item)
    return value, ",".join(rest)


def _choice(name: str, value: str, valid) -> str:
    if value not in valid:
        raise ValueError(f"config variant {name}={value!r} is not one of: {', '.join(valid)}")
    return value


def neural_config(arg: str | None, *, tasks: tuple[str, ...], model: str = "resnet152",
                  size: int = 112) -> ml_collections.ConfigDict:
    """The full config of a neural method; ``tasks`` one (single-task) or all three."""
    v = parse_arg(arg, data="fgnet_mask", model=model, protocol="study", size=size,
                  runlocal=False)
    _choice("data", v.data, DATASETS)
    _choice("model", v.model, MODELS)
    _choice("protocol", v.protocol, PROTOCOLS)
    for task in tasks:
        _choice("task", task, labels_lib.TASKS)

    c = ml_collections.ConfigDict()
    c.dataset = DATASETS[v.data]
    c.data_dir = ""  # "" -> $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.manual_dir = ""  # fgnet_mask only: where FGNET-MASK_dataset.zip is
    c.protocol = v.protocol
    c.val_fraction = 0.1  # of the training split (of its persons under subject and lopo)
    # protocol=lopo: one run per fold of persons over all images, predictions pooled.
    # 0 = one fold per person (82 trainings on FGNET-MASK).
    c.lopo_folds = 10
    c.image_size = v.size
    c.data_on_device = False  # decode the training split once and keep it on the device
    c.workers = 0  # grain decoding processes; 0 decodes in the main process

    c.tasks = tasks
    c.model = v.model
    c.head_hidden = 0  # > 0: a hidden layer per head (the study used 1024)
    c.head_depths = ml_collections.FieldReference(None, field_type=dict)
    if v.model == "cnn" and len(tasks) == 3:
        # The study's multi-task CNN: age reads conv3, gender conv2, expression conv1.
        c.head_depths = {"age_group": 3, "gender": 2, "expression": 1}
    c.dropout = 0.0
    c.dtype = "auto"  # bfloat16 on accelerators, float32 on CPU

    c.loss_weights = {t: 1.0 for t in tasks}
    c.uncertainty_weighting = False  # Kendall et al. 2018: learn a weight per task
    c.label_smoothing = 0.0

    c.optimizer = "sgd"  # sgd (with momentum) or adamw
    c.learning_rate = 0.1  # for a batch of 256; scaled linearly with batch_size
    c.momentum = 0.9
    c.weight_decay = 5e-5
    c.warmup_epochs = 1.0
    c.clip_norm = 0.0  # 0: no clipping
    c.batch_size = 64  # global, over all devices and processes
    c.num_epochs = 30.0
    c.num_train_steps = 0  # > 0 overrides num_epochs

    c.augment = ml_collections.ConfigDict(dict(flip=True, min_scale=0.85, color_jitter=0.2))
    c.seed = 0
    c.log_every_steps = 20
    c.eval_every_steps = 0  # 0: once per epoch
    c.checkpoint_every_steps = 0  # 0: once per epoch
    c.keep_checkpoints = 3
    c.early_stopping_metric = "loss"  # on the validation subset: loss | accuracy
    c.early_stopping_patience = 10  # evaluations without improvement; 0 disables
    c.init_from = ""  # another run's workdir or checkpoint folder, for fine-tuning

    if v.runlocal:
        c.runlocal = True
        if model == "resnet152" and "model=" not in (arg or ""):
            c.model = "resnet18"  # the smallest ResNet, unless a model was asked for
        c.image_size = min(v.size, 64)
        c.batch_size = 32
        c.num_epochs = 8.0
        c.learning_rate = 0.2
        c.data_on_device = True
        c.log_every_steps = 10
        c.lopo_folds = 5
    else:
        c.runlocal = False
    return c


def load(spec: str) -> ml_collections.ConfigDict:
    """The config of ``path/to/config.py[:variants]``, as ``--config=`` loads it."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_fgmask_config", path)
    if module_spec is None:
        raise FileNotFoundError(f"config file {path!r} not found")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def leaf_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Dotted names of every field, e.g. ['augment.flip', ..., 'seed']."""
    keys = []
    for key, value in sorted(config.items()):
        if isinstance(value, ml_collections.ConfigDict):
            keys += leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys
