"""TFDS's builder harness on the synthetic builder (needs TensorFlow: `make tfds-test`).

Only the `small` config (60 images at 32x32) and `paired_small` (68 masked copies of 20
photos and their 20 twins) are generated; the full-size ones take about a minute each
and are built by `python -m fgmask_jax.build_data`.
"""

import tensorflow_datasets as tfds
from etils import epath

from fgmask_jax.tfds_builder.synthetic_masked_faces import (
    synthetic_masked_faces_dataset_builder,
)

# The harness needs a dummy_data/ folder even for a builder that reads nothing.
EXAMPLE_DIR = str(epath.Path(synthetic_masked_faces_dataset_builder.__file__).parent / "dummy_data")


class SyntheticMaskedFacesTest(tfds.testing.DatasetBuilderTestCase):
    """Generates the small config and checks the split sizes, features and reload."""

    DATASET_CLASS = synthetic_masked_faces_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["small"]
    EXAMPLE_DIR = EXAMPLE_DIR
    SPLITS = {"train": 45, "test": 15, "subject_train": 42, "subject_test": 18,
              "photo_train": 45, "photo_test": 15}
    # Each image is in one split of each protocol, so the pairs share examples (and with
    # one image per photo, photo_train/photo_test are train/test).
    OVERLAPPING_SPLITS = ["subject_train", "subject_test", "photo_train", "photo_test"]


class PairedMaskedFacesTest(tfds.testing.DatasetBuilderTestCase):
    """Generates paired_small: masked splits of 68 copies, unmasked_* splits of 20 twins."""

    DATASET_CLASS = synthetic_masked_faces_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["paired_small"]
    EXAMPLE_DIR = EXAMPLE_DIR
    SPLITS = {
        "train": 51, "test": 17, "subject_train": 55, "subject_test": 13,
        "photo_train": 51, "photo_test": 17,
        "unmasked_train": 20, "unmasked_test": 11, "unmasked_subject_train": 16,
        "unmasked_subject_test": 4, "unmasked_photo_train": 15, "unmasked_photo_test": 5,
    }
    # Checked for no shared example: train, test and the unmasked photo pair. The twin of a
    # photo whose copies straddle train/test is in both unmasked_train and unmasked_test.
    OVERLAPPING_SPLITS = ["subject_train", "subject_test", "photo_train", "photo_test",
                          "unmasked_train", "unmasked_test", "unmasked_subject_train",
                          "unmasked_subject_test"]


if __name__ == "__main__":
    tfds.testing.test_main()
