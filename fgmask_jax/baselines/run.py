"""One run of a classical method: features, classifiers, the test report.

    results = run_and_evaluate(config, workdir)  # config from configs/lbp.py etc.

Reads the protocol's splits through the same pipeline as the neural trainer
(decoded uint8 images at ``config.image_size``), extracts features in jitted
batches, fits one classifier per task on the training split and predicts the
test split. Protocols: ``study``, ``subject`` and ``photo`` (the dataset's
train/test splits; ``photo`` needs a dataset that records each image's photo:
``fgnet_mask``, ``fgnet_paired`` or the synthetic ``paired`` one) and ``lopo`` (folds of
persons over all images: every image is predicted once, by a model that never saw its
person; results pooled over the folds).

Writes in ``workdir``: ``config.json``, ``results.json`` (``{"test": {task:
summary}, "selection": ...}``; classifiers have no loss, so none is given),
``predictions.npz`` (the tested images' ``subject_id``, ``label_<task>``, ``pred_<task>``),
``report.md`` with confusion PNGs, and ``metrics.jsonl`` / TensorBoard scalars.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fgmask_jax import config_lib, errors
from fgmask_jax.baselines import classifiers, eigenface, lbp, tiny_image, vgg_face
from fgmask_jax.data import labels as labels_lib
from fgmask_jax.data import pipeline, splits
from fgmask_jax.evaluation import metrics as metrics_lib
from fgmask_jax.evaluation import report as report_lib
from fgmask_jax.evaluation import writers


def feature_fn(config):
    """The method's jittable feature map: uint8[B, H, W, 3] -> float32[B, D].

    For Eigenface these are the pixels the PCA is fitted on (see `fold_features`).
    """
    method = config.method
    if method == "lbp":
        if config.lbp.variant == "study":
            return lambda x: lbp.study_histogram(x, config.lbp.sampling)
        if config.lbp.variant == "uniform":
            grid = tuple(int(g) for g in config.lbp.grid)
            return lambda x: lbp.uniform_grid_histogram(x, grid, config.lbp.sampling)
        raise ValueError(f"config.lbp.variant={config.lbp.variant!r}: use study or uniform")
    if method == "tiny_image":
        return lambda x: tiny_image.tiny_image(x, int(config.tiny_image.size))
    if method == "eigenface":
        return lambda x: eigenface.pixels(x, int(config.eigenface.pixels))
    if method == "vgg_face":
        if not config.get("init_weights"):
            raise ValueError(
                "config.init_weights is empty: the classical VGG-Face method needs a local "
                "weights file; without one configs/vgg_face.py gives the neural VGG-16"
            )
        params = jax.device_put(vgg_face.load_vgg_face(config.init_weights))
        return lambda x: vgg_face.fc7_features(params, x)
    raise ValueError(f"config.method={method!r} is not a classical method")


def extract(fn, images: np.ndarray, batch_size: int) -> np.ndarray:
    """fn over uint8[N, H, W, 3] in batches -> float32[N, D].

    The last batch is padded to ``batch_size``, so that every call has one compiled shape.
    """
    n = len(images)
    batch_size = max(1, min(batch_size, n))
    out = []
    for start in range(0, n, batch_size):
        chunk = images[start : start + batch_size]
        padded = pipeline.pad_rows(chunk, batch_size)
        out.append(np.asarray(jax.device_get(fn(jnp.asarray(padded))))[: len(chunk)])
    return np.concatenate(out).astype(np.float32)


def fold_features(config, train_x: np.ndarray, test_x: np.ndarray):
    """Per-fold step of the features: Eigenface fits its PCA on ``train_x`` only; others pass."""
    if config.method != "eigenface":
        return train_x, test_x
    pca = eigenface.fit_pca(train_x, int(config.eigenface.components), config.eigenface.whiten)
    return (np.asarray(eigenface.project(pca, train_x)),
            np.asarray(eigenface.project(pca, test_x)))


def folds(config, subject_ids: np.ndarray, is_test: np.ndarray):
    """(train, test) index pairs over all loaded examples for config.protocol."""
    if config.protocol == "lopo":
        return splits.person_folds(subject_ids, config.lopo_folds, config.split_seed)
    return [(np.flatnonzero(~is_test), np.flatnonzero(is_test))]


def _load(config) -> dict[str, np.ndarray]:
    """All images and labels the protocol uses, plus 'is_test' (bool[N]) and, where the
    dataset records it, 'photo_id' (int32[N])."""
    if config.protocol not in config_lib.PROTOCOLS:
        *others, last = config_lib.PROTOCOLS
        raise errors.ConfigError(
            f"config.protocol={config.protocol!r}: use {', '.join(others)} or {last}")
    names = pipeline.split_names("study" if config.protocol == "lopo" else config.protocol)
    parts = []
    for name, is_test in zip(names, (False, True), strict=True):
        source = pipeline.open_split(config.dataset, name, pipeline.data_dir(config))
        part = pipeline.load_all(source, np.arange(len(source)), config.image_size,
                                 config.workers)
        part["is_test"] = np.full(len(source), is_test)
        photo_ids = pipeline.read_labels(source).get("photo_id")
        if photo_ids is not None:
            part["photo_id"] = photo_ids
        elif config.protocol == "photo":
            raise ValueError(
                f"protocol=photo: {config.dataset} records no photo_id (its copies of one "
                "photo are not known); use data=synthetic_paired, fgnet_mask or fgnet_paired")
        parts.append(part)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def run_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the classical method ``config.method`` and reports on the test examples.

    Returns {"test": {task: summary (metrics.summarize)}, "selection": {task:
    [{"params", "cv_score", "num_folds"} per fold]}, "folds": int}.
    """
    is_main = jax.process_index() == 0
    writers.write_config(workdir, config)
    if config.get("runlocal"):
        logging.info("runlocal: a shrunk run for a laptop CPU (image_size=%d)", config.image_size)

    t0 = time.perf_counter()
    data = _load(config)
    logging.info("%s/%s: %d images (%d test) decoded in %.1fs", config.dataset, config.protocol,
                 len(data["is_test"]), data["is_test"].sum(), time.perf_counter() - t0)
    t0 = time.perf_counter()
    features = extract(feature_fn(config), data["image"], config.batch_size)
    logging.info("%s features %s in %.1fs", config.method, features.shape,
                 time.perf_counter() - t0)

    fold_list = folds(config, data["subject_id"], data["is_test"])
    predictions = {t: np.full(len(features), -1, np.int64) for t in config.tasks}
    predicted = np.zeros(len(features), bool)
    selection = {t: [] for t in config.tasks}
    for k, (train_ix, test_ix) in enumerate(fold_list):
        train_x, test_x = fold_features(config, features[train_ix], features[test_ix])
        for task in config.tasks:
            fitted = classifiers.fit_classifier(
                config.classifier, train_x, data[task][train_ix], data["subject_id"][train_ix],
                protocol=config.protocol, grid=tuple(config.grid), num_folds=config.cv_folds,
                seed=config.split_seed,
                photo_ids=data["photo_id"][train_ix] if "photo_id" in data else None,
            )
            predictions[task][test_ix] = fitted.model.predict(test_x)
            params = {n: np.asarray(v).item() for n, v in fitted.params.items()}
            selection[task].append({"params": params, "cv_score": fitted.cv_score,
                                    "num_folds": fitted.num_folds})
        predicted[test_ix] = True
        logging.info("fold %d/%d: %d train, %d test", k + 1, len(fold_list), len(train_ix),
                     len(test_ix))
    tested = predicted if config.protocol == "lopo" else data["is_test"]
    results = {
        task: metrics_lib.summarize(data[task][tested], predictions[task][tested],
                                    len(labels_lib.TASKS[task]))
        for task in config.tasks
    }
    if is_main:  # predictions before results.json: a finished run has both
        writers.write_predictions(os.path.join(workdir, "predictions.npz"), {
            "index": data["index"][tested], "subject_id": data["subject_id"][tested],
            **{f"label_{t}": data[t][tested] for t in config.tasks},
            **{f"pred_{t}": predictions[t][tested] for t in config.tasks}}, config.tasks)
        _write(config, workdir, results, selection, len(fold_list))
    logging.info("Test metrics (%s):\n%s", describe(config), report_lib.format_table(results))
    return {"test": results, "selection": selection, "folds": len(fold_list)}


def describe(config) -> str:
    """The method and its features in words, e.g. 'Tiny Image (16x16)'."""
    if config.method == "lbp":
        return (f"LBP ({config.lbp.variant} histogram, {config.lbp.sampling} sampling"
                + (f", {config.lbp.grid[0]}x{config.lbp.grid[1]} cells)"
                   if config.lbp.variant == "uniform" else ")"))
    if config.method == "tiny_image":
        return f"Tiny Image ({config.tiny_image.size}x{config.tiny_image.size})"
    if config.method == "eigenface":
        return (f"Eigenface ({config.eigenface.components} components of "
                f"{config.eigenface.pixels}x{config.eigenface.pixels} pixels"
                + (", whitened)" if config.eigenface.whiten else ")"))
    return f"VGG-Face fc7 (pretrained weights from {os.path.basename(config.init_weights)})"


def _most_chosen(selection: list[dict]) -> str:
    """'C=0.1' (one fold) or 'C=0.1 in 4 of 5 folds': the most frequent choice over folds."""
    choices = [", ".join(f"{n}={v:g}" for n, v in s["params"].items()) or "constant"
               for s in selection]
    best = max(set(choices), key=choices.count)
    return best if len(choices) == 1 else f"{best} in {choices.count(best)} of {len(choices)} folds"


def _write(config, workdir: str, results: dict, selection: dict, num_folds: int) -> None:
    writers.write_json(os.path.join(workdir, "results.json"),
                       {"test": results, "selection": selection, "folds": num_folds})
    writer = writers.MetricWriter(workdir)
    writer.write(0, {f"test/{k}_{t}": r[k] for t, r in results.items()
                     for k in ("accuracy", "balanced_accuracy", "macro_f1")})
    writer.close()
    chosen = "; ".join(f"{t}: {_most_chosen(sel)}" for t, sel in selection.items())
    protocol = (f"leave-persons-out over {num_folds} folds of persons, predictions pooled"
                if config.protocol == "lopo" else f"the {config.protocol} split")
    name = "k-NN" if config.classifier == "knn" else "logistic regression"
    grouped = ("grouped by person" if config.protocol in classifiers.SUBJECT_DISJOINT
               else "grouped by photo" if config.protocol in classifiers.PHOTO_DISJOINT
               else "stratified")
    report_lib.write_report(
        workdir,
        f"{describe(config)} on {config.dataset}, protocol={config.protocol}",
        {"test": results},
        notes=[
            f"tasks: {', '.join(config.tasks)}; image size {config.image_size}; {protocol}",
            f"classifier: {name} per task, chosen by {config.cv_folds}-fold cross-validation "
            f"({grouped}) on the training images only: {chosen}",
            "no loss: a classifier on fixed features has none (the table shows nan)",
            "majority rate: the accuracy of always answering the most frequent true class",
        ],
    )

