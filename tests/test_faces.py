"""The face detector on real photos: its boxes, scores, size limit and framing."""

import numpy as np
import pytest

from fgmask_jax.inference import faces, images

skimage_data = pytest.importorskip("skimage.data")

# Where the astronaut's face is in scikit-image's 512x512 photo (x, y, right, bottom).
ASTRONAUT_FACE = (160, 50, 290, 190)


def _inside(box, region) -> bool:
    left, top, right, bottom = region
    return (left <= box.x and box.x + box.width <= right
            and top <= box.y and box.y + box.height <= bottom)


def test_a_real_face_scores_above_the_cascades_false_finds_and_nothing_is_found_in_a_cup():
    photo = skimage_data.astronaut()
    boxes = faces.detect_faces(photo)
    assert _inside(boxes[0], ASTRONAUT_FACE), boxes
    assert boxes == sorted(boxes, key=lambda b: -b.width * b.height)
    assert all(b.score >= faces.MIN_SCORE for b in boxes)
    # The cascade also accepts a few small patches of the background, more weakly.
    others = boxes[1:]
    assert others and all(b.score < boxes[0].score and b.width < faces.MIN_FACE for b in others)
    assert faces.detect_faces(photo) == boxes  # the same photo, the same faces
    assert faces.detect_faces(skimage_data.coffee()) == []


def test_min_face_drops_small_faces_and_the_crop_frames_the_face_as_training_does():
    photo = skimage_data.astronaut()
    boxes = faces.detect_faces(photo)
    found = images.load_faces(photo, 32, min_face=faces.MIN_FACE)
    assert [box for box, _ in found] == boxes
    assert [crop is None for _, crop in found] == [b.width < faces.MIN_FACE for b in boxes]
    box, crop = found[0]
    assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
    # The square around the face, cut from the photo unchanged: 1.9 box widths, centred
    # 0.08 box widths above the box's centre (the training images' framing).
    square = faces.crop_face(photo, box)
    side = round(1.9 * box.width)
    left = round(box.x + box.width / 2 - side / 2)
    top = round(box.y + box.height / 2 - 0.08 * box.width - side / 2)
    np.testing.assert_array_equal(square, photo[top : top + side, left : left + side])
    assert all(crop is not None for _, crop in images.load_faces(photo, 32, min_face=0))
