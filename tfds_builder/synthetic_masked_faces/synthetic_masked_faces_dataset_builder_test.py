"""TFDS's builder harness on the synthetic builder (needs TensorFlow: `make tfds-test`).

Only the `small` config is generated (60 images at 32x32); the default one takes
about a minute and is built by `python -m fgmask_jax.build_data`.
"""

import tensorflow_datasets as tfds
from etils import epath

from fgmask_jax.tfds_builder.synthetic_masked_faces import (
    synthetic_masked_faces_dataset_builder,
)


class SyntheticMaskedFacesTest(tfds.testing.DatasetBuilderTestCase):
    """Generates the small config and checks the split sizes, features and reload."""

    DATASET_CLASS = synthetic_masked_faces_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["small"]
    # The harness needs a dummy_data/ folder even for a builder that reads nothing.
    EXAMPLE_DIR = str(
        epath.Path(synthetic_masked_faces_dataset_builder.__file__).parent / "dummy_data"
    )
    SPLITS = {"train": 45, "test": 15, "subject_train": 42, "subject_test": 18}
    # Each image is in one split of each protocol, so the two pairs share examples.
    OVERLAPPING_SPLITS = ["subject_train", "subject_test"]


if __name__ == "__main__":
    tfds.testing.test_main()
