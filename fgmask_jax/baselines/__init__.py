"""Classical baselines of the study: LBP, Tiny Image, Eigenface and VGG-Face features.

Each extracts fixed features from the images in JAX (jitted, batched), then a
scikit-learn classifier per task is fitted on the training split, with its
hyper-parameter chosen by cross-validation on that split only
(`classifiers.py`). `run.run_and_evaluate(config, workdir)` runs one method and
writes the same artefacts as the neural trainer. `classical_config` below is the
common part of ``configs/lbp.py``, ``tiny_image.py``, ``eigenface.py`` and
``vgg_face.py``; it imports no JAX, so a config loads fast.
"""

from __future__ import annotations

import ml_collections

from fgmask_jax import config_lib
from fgmask_jax.data import labels as labels_lib

METHODS = ("lbp", "tiny_image", "eigenface", "vgg_face")


def classical_config(arg: str | None, method: str, size: int,
                     **variants) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """(config, parsed variants) of a classical method; ``variants`` adds method-specific ones.

    Common variants: data=fgnet_mask|synthetic|synthetic_paired|fgnet_paired,
    protocol=study|subject|photo|lopo, size=N, runlocal. The caller adds the method's own
    fields to the config.

    Raises:
      ValueError: an unknown variant or value, listing the valid ones.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
    v = config_lib.parse_arg(arg, data="fgnet_mask", protocol="study", size=size,
                             runlocal=False, **variants)
    for name, value, valid in (("data", v.data, config_lib.DATASETS),
                               ("protocol", v.protocol, config_lib.PROTOCOLS)):
        if value not in valid:
            raise ValueError(f"config variant {name}={value!r} is not one of: {', '.join(valid)}")
    c = ml_collections.ConfigDict()
    c.method = method
    c.dataset = config_lib.DATASETS[v.data]
    c.data_dir = ""  # "" -> $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.manual_dir = ""  # fgnet_mask, fgnet_paired: the folder of their archives
    c.protocol = v.protocol
    c.lopo_folds = 0  # protocol=lopo: folds of persons; 0 = one per person
    c.image_size = v.size
    c.tasks = tuple(labels_lib.TASKS)
    c.split_seed = 0  # folds (lopo) and the classifier's cross-validation folds
    c.workers = 0  # grain decoding processes; 0 decodes in the main process
    c.batch_size = 256  # images per jitted feature-extraction call
    c.classifier = "linear"  # linear (logistic regression) | knn
    c.grid = (0.001, 0.01, 0.1, 1.0, 10.0)  # values of C (linear) or k (knn) to search
    c.cv_folds = 5  # folds of the training split that choose from `grid`
    c.runlocal = bool(v.runlocal)
    if v.runlocal:
        c.image_size = min(v.size, 64)
        c.lopo_folds = 5
        c.cv_folds = 3
        c.grid = (0.01, 1.0)
    return c, v
