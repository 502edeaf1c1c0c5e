"""TFDS's builder harness on the fgnet_paired builder (needs TensorFlow: `make tfds-test`).

The harness passes `dummy_data/` as the manual dir: a small FGNET.zip of drawn faces with
their .pts files and an FGNET-MASK_dataset.zip that names their labels (see
dummy_data/README.md).
"""

import tensorflow_datasets as tfds
from etils import epath

from fgmask_jax.tfds_builder.fgnet_paired import fgnet_paired_dataset_builder


class FgnetPairedTest(tfds.testing.DatasetBuilderTestCase):
    """Builds the dummy photos' masked copies and twins; checks split sizes, features, reload."""

    DATASET_CLASS = fgnet_paired_dataset_builder.Builder
    # As for fgnet_mask: dummy_data/ lies beside the file, not where TFDS infers it.
    EXAMPLE_DIR = str(epath.Path(fgnet_paired_dataset_builder.__file__).parent / "dummy_data")
    SPLITS = {
        "train": 30, "test": 11, "subject_train": 31, "subject_test": 10,
        "photo_train": 31, "photo_test": 10,
        "unmasked_train": 12, "unmasked_test": 9, "unmasked_subject_train": 9,
        "unmasked_subject_test": 3, "unmasked_photo_train": 9, "unmasked_photo_test": 3,
    }
    # As in synthetic_masked_faces/paired: each image is in one split of each protocol, and
    # the twin of a photo whose copies straddle train/test is in both unmasked_train/test.
    OVERLAPPING_SPLITS = ["subject_train", "subject_test", "photo_train", "photo_test",
                          "unmasked_train", "unmasked_test", "unmasked_subject_train",
                          "unmasked_subject_test"]


if __name__ == "__main__":
    tfds.testing.test_main()
