"""Mask rendering, .pts reading and the folder command, on drawn landmarks of a frontal face."""

import csv
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fgmask_jax.data import masked_photos as apply_lib
from fgmask_jax.masks import (
    MASK_COLORS,
    MASK_KINDS,
    LandmarkError,
    format_pts,
    mask_color,
    read_pts,
    render_mask,
)

SIZE = 128
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def frontal_landmarks(size: int = SIZE) -> np.ndarray:
    """float32[68, 2] iBUG-68 (x, y) of an upright frontal face centred on a size x size canvas.

    Built in a unit box (eyes at height 0.325, mouth 0.76, chin 1.06), then scaled.
    """
    deg = np.radians
    points = []
    for j in range(17):  # jaw: the face's right ear (image left), down to the chin, up
        a = deg(180 * j / 16)
        points.append((0.5 - 0.45 * np.cos(a), 0.34 + 0.72 * np.sin(a)))
    for left in (0.16, 0.56):  # brows
        points += [(left + 0.07 * j, 0.23 - 0.035 * np.sin(deg(45 * j))) for j in range(5)]
    points += [(0.5, 0.32 + 0.077 * j) for j in range(4)]  # nose bridge 27-30
    points += [(0.42 + 0.04 * j, 0.6 + 0.03 * np.sin(deg(45 * j))) for j in range(5)]
    for centre in (0.33, 0.67):  # eyes, each from its image-left corner, clockwise
        points += [
            (centre + 0.08 * np.cos(deg(a)), 0.325 - 0.03 * np.sin(deg(a)))
            for a in (180, 120, 60, 0, -60, -120)
        ]
    for a in (180, 150, 120, 90, 60, 30, 0, -30, -60, -90, -120, -150):  # outer lips
        points.append(
            (0.5 + 0.17 * np.cos(deg(a)), 0.76 - (0.04 if a > 0 else 0.07) * np.sin(deg(a)))
        )
    for a in (180, 135, 90, 45, 0, -45, -90, -135):  # inner lips
        points.append((0.5 + 0.12 * np.cos(deg(a)), 0.76 - 0.02 * np.sin(deg(a))))
    unit = np.asarray(points)
    return ((unit - 0.5) * 0.62 * size + np.array([0.5, 0.45]) * size).astype(np.float32)


def uniform(value: int) -> np.ndarray:
    return np.full((SIZE, SIZE, 3), value, np.uint8)


def changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """bool[H, W]: pixels that the mask altered."""
    return np.abs(after.astype(int) - before.astype(int)).sum(axis=-1) > 0


def test_frontal_landmarks_are_ibug_ordered():
    lm = frontal_landmarks()
    assert lm.shape == (68, 2)
    assert lm[0, 0] < lm[8, 0] < lm[16, 0]  # jaw from image left to right
    assert lm[8, 1] == lm[:, 1].max()  # chin lowest
    assert lm[36:48, 1].max() < lm[28, 1] < lm[30, 1] < lm[48:68, 1].min()


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_mask_covers_nose_and_mouth_not_eyes(kind):
    lm = frontal_landmarks()
    image = uniform(128)
    masked = render_mask(image, lm, kind, color=(20, 200, 40), seed=3)
    covered = changed(image, masked)
    at = lambda indices: covered[  # noqa: E731
        np.round(lm[indices, 1]).astype(int), np.round(lm[indices, 0]).astype(int)
    ]
    assert at(list(range(29, 36)) + list(range(48, 68)) + [8]).all()  # nose tip, mouth, chin
    # Eyes, brows and the top of the nose bridge stay bare, with a pixel to spare.
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            rows = np.round(lm[17:28, 1]).astype(int) + dy
            cols = np.round(lm[17:28, 0]).astype(int) + dx
            rows = np.concatenate([rows, np.round(lm[36:48, 1]).astype(int) + dy])
            cols = np.concatenate([cols, np.round(lm[36:48, 0]).astype(int) + dx])
            assert not covered[rows, cols].any()
    # Loops or straps run from the mask's sides out to the ears (landmarks 0 and 16).
    for ear, outward in ((lm[0], -1), (lm[16], 1)):
        x, y = np.round(ear).astype(int)
        cols = slice(x + 3, x + 10) if outward > 0 else slice(x - 9, x - 2)  # beyond the jaw
        assert covered[y - 6 : y + 12, cols].any()
    # Under the chin but not far under it.
    chin_x, chin_y = np.round(lm[8]).astype(int)
    assert covered[chin_y + 2, chin_x] and not covered[chin_y + 12, chin_x]


def kind_features(kind: str, seed: int) -> dict[str, float]:
    """Measures of one grey mask on a flat face that tell the kinds apart."""
    lm = frontal_landmarks()
    luma = render_mask(uniform(128), lm, kind, color=(150, 150, 150), seed=seed).mean(axis=-1)
    centre = int(round(lm[8, 0]))
    # Down a band beside the midline, from the nose to the chin: pleats are deep, narrow dips.
    profile = luma[int(lm[29, 1]) : int(lm[8, 1]), centre - 12 : centre - 7].mean(axis=1)
    window = np.lib.stride_tricks.sliding_window_view(profile, 9)
    dips = (window[:, 4] == window.min(axis=1)) & (window.max(axis=1) - window[:, 4] > 12)
    rows = slice(int(lm[33, 1]), int(lm[57, 1]))  # from the nostrils to the lower lip
    middle = luma[rows, centre - 12 : centre + 12]
    side = luma[int(lm[48, 1]) - 4 : int(lm[48, 1]) + 4, int(lm[3, 0]) + 4 : int(lm[3, 0]) + 10]
    return {
        "pleats": float(dips.sum()),
        "seam": luma[rows, centre].mean()
        - 0.5 * (luma[rows, centre - 6] + luma[rows, centre + 6]).mean(),
        "dome": middle.mean() - side.mean(),
        "print": middle.std(),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_kind_shows_its_features(seed):
    surgical, n95, kn95, cloth = (kind_features(kind, seed) for kind in MASK_KINDS)
    assert surgical["pleats"] >= 3 and n95["pleats"] <= 1 and kn95["pleats"] <= 1
    # Cloth is left out of the seam check: a stripe of its print may run down the midline.
    assert kn95["seam"] < -6 and min(surgical["seam"], n95["seam"]) > -4
    assert n95["dome"] > 15 and n95["dome"] > surgical["dome"] + 6
    assert cloth["print"] > 20 and max(surgical["print"], n95["print"], kn95["print"]) < 12


def test_render_is_deterministic_and_leaves_input_alone():
    lm = frontal_landmarks()
    image = uniform(128)
    first = render_mask(image, lm, "cloth", seed=5)
    assert np.array_equal(first, render_mask(image, lm, "cloth", seed=5))
    assert np.array_equal(image, uniform(128))
    assert first.dtype == np.uint8 and first.shape == image.shape


def test_render_differs_across_seeds_and_kinds():
    lm = frontal_landmarks()
    image = uniform(128)
    by_seed = [render_mask(image, lm, "surgical", color=(128, 178, 218), seed=s) for s in range(3)]
    assert not np.array_equal(by_seed[0], by_seed[1])
    assert not np.array_equal(by_seed[1], by_seed[2])
    by_kind = [render_mask(image, lm, kind, color=(128, 178, 218), seed=0) for kind in MASK_KINDS]
    for i in range(len(by_kind)):
        for j in range(i + 1, len(by_kind)):
            # Not a few pixels: the kinds look different.
            assert changed(by_kind[i], by_kind[j]).sum() > 200, (MASK_KINDS[i], MASK_KINDS[j])


def test_colour_comes_from_the_kinds_palette_by_seed():
    lm = frontal_landmarks()
    image = uniform(128)
    for kind in MASK_KINDS:
        assert len(MASK_COLORS[kind]) >= 3
        picked = {mask_color(kind, seed) for seed in range(40)}
        assert picked <= set(MASK_COLORS[kind]) and len(picked) >= 3
    color = mask_color("kn95", 7)
    assert np.array_equal(
        render_mask(image, lm, "kn95", seed=7), render_mask(image, lm, "kn95", color, seed=7)
    )


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_outline_is_anti_aliased(kind):
    """On flat black and flat white faces the mask is the same, so the two renders give alpha."""
    lm = frontal_landmarks()
    on_black = render_mask(uniform(0), lm, kind, color=(120, 120, 120), seed=1).astype(float)
    on_white = render_mask(uniform(255), lm, kind, color=(120, 120, 120), seed=1).astype(float)
    alpha = 1.0 - (on_white - on_black).mean(axis=-1) / 255.0
    assert alpha.min() > -0.02 and alpha.max() < 1.02
    # Down each column under the mouth, coverage falls from 1 to 0 across the chin outline:
    # most columns pass through an intermediate value there.
    columns = range(int(lm[48, 0]), int(lm[54, 0]) + 1)
    soft = [
        ((alpha[int(lm[57, 1]) :, x] > 0.1) & (alpha[int(lm[57, 1]) :, x] < 0.9)).any()
        for x in columns
    ]
    assert np.mean(soft) > 0.6
    interior = alpha[int(lm[30, 1]) : int(lm[57, 1]), int(lm[48, 0]) : int(lm[54, 0])]
    assert interior.min() > 0.98


def test_shading_follows_the_faces_light():
    lm = frontal_landmarks()
    ramp = np.linspace(230, 40, SIZE)  # lit from the image's left
    lit_from_left = np.repeat(np.tile(ramp, (SIZE, 1))[..., None], 3, axis=-1).astype(np.uint8)
    centre = int(round(lm[8, 0]))
    rows = slice(int(lm[33, 1]) + 4, int(lm[57, 1]))

    def halves(image):
        luma = render_mask(image, lm, "surgical", color=(150, 150, 150), seed=2).mean(axis=-1)
        return luma[rows, centre - 18 : centre - 2].mean(), luma[
            rows, centre + 2 : centre + 18
        ].mean()

    left, right = halves(lit_from_left)
    assert left > right + 15  # the face itself differs by 30 grey levels here
    left, right = halves(uniform(128))  # evenly lit: an even mask
    assert abs(left - right) < 4


def _outside(lm):
    return lm + 1000.0


def _chin_on_the_nose(lm):
    bad = lm.copy()
    bad[8] = lm[29]
    return bad


def _one_sided_jaw(lm):
    bad = lm.copy()
    bad[1:16] = lm[15:0:-1]  # jaw 1..15 listed from the wrong ear
    return bad


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda lm: lm[:67], r"float\[68, 2\].*\(67, 2\)"),
        (lambda lm: lm.T, r"float\[68, 2\].*\(2, 68\)"),
        (lambda lm: np.concatenate([lm, lm[:, :1]], axis=1), r"\(68, 3\)"),
        (lambda lm: np.where(np.arange(68)[:, None] == 30, np.nan, lm), r"\[30\] are not finite"),
        (lambda lm: np.where(np.arange(68)[:, None] == 5, np.inf, lm), r"\[5\] are not finite"),
        (_outside, r"68 of 68 landmarks lie outside the 128x128 image"),
        (lambda lm: np.full_like(lm, 64.0), r"too small"),
        (_one_sided_jaw, r"1 and 15 are not on either side of the nose.*iBUG-68 order"),
        (_chin_on_the_nose, r"the chin \(landmark 8\) is .* below the nose"),
    ],
    ids=[
        "67_points",
        "transposed",
        "three_columns",
        "nan",
        "inf",
        "outside",
        "collapsed",
        "order",
        "chin",
    ],
)
def test_bad_landmarks_raise(make_bad, message):
    with pytest.raises(LandmarkError, match=message):
        render_mask(uniform(128), make_bad(frontal_landmarks()))


def test_landmark_error_is_a_value_error_and_bad_arguments_raise():
    assert issubclass(LandmarkError, ValueError)
    lm = frontal_landmarks()
    with pytest.raises(ValueError, match="unknown mask kind 'ffp2'"):
        render_mask(uniform(128), lm, "ffp2")
    with pytest.raises(ValueError, match="color must be three integers"):
        render_mask(uniform(128), lm, color=(300, 0, 0))
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        render_mask(uniform(128), lm, seed=-1)
    with pytest.raises(ValueError, match=r"uint8\[H, W, 3\]"):
        render_mask(uniform(128)[..., 0], lm)


def test_read_pts_reads_fgnet_files(tmp_path):
    lm = frontal_landmarks()
    path = tmp_path / "001a02.pts"
    path.write_bytes(format_pts(lm, newline="\r\n").encode())  # FG-NET files have CRLF lines
    points = read_pts(path)
    assert points.dtype == np.float32 and points.shape == (68, 2)
    np.testing.assert_allclose(points, lm, atol=1e-3)
    assert np.array_equal(read_pts(str(path)), points)


@pytest.mark.parametrize(
    "text, message",
    [
        (format_pts(frontal_landmarks()[:67]), "holds 67 points; masks need the 68"),
        (
            format_pts(frontal_landmarks()).replace("n_points:  68", "n_points:  69"),
            "declares n_points: 69 but holds 68 points",
        ),
        (format_pts(frontal_landmarks()).replace("}", ""), r"points between a line '\{'"),
        (format_pts(frontal_landmarks()).replace("n_points:  68\n", ""), "no 'n_points:' line"),
        (
            format_pts(frontal_landmarks()).replace("n_points:  68", "n_points: many"),
            "n_points must be an integer",
        ),
        (
            format_pts(frontal_landmarks()).replace("\n{\n", "\n{\n1.0 2.0 3.0\n"),
            r":4: expected two numbers 'x y', got '1.0 2.0 3.0'",
        ),
        (format_pts(frontal_landmarks()).replace("\n{\n", "\n{\nx y\n"), r":4: expected two"),
    ],
    ids=[
        "67_points",
        "count_mismatch",
        "no_closing_brace",
        "no_header",
        "bad_header",
        "three_numbers",
        "not_numbers",
    ],
)
def test_read_pts_rejects_malformed_files(tmp_path, text, message):
    path = tmp_path / "bad.pts"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        read_pts(path)


def write_photo_folder(root):
    """images/ with an RGB and a grayscale photo, pts/ with their lower-case .pts files."""
    images, pts = root / "images", root / "pts"
    images.mkdir()
    pts.mkdir()
    lm = frontal_landmarks()
    rng = np.random.default_rng(0)
    color = rng.integers(60, 200, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(color).save(images / "001A02.JPG")
    Image.fromarray(color[..., 0]).save(images / "002A15a.JPG")  # grayscale: mode "L"
    (pts / "001a02.pts").write_text(format_pts(lm))
    (pts / "002a15a.pts").write_text(format_pts(lm))
    return images, pts


@pytest.mark.parametrize("args, message", [
    (["--images=nope", "--pts=nope"], "nope: no such folder"),
    (["--images=.", "--pts=.", "--kinds=paper"], "kinds ['paper']: each must be one of"),
    (["--images=nope"], "--pts is required: Folder of 68-point .pts landmark files"),
])
def test_apply_command_mistakes_are_one_line_and_exit_2(tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "fgmask_jax.masks.apply", *args, "--out=o"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert result.stderr.startswith("fgmask_jax.masks.apply: ")
    assert not (tmp_path / "o").exists()


def test_apply_command_end_to_end(tmp_path):
    images, pts = write_photo_folder(tmp_path)
    out = tmp_path / "masked"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fgmask_jax.masks.apply",
            f"--images={images}",
            f"--pts={pts}",
            f"--out={out}",
            "--kinds=surgical,kn95,cloth",
            "--copies=2",
            "--seed=4",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["output", "source", "subject", "age", "mask_kind", "color"]
    assert [(r["source"], r["subject"], r["age"]) for r in rows] == [
        (
            "001A02.JPG",
            "1",
            "2",
        ),
        ("001A02.JPG", "1", "2"),
        ("002A15a.JPG", "2", "15"),
        ("002A15a.JPG", "2", "15"),
    ]
    mouth = frontal_landmarks()[48:60].mean(axis=0).round().astype(int)
    for source in ("001A02.JPG", "002A15a.JPG"):
        copies = [r for r in rows if r["source"] == source]
        assert len({r["mask_kind"] for r in copies}) == 2  # copies of a photo differ in kind
        for row in copies:
            assert row["mask_kind"] in ("surgical", "kn95", "cloth")
            rgb = tuple(int(row["color"][i : i + 2], 16) for i in (1, 3, 5))
            assert rgb in MASK_COLORS[row["mask_kind"]]
            with Image.open(out / row["output"]) as masked:
                assert masked.mode == "RGB" and masked.size == (SIZE, SIZE)
                pixel = np.asarray(masked)[mouth[1], mouth[0]].astype(int)
            assert np.abs(pixel - rgb).max() < 90  # the mouth now shows the mask's colour
    assert sorted(os.listdir(out)) == sorted([r["output"] for r in rows] + ["manifest.csv"])


def test_apply_same_seed_same_files(tmp_path):
    images, pts = write_photo_folder(tmp_path)
    first = apply_lib.mask_folder(str(images), str(pts), str(tmp_path / "a"), seed=9)
    second = apply_lib.mask_folder(str(images), str(pts), str(tmp_path / "b"), seed=9)
    assert first == second
    for row in first:
        assert (tmp_path / "a" / row.output).read_bytes() == (
            tmp_path / "b" / row.output
        ).read_bytes()


def test_apply_lists_photos_without_landmarks(tmp_path):
    images, pts = write_photo_folder(tmp_path)
    (pts / "002a15a.pts").unlink()
    with pytest.raises(
        ValueError, match=r"1 images .* no \.pts file .*002A15a\.JPG.*--skip_missing"
    ):
        apply_lib.mask_folder(str(images), str(pts), str(tmp_path / "out"))
    rows = apply_lib.mask_folder(str(images), str(pts), str(tmp_path / "out"), skip_missing=True)
    assert [r.source for r in rows] == ["001A02.JPG"]


def test_apply_refuses_to_write_into_the_images_folder(tmp_path):
    images, pts = write_photo_folder(tmp_path)
    with pytest.raises(ValueError, match="refusing to write masked photos into the images"):
        apply_lib.mask_folder(str(images), str(pts), str(images) + os.sep)
    assert sorted(os.listdir(images)) == ["001A02.JPG", "002A15a.JPG"]


def test_apply_names_the_pts_file_with_bad_landmarks(tmp_path):
    images, pts = write_photo_folder(tmp_path)
    (pts / "001a02.pts").write_text(format_pts(frontal_landmarks() + 1000.0))
    with pytest.raises(LandmarkError, match=r"001a02\.pts: .* outside .*fix or remove"):
        apply_lib.mask_folder(str(images), str(pts), str(tmp_path / "out"))
