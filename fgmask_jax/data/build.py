"""Building the project's TFDS datasets, without TensorFlow (`build`), and making sure a
run's dataset is there before it starts (`ensure_built`).

``fgnet_mask`` needs FGNET-MASK_dataset.zip (or its extracted folder) in the manual
dir, by default DIR/downloads/manual/; the error says where to get it. ``fgnet_paired``
needs FG-NET's FGNET.zip and FGNET-MASK_dataset.zip there. ``synthetic_masked_faces``
draws its images and needs nothing. The files are ArrayRecord by default, read with
``tfds.data_source(NAME, split=..., data_dir=DIR)``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from fgmask_jax import config_lib, errors

DATASETS = config_lib.TFDS_NAMES
FILE_FORMATS = ("array_record", "tfrecord")


def check_name(name: str) -> str:
    """The dataset part of ``NAME`` or ``NAME/CONFIG``; ConfigError listing DATASETS if
    unknown."""
    dataset = name.split("/", 1)[0]
    if dataset not in DATASETS:
        raise errors.ConfigError(
            f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)} (or NAME/CONFIG)"
        )
    return dataset


def _register(dataset: str):
    """Imports the builder module of ``dataset`` (registering it with TFDS) and returns it."""
    return importlib.import_module(
        f"fgmask_jax.tfds_builder.{dataset}.{dataset}_dataset_builder"
    )


def build(
    name: str,
    data_dir: str,
    manual_dir: str | None = None,
    file_format: str = "array_record",
) -> tfds.core.DatasetBuilder:
    """Builds dataset ``name`` (``NAME`` or ``NAME/CONFIG``) under ``data_dir`` unless built.

    Prints what it does; a second call on a built dataset only prints where it is.

    Returns:
      The dataset's builder (prepared).
    Raises:
      ValueError: an unknown dataset or file format (the message lists the known ones).
      ModuleNotFoundError: ``tfrecord`` asked for without TensorFlow installed.
      FileNotFoundError: fgnet_mask's (or fgnet_paired's) files are not in the manual dir
        (with instructions).
      fgnet_mask's ArchiveError, fgnet_paired's SourceError: the files there cannot make
        the dataset (each named, with the way out).
    """
    dataset = check_name(name)
    if file_format not in FILE_FORMATS:
        raise ValueError(
            f"unknown file format {file_format!r}: choose one of {', '.join(FILE_FORMATS)}"
        )
    if file_format == "tfrecord" and importlib.util.find_spec("tensorflow") is None:
        raise ModuleNotFoundError(
            "file_format=tfrecord: TFDS writes tfrecord files with TensorFlow, which is not "
            "installed. Use file_format=array_record (the default; tfds.data_source reads it), "
            "or install tensorflow-cpu."
        )
    _register(dataset)
    builder = tfds.builder(name, data_dir=str(epath.Path(data_dir).expanduser()))
    if builder.is_prepared():
        print(
            f"{builder.info.full_name} is already built at {builder.data_path} "
            f"({builder.info.file_format.value}); nothing to do.",
            flush=True,
        )
        return builder
    print(f"Building {builder.info.full_name} into {builder.data_path} ...", flush=True)
    root = str(epath.Path(data_dir).expanduser())
    existed = _folders(root)
    tfds.display_progress_bar(False)  # its nested bars flood logs and hide errors
    # TFDS prints its own lines ("Downloading and preparing dataset Unknown size ..."),
    # which say less than ours: shown with --verbosity=1 only.
    quiet = (contextlib.redirect_stdout(io.StringIO()) if logging.get_verbosity() < 1
             else contextlib.nullcontext())
    try:
        with quiet:
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(
                    manual_dir=str(epath.Path(manual_dir).expanduser()) if manual_dir else None
                ),
                file_format=file_format,
            )
    except BaseException:
        _remove_new_empty_folders(root, existed)  # a failed build leaves nothing behind
        raise
    splits = ", ".join(f"{s} {i.num_examples}" for s, i in builder.info.splits.items())
    print(f"Built {builder.info.full_name} at {builder.data_path}: {splits}.", flush=True)
    return builder


def build_or_explain(name: str, data_dir: str, manual_dir: str | None = None,
                     file_format: str = "array_record"):
    """`build`, with the user's problems (a missing or bad archive, no TensorFlow for
    tfrecord) as `errors.DataError`."""
    fgnet_mask, fgnet_paired = _register("fgnet_mask"), _register("fgnet_paired")
    try:
        return build(name, data_dir, manual_dir, file_format)
    except (FileNotFoundError, ModuleNotFoundError, fgnet_mask.ArchiveError,
            fgnet_paired.SourceError) as e:
        raise errors.DataError(str(e)) from None


def _folders(root: str) -> set[str]:
    if "://" in root or not os.path.isdir(root):
        return set()
    return {dirpath for dirpath, _, _ in os.walk(root)}


def _remove_new_empty_folders(root: str, existed: set[str]) -> None:
    """Removes the empty folders under (and including) ``root`` that were not in ``existed``."""
    if "://" in root or not os.path.isdir(root):
        return
    for dirpath, _, _ in sorted(os.walk(root, topdown=False), key=lambda w: -len(w[0])):
        if dirpath not in existed and not os.listdir(dirpath):
            os.rmdir(dirpath)


def ensure_built(name: str, data_dir: str, manual_dir: str | None = None) -> None:
    """`build_or_explain` on every process of a job. Process 0 builds a missing dataset
    while the others wait: on shared storage they then find it built; on a disk of their
    own (TPU VM workers) they build their copy."""
    import jax
    from jax.experimental import multihost_utils

    if jax.process_index() == 0:
        build_or_explain(name, data_dir, manual_dir)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("fgmask_jax: dataset built")
        if jax.process_index() != 0:
            build_or_explain(name, data_dir, manual_dir)
