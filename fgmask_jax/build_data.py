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

from absl import flags

from fgmask_jax import cli, errors
from fgmask_jax.data import build


def define_flags() -> None:
    """Defines the command's flags; only the command calls it, so importing defines none."""
    flags.DEFINE_string(
        "dataset", None, f"Dataset to build: one of {', '.join(build.DATASETS)}, or NAME/CONFIG."
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
        "file_format", "array_record", build.FILE_FORMATS,
        "Record format: array_record (random access, no TensorFlow) or tfrecord "
        "(needs TensorFlow).",
    )
    flags.mark_flag_as_required("dataset")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise errors.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    args = flags.FLAGS
    build.check_name(args.dataset)
    build.build_or_explain(args.dataset, cli.absolute(args.data_dir),
                           cli.absolute(args.manual_dir), args.file_format)


if __name__ == "__main__":
    define_flags()
    cli.run(main, prog="fgmask_jax.build_data")
