"""TFDS's builder harness on the fgnet_mask builder (needs TensorFlow: `make tfds-test`).

The harness passes `dummy_data/` as the manual dir, where a small FGNET-MASK_dataset.zip
of drawn images lies (see dummy_data/README.md).
"""

import tensorflow_datasets as tfds
from etils import epath

from fgmask_jax.tfds_builder.fgnet_mask import fgnet_mask_dataset_builder


class FgnetMaskTest(tfds.testing.DatasetBuilderTestCase):
    """Builds the dummy archive and checks the split sizes, features and reload."""

    DATASET_CLASS = fgnet_mask_dataset_builder.Builder
    # TFDS looks for dummy_data/ beside the module path it infers from the module's
    # name, which is not where the files lie when the package maps tfds_builder/.
    EXAMPLE_DIR = str(epath.Path(fgnet_mask_dataset_builder.__file__).parent / "dummy_data")
    SPLITS = {"train": 9, "test": 3, "subject_train": 8, "subject_test": 4,
              "photo_train": 8, "photo_test": 4}
    # Each image is in one split of each protocol, so the three pairs share examples.
    OVERLAPPING_SPLITS = ["subject_train", "subject_test", "photo_train", "photo_test"]


if __name__ == "__main__":
    tfds.testing.test_main()
