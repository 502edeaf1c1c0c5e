"""The ``synthetic_masked_faces`` TFDS dataset: procedural masked faces shaped like FGNET-MASK.

Drawn by ``fgmask_jax.data.synthetic.generate``; needs no download. The default
config has FGNET-MASK's size (3,404 images of 82 persons) and class counts, at
128 px; ``small`` (60 images, 32 px) is for tests. The features and splits are
those of ``fgnet_mask``, plus each image's ``mask_kind``.
"""

from __future__ import annotations

import dataclasses
import io
import multiprocessing
from collections.abc import Iterator

import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tqdm import tqdm

from fgmask_jax.data import synthetic
from fgmask_jax.tfds_builder.fgnet_mask import fgnet_mask_dataset_builder as fgnet_mask

HOMEPAGE = "https://doi.org/10.3390/jimaging7100204"  # the study whose data set this mimics
# Below this many images a worker pool costs more to start than it saves.
_MIN_EXAMPLES_FOR_WORKERS = 500


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
    """What ``synthetic.generate`` draws: the data set is a pure function of these."""

    num_examples: int = 3404
    num_subjects: int = 82
    seed: int = 0
    image_size: int = 128


def encode_example(example: dict) -> dict:
    """A ``synthetic.generate`` example as a dataset record: image JPEG-encoded at its quality."""
    buffer = io.BytesIO()
    Image.fromarray(example["image"]).save(buffer, format="JPEG",
                                           quality=int(example["jpeg_quality"]))
    return {
        "image": buffer.getvalue(),
        **{k: example[k] for k in ("age", "age_group", "gender", "expression", "subject_id",
                                    "filename", "mask_kind")},
    }


class Builder(tfds.core.GeneratorBasedBuilder):
    """Procedural masked faces with FGNET-MASK's labels, names, class counts and splits."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: FGNET-MASK's size and class counts, the study's image "
        "split and a subject-disjoint split.",
    }
    BUILDER_CONFIGS = [
        SyntheticConfig(
            name="default",
            description="3,404 images of 82 persons at 128x128 (seed 0), as many as FGNET-MASK.",
        ),
        SyntheticConfig(
            name="small", num_examples=60, num_subjects=12, image_size=32,
            description="60 images of 12 persons at 32x32 (seed 0), for tests.",
        ),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "default"
    # TFDS infers this folder (README.md, CITATIONS.bib, TAGS.txt) from the module name,
    # which points to the wrong place when the package maps tfds_builder/ elsewhere.
    pkg_dir_path = epath.Path(__file__).parent

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=fgnet_mask.features(
                mask_kind=tfds.features.Text(doc="The kind of mask drawn on the face."),
            ),
            homepage=HOMEPAGE,
            disable_shuffling=True,  # records in file-name order, as in fgnet_mask
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        config = self.builder_config
        n = config.num_examples
        workers = multiprocessing.cpu_count() if n >= _MIN_EXAMPLES_FOR_WORKERS else 0
        # Draw every image once and keep the JPEGs in memory (about 20 MB for the default
        # config): each image goes to two splits, one per protocol, and drawing is the slow
        # part (about 10 ms an image), so drawing lazily per split would double the time.
        drawn = synthetic.generate(
            num_examples=n, num_subjects=config.num_subjects, seed=config.seed,
            image_size=config.image_size, workers=workers,
        )
        records = [
            encode_example(ex)
            for ex in tqdm(drawn, total=n, desc="Drawing synthetic faces", unit=" images")
        ]
        records.sort(key=lambda r: r["filename"])
        indices = fgnet_mask.split_indices(
            [r["filename"] for r in records], [r["subject_id"] for r in records]
        )
        return {
            split: self._generate_examples([records[i] for i in indices[split]])
            for split in fgnet_mask.SPLITS
        }

    def _generate_examples(self, records: list[dict]) -> Iterator[tuple[str, dict]]:
        for record in records:
            yield record["filename"], record
