"""Classifiers on fixed features, with hyper-parameters chosen by cross-validation.

The folds are drawn from the training data only, and split it as the protocol
splits train from test. Under a subject-disjoint protocol (``subject``, ``lopo``)
they are grouped by person, so that validation, like the test, is on persons the
model never saw; under ``photo`` they are grouped by source photo, so that no
masked copy of a validation photo is fitted on (grouping by person would be
stricter than the test); under the study's protocol they are stratified over
images, as its random split is.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold, KFold, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

CLASSIFIERS = ("linear", "knn")
SUBJECT_DISJOINT = ("subject", "lopo")
PHOTO_DISJOINT = ("photo",)


@dataclasses.dataclass
class Fitted:
    """A fitted classifier and how it was chosen."""

    model: object  # a fitted scikit-learn estimator: .predict(float[N, D]) -> int[N]
    params: dict  # the chosen hyper-parameters, e.g. {"C": 0.1}
    cv_score: float  # mean validation accuracy of that choice (nan: no search)
    num_folds: int  # cross-validation folds used (0: no search)


def cv_folds(
    labels: np.ndarray,
    subject_ids: np.ndarray,
    protocol: str,
    num_folds: int,
    seed: int,
    photo_ids: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation (fit, validation) index pairs over one training set.

    Grouped by ``subject_ids`` (GroupKFold, shuffled by ``seed``) under the
    subject-disjoint protocols: no person is on both sides of a fold. Grouped by
    ``photo_ids`` under ``photo``: no photo's copies on both sides. Stratified
    by ``labels`` under ``study``. ``num_folds`` is lowered to what the data allow
    (persons or photos, or the smallest class); fewer than 2 gives no folds ([]).

    Raises:
      ValueError: an unknown protocol, or ``photo`` without ``photo_ids``.
    """
    labels, subject_ids = np.asarray(labels), np.asarray(subject_ids)
    x = np.zeros((len(labels), 1))
    if protocol in SUBJECT_DISJOINT + PHOTO_DISJOINT:
        if protocol in PHOTO_DISJOINT and photo_ids is None:
            raise ValueError("protocol 'photo' groups folds by photo: give photo_ids")
        groups = subject_ids if protocol in SUBJECT_DISJOINT else np.asarray(photo_ids)
        n = min(num_folds, len(np.unique(groups)))
        if n < 2:
            return []
        splitter = GroupKFold(n, shuffle=True, random_state=seed)
        return list(splitter.split(x, labels, groups=groups))
    if protocol != "study":
        raise ValueError(f"protocol {protocol!r}: use study, subject, photo or lopo")
    smallest = np.unique(labels, return_counts=True)[1].min()
    n = min(num_folds, len(labels))
    if smallest >= n:
        splitter = StratifiedKFold(n, shuffle=True, random_state=seed)
    else:  # a class too rare to appear in every fold
        splitter = KFold(n, shuffle=True, random_state=seed)
    return list(splitter.split(x, labels)) if n >= 2 else []


def make_classifier(kind: str, max_iter: int = 2000) -> tuple[Pipeline, str]:
    """An unfitted pipeline and the name of the hyper-parameter to search.

    "linear": standardised features into a multinomial logistic regression
    (grid over C). We take it over LinearSVC because it is one joint softmax
    model over the 3-4 classes rather than one-vs-rest, its lbfgs solver is
    deterministic and has no dual/primal choice to tune, and it gives
    probabilities for later calibration or fusion. "knn": k nearest neighbours
    on the features as they are (Tiny Image vectors are already centred and
    unit-norm, so Euclidean distance ranks as correlation does); grid over k.
    """
    if kind == "linear":
        clf = LogisticRegression(max_iter=max_iter)
        return Pipeline([("scale", StandardScaler()), ("clf", clf)]), "C"
    if kind == "knn":
        return Pipeline([("clf", KNeighborsClassifier())]), "n_neighbors"
    raise ValueError(f"classifier {kind!r} is not one of {CLASSIFIERS}")


def fit_classifier(
    kind: str,
    features: np.ndarray,
    labels: np.ndarray,
    subject_ids: np.ndarray,
    *,
    protocol: str,
    grid: tuple,
    num_folds: int,
    seed: int,
    photo_ids: np.ndarray | None = None,
) -> Fitted:
    """Chooses the hyper-parameter from ``grid`` by cross-validated accuracy, refits on all.

    features: float[N, D]; labels, subject_ids (and photo_ids, needed under
    protocol ``photo``): int[N]. A training set with a single class gives the
    constant classifier (nothing else can be learned).
    """
    features, labels = np.asarray(features), np.asarray(labels)
    if len(np.unique(labels)) < 2:
        model = DummyClassifier(strategy="most_frequent").fit(features, labels)
        return Fitted(model, {}, float("nan"), 0)
    pipeline, name = make_classifier(kind)
    if kind == "knn":  # k cannot exceed the smallest fit part of a fold
        grid = tuple(k for k in grid if k <= max(1, len(labels) // 2)) or (1,)
    folds = cv_folds(labels, subject_ids, protocol, num_folds, seed, photo_ids)
    if not folds or len(grid) == 1:
        pipeline.set_params(**{f"clf__{name}": grid[0]}).fit(features, labels)
        return Fitted(pipeline, {name: grid[0]}, float("nan"), len(folds))
    search = GridSearchCV(
        pipeline, {f"clf__{name}": list(grid)}, cv=folds, scoring="accuracy", refit=True,
    )
    search.fit(features, labels)
    best = search.best_params_[f"clf__{name}"]
    return Fitted(search.best_estimator_, {name: best}, float(search.best_score_), len(folds))
