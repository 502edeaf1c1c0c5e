"""The ``synthetic_masked_faces`` TFDS dataset: procedural masked faces shaped like FGNET-MASK.

Drawn by ``fgmask_jax.data.synthetic.generate``; needs no download. Configs:

* ``default``: FGNET-MASK's size (3,404 images of 82 persons) and class counts at
  128 px, each image its own photo; ``small`` (60 images, 32 px) is for tests.
* ``paired``: FGNET-MASK's masked copies. 3,404 masked images (FGNET-MASK's size and
  class counts) that are 3 or 4 masked copies (3.4 on average) of 1,001 photos of 82
  persons, plus the 1,001 unmasked photos (``mask_kind`` ``none``); ``paired_small``
  (68 masked copies of 20 photos and their 20 twins, 6 persons, 32 px) is for tests.

The features are those of ``fgnet_mask`` (``photo_id``: the masked copies of a photo
and its twin share it), plus ``mask_kind`` and ``landmarks`` (the face's 68 points,
from which ``fgmask_jax.masks.mask_region`` gives the mask's pixels). The splits are
those of ``fgnet_mask`` (``train``/``test``: the study's random image split, which lets
copies of one photo fall on both sides; ``subject_train``/``subject_test``;
``photo_train``/``photo_test``: 75/25 of photos, no photo on both sides), all of masked
images only. Configs with twins add ``unmasked_<split>`` for each of those six:
the twins of the photos in ``<split>``.
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
MASKED_SPLITS = fgnet_mask.SPLITS
UNMASKED_PREFIX = fgnet_mask.UNMASKED_PREFIX


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
    """What ``synthetic.generate`` draws: the data set is a pure function of these."""

    num_examples: int = 3404  # masked images
    num_subjects: int = 82
    seed: int = 0
    image_size: int = 128
    copies_per_photo: float = 1.0  # masked copies of each source photo, on average
    twins: bool = False  # also each photo unmasked, in the unmasked_* splits


def encode_example(example: dict) -> dict:
    """A ``synthetic.generate`` example as a dataset record: image JPEG-encoded at its quality."""
    buffer = io.BytesIO()
    Image.fromarray(example["image"]).save(buffer, format="JPEG",
                                           quality=int(example["jpeg_quality"]))
    return {
        "image": buffer.getvalue(),
        **{k: example[k] for k in ("age", "age_group", "gender", "expression", "subject_id",
                                    "photo_id", "filename", "mask_kind", "landmarks")},
    }


class Builder(tfds.core.GeneratorBasedBuilder):
    """Procedural masked faces with FGNET-MASK's labels, names, class counts and splits."""

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: FGNET-MASK's size and class counts, the study's image "
        "split and a subject-disjoint split.",
        "1.1.0": "photo_id feature; photo-disjoint splits photo_train/photo_test; configs "
        "paired and paired_small: masked copies of one photo (3.4 on average) and each "
        "photo unmasked (mask_kind 'none') in unmasked_* splits. The images, labels and "
        "file names of default and small are those of 1.0.0.",
        "1.2.0": "landmarks feature: each face's 68 points (iBUG-68 order, x and y in pixels), "
        "the mask's outline by fgmask_jax.masks.mask_region. Images, labels and splits are "
        "those of 1.1.0.",
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
        SyntheticConfig(
            name="paired", copies_per_photo=3.4, twins=True,
            description="3,404 masked copies (3 or 4 each) of 1,001 photos of 82 persons, "
            "and the 1,001 photos unmasked, at 128x128 (seed 0).",
        ),
        SyntheticConfig(
            name="paired_small", num_examples=68, num_subjects=6, image_size=32,
            copies_per_photo=3.4, twins=True,
            description="68 masked copies of 20 photos of 6 persons, and the 20 photos "
            "unmasked, at 32x32 (seed 0), for tests.",
        ),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "default"
    # TFDS infers this folder (README.md, CITATIONS.bib, TAGS.txt) from the module name,
    # which points to the wrong place when the package maps tfds_builder/ elsewhere.
    pkg_dir_path = epath.Path(__file__).parent

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=fgnet_mask.paired_features(),
            homepage=HOMEPAGE,
            disable_shuffling=True,  # records in file-name order, as in fgnet_mask
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        config = self.builder_config
        n = config.num_examples
        n_images = n + (synthetic.num_photos(n, config.copies_per_photo) if config.twins else 0)
        workers = multiprocessing.cpu_count() if n_images >= _MIN_EXAMPLES_FOR_WORKERS else 0
        # Draw every image once and keep the JPEGs in memory (about 20 MB for the default
        # config): each image goes to several splits, one per protocol, and drawing is the
        # slow part (about 10 ms an image), so drawing lazily per split would cost more.
        drawn = synthetic.generate(
            num_examples=n, num_subjects=config.num_subjects, seed=config.seed,
            image_size=config.image_size, workers=workers,
            copies_per_photo=config.copies_per_photo, twins=config.twins,
        )
        records = [
            encode_example(ex)
            for ex in tqdm(drawn, total=n_images, desc="Drawing synthetic faces", unit=" images")
        ]
        records.sort(key=lambda r: r["filename"])
        masked = [r for r in records if r["mask_kind"] != synthetic.UNMASKED]
        twins = [r for r in records if r["mask_kind"] == synthetic.UNMASKED]
        photo_ids = [r["photo_id"] for r in masked]
        indices = fgnet_mask.split_indices(
            [r["filename"] for r in masked], [r["subject_id"] for r in masked], photo_ids
        )
        generators = {
            split: self._generate_examples([masked[i] for i in indices[split]])
            for split in MASKED_SPLITS
        }
        if twins:
            twin_indices = fgnet_mask.twin_split_indices(
                photo_ids, indices, [r["photo_id"] for r in twins])
            generators.update({
                split: self._generate_examples([twins[i] for i in idx])
                for split, idx in twin_indices.items()
            })
        return generators

    def _generate_examples(self, records: list[dict]) -> Iterator[tuple[str, dict]]:
        for record in records:
            yield record["filename"], record
