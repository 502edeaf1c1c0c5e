r"""Builds the project's TFDS datasets, without TensorFlow.

  python -m fgmask_jax.build_data --dataset=synthetic_masked_faces --data_dir=DIR
  python -m fgmask_jax.build_data --dataset=fgnet_mask --data_dir=DIR [--manual_dir=DIR]

``fgnet_mask`` needs FGNET-MASK_dataset.zip (or its extracted folder) in the manual
dir, by default DIR/downloads/manual/; the error says where to get it. ``fgnet_paired``
(FG-NET's photos, each unmasked and in masked copies, for ``mask_gap``) needs FG-NET's
FGNET.zip and FGNET-MASK_dataset.zip (its labels) there: see docs/beyond_the_study.md.
``synthetic_masked_faces`` draws its images and needs nothing. NAME/CONFIG picks a
config (``synthetic_masked_faces/small``: 60 images for a quick look).

The files are ArrayRecord by default, read with
``tfds.data_source(NAME, split=..., data_dir=DIR)``. A dataset already built is left
as it is. The `tfds build` command needs TensorFlow; this one does not.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import tensorflow_datasets as tfds
from absl import flags
from etils import epath

from fgmask_jax import cli

DATASETS = ("fgnet_mask", "fgnet_paired", "synthetic_masked_faces")
FILE_FORMATS = ("array_record", "tfrecord")


def check_name(name: str) -> str:
    """The dataset part of ``NAME`` or ``NAME/CONFIG``; ValueError listing DATASETS if unknown."""
    dataset = name.split("/", 1)[0]
    if dataset not in DATASETS:
        raise ValueError(
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
    try:
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
    tfrecord) as `cli.UserError`."""
    fgnet_mask, fgnet_paired = _register("fgnet_mask"), _register("fgnet_paired")
    try:
        return build(name, data_dir, manual_dir, file_format)
    except (FileNotFoundError, ModuleNotFoundError, fgnet_mask.ArchiveError,
            fgnet_paired.SourceError) as e:
        raise cli.UserError(str(e)) from None


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


def define_flags() -> None:
    """Defines the command's flags; only the command calls it, so importing defines none."""
    flags.DEFINE_string(
        "dataset", None, f"Dataset to build: one of {', '.join(DATASETS)}, or NAME/CONFIG."
    )
    flags.DEFINE_string(
        "data_dir", "~/tensorflow_datasets",
        "Folder that holds TFDS datasets (built ones are kept).",
    )
    flags.DEFINE_string(
        "manual_dir", None,
        "fgnet_mask: folder with FGNET-MASK_dataset.zip or its extracted folder; "
        "fgnet_paired: folder with FGNET.zip (or FGNET/) and FGNET-MASK_dataset.zip "
        "(default: DATA_DIR/downloads/manual/).",
    )
    flags.DEFINE_enum(
        "file_format", "array_record", FILE_FORMATS,
        "Record format: array_record (random access, no TensorFlow) or tfrecord "
        "(needs TensorFlow).",
    )
    flags.mark_flag_as_required("dataset")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    args = flags.FLAGS
    try:
        check_name(args.dataset)
    except ValueError as e:
        raise cli.UserError(str(e)) from None
    build_or_explain(args.dataset, cli.absolute(args.data_dir), cli.absolute(args.manual_dir),
                     args.file_format)


if __name__ == "__main__":
    define_flags()
    cli.run(main, prog="fgmask_jax.build_data")
