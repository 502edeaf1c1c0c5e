"""How well the Predictor's ``ood_score`` tells a run's own test faces from inputs unlike them.

  python benchmarks/ood_signal.py --workdir=workdir/demo

The run (a finished neural run; `make demo` trains ``workdir/demo``) predicts its test
faces, its validation faces (carved from its training split, as training carved them)
and inputs that are not faces like its training images: scikit-image's sample
pictures without a human face (each whole and its four quarters), the test faces
turned 90 and 180 degrees, Gaussian noise (mean 128, sd 64) and blank images of one
colour each. The real face of scikit-image's astronaut photo, found by the face
detector, is shown on its own row: a real face is not like drawn training faces either.

The threshold is the run's own, the one the Predictor uses: the 95th percentile of its
held-out validation persons' scores, measured at the end of training (5% of faces like the
training images are flagged ``uncertain``); ``--quantile`` sets one from all the validation
faces instead (and a run from before runs kept a threshold gets the 95th). Per group: n,
mean score, the share above the threshold (the false-alarm rate on test faces, the detection rate on
the others), and AUROC of test faces against the group (scikit-learn's
``roc_auc_score``; 1: every input of the group scores above every test face, 0.5:
no better than chance), for ``ood_score`` (energy) and for the alternative it was
chosen over, one minus the mean top class probability.
"""

from __future__ import annotations

import numpy as np
from absl import app, flags
from sklearn.metrics import roc_auc_score

from fgmask_jax import runs
from fgmask_jax.data import pipeline
from fgmask_jax.evaluation import calibration, writers
from fgmask_jax.inference import Predictor, load_image
from fgmask_jax.inference.predictor import OOD_KEY
from fgmask_jax.train import fit

_WORKDIR = flags.DEFINE_string("workdir", "workdir/demo", "A finished neural run's workdir.")
_FOLD = flags.DEFINE_integer("fold", None, "Leave-persons-out runs: the fold to measure.")
_QUANTILE = flags.DEFINE_float("quantile", None, "Set the threshold so that this share of "
                                "validation faces is below it (default: the run's own).")
_NOISE = flags.DEFINE_integer("noise", 200, "Gaussian-noise images.")
_BLANK = flags.DEFINE_integer("blank", 64, "Blank (one-colour) images.")

# scikit-image's sample pictures (shipped with it, no download) that show no human face.
PICTURES = ("brick", "checkerboard", "chelsea", "clock", "coffee", "coins", "colorwheel",
            "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
            "moon", "page", "retina", "rocket", "text")


def pictures(size: int) -> np.ndarray:
    """Each sample picture whole and its four quarters, prepared as photos are."""
    from skimage import data

    out = []
    for name in PICTURES:
        a = getattr(data, name)()
        a = a.astype(np.uint8) * 255 if a.dtype == bool else a
        h, w = a.shape[:2]
        out.append(load_image(a, size))
        out += [load_image(a[y : y + h // 2, x : x + w // 2], size)
                for y in (0, h // 2) for x in (0, w // 2)]
    return np.stack(out)


def face_sets(run: runs.Run) -> tuple[np.ndarray, np.ndarray]:
    """(test faces, validation faces) of ``run``, prepared as in training."""
    config = run.config
    if config.protocol == "lopo":
        raise app.UsageError("a leave-persons-out run: measure one of its folds' runs "
                             "with --fold (its test split is its fold)")
    train_split, test_split = pipeline.split_names(config.protocol)
    data_dir, size = pipeline.data_dir(config), config.image_size
    test = pipeline.open_split(config.dataset, test_split, data_dir)
    train = pipeline.open_split(config.dataset, train_split, data_dir)
    if "split_seed" not in config:  # a run from before config.split_seed: seed carved it
        config.split_seed = config.seed
    _, val = fit.split_train(config, train, np.arange(len(train)))
    return (pipeline.load_all(test, np.arange(len(test)), size)["image"],
            pipeline.load_all(train, val, size)["image"])


def scores(predictor: Predictor, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ood_score, 1 - mean over tasks of the top class probability) per image."""
    out = predictor.outputs(images)
    top = np.mean([out[t].max(-1) for t in predictor.tasks], axis=0)
    return out[OOD_KEY], 1 - top


def main(argv: list[str]) -> None:
    del argv
    from skimage import data

    writers.quiet_library_logs()
    run = runs.load(_WORKDIR.value, _FOLD.value)
    predictor = Predictor.from_workdir(_WORKDIR.value, fold=_FOLD.value)
    size = predictor.image_size
    test, val = face_sets(run)
    rng = np.random.default_rng(0)
    others = {
        "sample pictures without a face": pictures(size),
        "test faces turned 90 degrees": np.ascontiguousarray(np.rot90(test, 1, axes=(1, 2))),
        "test faces turned 180 degrees": np.ascontiguousarray(test[:, ::-1, ::-1]),
        "Gaussian noise": np.clip(128 + 64 * rng.standard_normal((_NOISE.value, size, size, 3)),
                                  0, 255).astype(np.uint8),
        "blank (one colour)": np.broadcast_to(
            rng.integers(0, 256, (_BLANK.value, 1, 1, 3), dtype=np.uint8),
            (_BLANK.value, size, size, 3)).copy(),
    }
    val_energy, _ = scores(predictor, val)
    if _QUANTILE.value is None and run.ood_threshold is not None:
        threshold = run.ood_threshold
        source = (f"the run's own: the {calibration.OOD_QUANTILE:.0%} quantile of its "
                  "held-out validation persons' faces")
    else:
        quantile = calibration.OOD_QUANTILE if _QUANTILE.value is None else _QUANTILE.value
        threshold = float(np.quantile(val_energy, quantile))
        source = f"the {quantile:.0%} quantile of {len(val)} validation faces' ood_score"
    faces = scores(predictor, test)

    def auroc(face_scores, group_scores):
        labels = np.r_[np.zeros(len(face_scores)), np.ones(len(group_scores))]
        return roc_auc_score(labels, np.r_[face_scores, group_scores])

    def line(name, group, versus_faces=True):
        energy, top = group
        cells = [name, str(len(energy)), f"{energy.mean():.3f}",
                 f"{np.mean(energy > threshold):.1%}"]
        cells += ([f"{auroc(faces[0], energy):.3f}", f"{auroc(faces[1], top):.3f}"]
                  if versus_faces else ["", ""])
        print("| " + " | ".join(cells) + " |")

    print(f"run: {predictor.description}; {run.config.model}, {size} px, "
          f"temperatures {run.temperatures}")
    print(f"threshold: {threshold:.3f} ({source})\n")
    print("| group | n | mean ood_score | above threshold | AUROC ood_score | "
          "AUROC 1 - top probability |")
    print("|---|---:|---:|---:|---:|---:|")
    line("validation faces", (val_energy, val_energy), versus_faces=False)
    line("test faces", faces, versus_faces=False)
    groups = {name: scores(predictor, images) for name, images in others.items()}
    for name, group in groups.items():
        line(name, group)
    line("all of the above non-faces", tuple(np.concatenate(g) for g in zip(*groups.values(),
                                                                             strict=True)))
    astronaut = predictor.predict_faces(data.astronaut())[0]
    print(f"| the astronaut's real face (detected, {astronaut['box'].width} px) | 1 | "
          f"{astronaut[OOD_KEY]:.3f} | {'yes' if astronaut[OOD_KEY] > threshold else 'no'} "
          "| | |")


if __name__ == "__main__":
    app.run(main)
