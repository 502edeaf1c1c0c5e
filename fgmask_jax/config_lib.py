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
from ml_collections import config_dict

from fgmask_jax.data import labels as labels_lib
from fgmask_jax.errors import ConfigError

DATASETS = {"fgnet_mask": "fgnet_mask", "synthetic": "synthetic_masked_faces",
            "synthetic_paired": "synthetic_masked_faces/paired", "fgnet_paired": "fgnet_paired"}
# The TFDS datasets this project builds (`data.build`), and the data with an unmasked twin
# of every masked photo (mask_gap).
TFDS_NAMES = tuple(sorted({name.split("/", 1)[0] for name in DATASETS.values()}))
PAIRED_DATA = ("synthetic_paired", "fgnet_paired")
PROTOCOLS = ("study", "subject", "photo", "lopo")
OPTIMIZERS = ("sgd", "adamw")
KERNELS = ("auto", "cpu", "xla")  # config.kernels; fgmask_jax.models.layers describes them
RECIPES = ("default", "study")
LR_SCHEDULES = ("cosine", "constant")
SELECTION_METRICS = ("loss", "accuracy")
# The configs/ folder of a source checkout (configs are files, not part of the package).
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs")
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
                  runlocal=False, pretrained="", recipe="default")
    _choice("data", v.data, DATASETS)
    _choice("model", v.model, MODELS)
    _choice("protocol", v.protocol, PROTOCOLS)
    _choice("recipe", v.recipe, RECIPES)
    for task in tasks:
        _choice("task", task, labels_lib.TASKS)

    c = ml_collections.ConfigDict()
    _data_fields(c, v)
    _model_fields(c, v, tasks)
    _training_fields(c, v)
    if v.recipe == "study":
        _study_recipe(c, c.model)
        if "size=" in (arg or ""):
            c.image_size = v.size
    c.recipe = v.recipe
    if v.runlocal:
        _runlocal(c, v, asked_model="model=" in (arg or ""), default_model=model)
    else:
        c.runlocal = False
    return c


def _data_fields(c: ml_collections.ConfigDict, v: ml_collections.ConfigDict) -> None:
    c.dataset = DATASETS[v.data]
    c.data_dir = ""  # "" -> $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.manual_dir = ""  # fgnet_mask, fgnet_paired: the folder of their archives
    c.protocol = v.protocol
    c.val_fraction = 0.1  # of the training split (of its persons under subject and lopo)
    # protocol=lopo: one run per fold of persons over all images, predictions pooled.
    # 0 = one fold per person (82 trainings on FGNET-MASK).
    c.lopo_folds = 10
    c.image_size = v.size
    # None (auto): decode the training and validation images once and keep them on every
    # device when they fit (pipeline.placement decides and the run logs it); True/False forces.
    c.data_on_device = config_dict.placeholder(bool)
    # grain decoding processes when the data stays on the host; None (auto): sized to the
    # machine's cores; 0 decodes in the main process.
    c.workers = config_dict.placeholder(int)


def _model_fields(c: ml_collections.ConfigDict, v: ml_collections.ConfigDict,
                  tasks: tuple[str, ...]) -> None:
    c.tasks = tasks
    c.model = v.model
    c.head_hidden = 0  # > 0: a hidden layer per head (the study used 1024)
    c.head_depths = ml_collections.FieldReference(None, field_type=dict)
    if v.model == "cnn" and len(tasks) == 3:
        # The study's multi-task CNN: age reads conv3, gender conv2, expression conv1.
        c.head_depths = {"age_group": 3, "gender": 2, "expression": 1}
    c.dropout = 0.0
    c.dtype = "auto"  # bfloat16 on accelerators, float32 on CPU; config.json stores it resolved
    # Conv and max-pool kernels: "auto" is "cpu" (fast paths for XLA:CPU) on a CPU backend and
    # "xla" (XLA's own, jax.jvp-able) elsewhere; either can be forced. Same weights in both.
    c.kernels = "auto"

    c.loss_weights = {t: 1.0 for t in tasks}
    c.uncertainty_weighting = False  # Kendall et al. 2018: learn a weight per task
    c.label_smoothing = 0.0


def _training_fields(c: ml_collections.ConfigDict, v: ml_collections.ConfigDict) -> None:
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
    c.seed = 0  # initialisation, batch order, augmentation, dropout
    # Which examples are fit and validation, the lopo folds, the report's bootstrap of persons.
    c.split_seed = 0
    c.log_every_steps = 20
    c.eval_every_steps = 0  # 0: once per epoch
    # 0: every checkpoint_every_secs of wall time (and at the end, on early stopping and on
    # Ctrl-C/SIGTERM); > 0: every that many steps.
    c.checkpoint_every_steps = 0
    c.checkpoint_every_secs = 120.0
    c.keep_checkpoints = 3
    # (first, last): a jax.profiler trace of steps first..last in WORKDIR/profile (TensorBoard's
    # profile plugin or Perfetto read it); () traces nothing.
    c.profile_steps = ()
    c.saliency_images = 256  # test images whose Grad-CAM maps go in the report; 0: none
    c.early_stopping_metric = "loss"  # on the validation subset: loss | accuracy
    c.early_stopping_patience = 10  # evaluations without improvement; 0 disables
    c.init_from = ""  # another run's workdir or checkpoint folder, for fine-tuning
    # A torchvision-layout trunk (.safetensors, or .pth with torch installed) to start from;
    # the heads start fresh. See fgmask_jax/models/pretrained.py and docs/pretrained.md.
    c.pretrained = v.pretrained
    c.freeze = ""  # trunk parts not trained, e.g. "stem,layer1,layer2"; "" trains all
    c.trunk_lr_multiplier = 1.0  # the trunk's learning rate relative to the heads'
    c.lr_schedule = "cosine"  # warmup + cosine decay, or constant after warmup
    if v.pretrained:  # fine-tuning: the pretrained trunk moves ten times slower than the heads
        c.trunk_lr_multiplier = 0.1


def _runlocal(c: ml_collections.ConfigDict, v: ml_collections.ConfigDict, *,
              asked_model: bool, default_model: str) -> None:
    """Shrinks the run for a laptop CPU."""
    c.runlocal = True
    if default_model == "resnet152" and not asked_model:
        c.model = "resnet18"  # the smallest ResNet, unless a model was asked for
    c.image_size = min(c.image_size, 64)
    c.num_epochs = 8.0
    if v.recipe == "default":
        c.batch_size = 32
        c.learning_rate = 0.2
    if c.model == "vgg16":  # 134M parameters: 8 epochs at 64 px take over an hour on 2
        c.image_size = 32   # cores; 2 epochs at 32 px (about 14 img/s) take about 6 minutes
        c.num_epochs = 2.0
    c.data_on_device = True
    c.log_every_steps = 10
    c.lopo_folds = 5


def config_files(directory: str = CONFIGS_DIR) -> list[str]:
    """The config files in ``directory`` (``configs/``), as paths relative to the cwd."""
    paths = sorted(glob.glob(os.path.join(directory, "*.py")))
    return [os.path.relpath(p) for p in paths if not os.path.basename(p).startswith("_")]


def _study_recipe(c: ml_collections.ConfigDict, model: str) -> None:
    """The study's multi-task ResNet transfer setting (STUDY.md), on our trunks.

    Keras ResNet152V2 with layers 0-136 frozen is, at our stage granularity, the
    stem, layer1 and layer2 frozen (layer 136 falls in the first block of Keras's
    conv4 stack, our layer3; counted in train/optim.py). Then a 1024-unit
    ReLU layer per head, loss weights 1 / 0.1 / 0.1 (age, gender, expression),
    Adam at a constant 1e-3 with gradients clipped to norm 1 (Keras's clipnorm
    clips each tensor; we clip the global norm), batch 64, up to 80 epochs with
    early stopping after 10 evaluations without a better validation loss, 50 px
    input. Kept ours: cross-entropy for every task (the study used binary
    cross-entropy for gender and squared error for expression).
    """
    if model.startswith("resnet"):
        c.freeze = "stem,layer1,layer2"
    c.head_hidden = 1024
    c.loss_weights = {t: (1.0 if t == "age_group" else 0.1) for t in c.tasks}
    c.optimizer = "adamw"
    c.weight_decay = 0.0
    c.batch_size = 64
    c.learning_rate = 1e-3 * 256 / c.batch_size  # scaled by batch_size / 256: 1e-3 at 64
    c.lr_schedule = "constant"
    c.warmup_epochs = 0.0
    c.clip_norm = 1.0
    c.trunk_lr_multiplier = 1.0
    c.num_epochs = 80.0
    c.early_stopping_patience = 10
    c.image_size = 50


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
    check("lr_schedule", LR_SCHEDULES)
    if config.get("kernels", "auto") not in KERNELS:  # absent (older runs' configs): auto
        raise ConfigError(f"config.kernels={config.kernels!r} is not one of: "
                          f"{', '.join(KERNELS)}")
    from fgmask_jax import models  # imports JAX: only once a run starts
    from fgmask_jax.models import pretrained

    if config.pretrained:
        if config.model not in pretrained.ARCHITECTURES:
            raise ConfigError(f"config.pretrained: torchvision weights fit "
                              f"{', '.join(pretrained.ARCHITECTURES)}, not "
                              f"model={config.model!r}")
        if "://" not in config.pretrained and not os.path.isfile(config.pretrained):
            raise ConfigError(f"config.pretrained={config.pretrained!r}: no such file (a "
                              "torchvision .safetensors or .pth file, downloaded once)")
    if config.init_from and "://" not in config.init_from and not os.path.isdir(
            config.init_from):
        raise ConfigError(f"config.init_from={config.init_from!r}: no such folder (a run's "
                          "workdir, or one of its checkpoint folders)")
    try:
        models.frozen_parts(config.model, config.freeze)
    except ValueError as e:
        raise ConfigError(f"config.freeze={config.freeze!r}: {e}") from None
    if (config.get("workers") or 0) < 0:
        raise ConfigError(f"config.workers={config.workers} must be >= 0 (or None: auto)")
    profile = tuple(config.get("profile_steps") or ())
    if profile and not (len(profile) == 2 and all(isinstance(s, int) for s in profile)
                        and 1 <= profile[0] <= profile[1]):
        raise ConfigError(f"config.profile_steps={profile!r}: give (first, last), two steps "
                          "with 1 <= first <= last, e.g. --config.profile_steps='(20,25)'")
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
