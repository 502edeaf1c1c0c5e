"""Configuration: the defaults of the neural methods and the big_vision-style variants.

A config file in ``configs/`` calls `neural_config(arg, ...)`; ``arg`` is the text
after the colon in ``--config=configs/multitask.py:data=synthetic,model=cnn,runlocal``:
comma-separated ``key=value`` pairs and bare flags. An unknown variant is an
error that lists the valid ones.
"""

from __future__ import annotations

import glob
import importlib.util
import os

import ml_collections

from fgmask_jax.data import labels as labels_lib

DATASETS = {"fgnet_mask": "fgnet_mask", "synthetic": "synthetic_masked_faces"}
PROTOCOLS = ("study", "subject", "lopo")
OPTIMIZERS = ("sgd", "adamw")
SELECTION_METRICS = ("loss", "accuracy")
# The configs/ folder of a source checkout (configs are files, not part of the package).
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs")
MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "cnn", "vgg16",
          "resnet_tiny")


class ConfigError(ValueError):
    """A config file, variant, key or value that does not exist or does not fit."""


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
            raise ConfigError(
                f"unknown config variant {key!r} in {arg!r}; valid: {', '.join(sorted(spec))}"
            )
        default = spec[key]
        if not eq:
            if not isinstance(default, bool):
                raise ConfigError(f"config variant {key!r} needs a value: {key}=...")
            result[key] = True
        elif isinstance(default, bool):
            result[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, int | float):
            try:
                result[key] = type(default)(value)
            except ValueError:
                raise ConfigError(f"config variant {key}={value!r} is not a number") from None
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
        raise ConfigError(f"config variant {name}={value!r} is not one of: {', '.join(valid)}")
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


def config_files(directory: str = CONFIGS_DIR) -> list[str]:
    """The config files in ``directory`` (``configs/``), as paths relative to the cwd."""
    paths = sorted(glob.glob(os.path.join(directory, "*.py")))
    return [os.path.relpath(p) for p in paths if not os.path.basename(p).startswith("_")]


def load(spec: str) -> ml_collections.ConfigDict:
    """The config of ``path/to/config.py[:variants]``, as ``--config=`` loads it.

    Raises:
      ConfigError: no such file (the message lists the configs), or a variant or
        value the file does not know (its message lists the valid ones).
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        near = config_files(os.path.dirname(path) or ".") if os.path.isdir(
            os.path.dirname(path) or ".") else []
        choices = near or config_files()
        raise ConfigError(
            f"config file {path!r} not found; the configs are: {', '.join(choices)}"
        )
    module_spec = importlib.util.spec_from_file_location("_fgmask_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} has no get_config(arg); is it a config file?")
    try:
        return module.get_config(arg or None)
    except ValueError as e:  # a variant the file does not know: its message lists the valid
        raise ConfigError(f"--config={spec}: {e}") from None


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the fields that would fail late in a run (after loading data, say).

    Raises:
      ConfigError: naming the key, its value and the valid ones.
    """
    def check(key, valid):
        value = config.get(key)
        if value not in valid:
            raise ConfigError(f"config.{key}={value!r} is not one of: {', '.join(valid)}")

    dataset = config.get("dataset", "").split("/", 1)[0]
    if dataset not in DATASETS.values():
        raise ConfigError(f"config.dataset={config.get('dataset')!r} is not one of: "
                          f"{', '.join(DATASETS.values())} (optionally NAME/CONFIG)")
    check("protocol", PROTOCOLS)
    for task in config.get("tasks", ()):
        if task not in labels_lib.TASKS:
            raise ConfigError(f"config.tasks names {task!r}; tasks are: "
                              f"{', '.join(labels_lib.TASKS)}")
    if config.get("method"):  # a classical method: its fields are checked where used
        return
    check("model", MODELS)
    check("optimizer", OPTIMIZERS)
    check("early_stopping_metric", SELECTION_METRICS)
    for key in ("batch_size", "image_size", "log_every_steps"):
        if config.get(key, 1) < 1:
            raise ConfigError(f"config.{key}={config.get(key)} must be at least 1")
    missing = [t for t in config.tasks if t not in config.loss_weights]
    if missing:
        raise ConfigError(f"config.loss_weights has no weight for {', '.join(missing)}")


def leaf_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Dotted names of every field, e.g. ['augment.flip', ..., 'seed']."""
    keys = []
    for key, value in sorted(config.items()):
        if isinstance(value, ml_collections.ConfigDict):
            keys += leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys
