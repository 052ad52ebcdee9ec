"""The classifiers ``train`` can fit, their search spaces, and the one pipeline shape they live in.

Every model is the last step of the same pipeline, ``impute -> scale -> classify``, so that
cross-validation refits the imputer and scaler inside each fold (no statistics of the held-out
rows leak into training) and the device runs one object. Only stock scikit-learn estimators are
used: the device loads the artifact with skops and an explicit list of trusted types, and must
never need to import trainer code to do so.

Balancing is a sampler step placed between the scaler and the classifier of an imbalanced-learn
``Pipeline``: imbalanced-learn applies samplers in ``fit`` only, so they touch the training rows of
each fold and never a validation or test row. Samplers do nothing at prediction time, so
:func:`deployable` removes them, and the remaining fitted steps form a plain scikit-learn
``Pipeline`` that predicts exactly what the fitted imbalanced-learn pipeline predicts. That plain
pipeline is what gets evaluated on the test split and saved.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from imblearn.base import BaseSampler
from imblearn.over_sampling import SMOTE, RandomOverSampler
from imblearn.pipeline import Pipeline as SamplingPipeline
from imblearn.under_sampling import RandomUnderSampler
from scipy.stats import loguniform, randint, uniform
from sklearn.base import ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

IMPUTE, SCALE, BALANCE, CLASSIFY = "impute", "scale", "balance", "classify"
"""Step names of every pipeline; search parameters are addressed as ``classify__<name>``."""

SMOTE_NEIGHBORS = 5


@dataclass(frozen=True)
class ModelChoice:
    """One ``--model``: how to build it, what ``--search random`` samples, what skops must trust.

    Its name and the line ``--help`` gives it are in :data:`trainer.train_options.MODEL_SUMMARIES`.
    """

    build: Callable[[int], ClassifierMixin]
    space: Mapping[str, Any]
    trusted: tuple[str, ...] = ()


MODELS: dict[str, ModelChoice] = {
    "logistic_regression": ModelChoice(
        lambda seed: LogisticRegression(max_iter=5000, random_state=seed),
        {"C": loguniform(1e-3, 1e2), "class_weight": [None, "balanced"]},
    ),
    "hist_gradient_boosting": ModelChoice(
        lambda seed: HistGradientBoostingClassifier(random_state=seed),
        {
            "learning_rate": loguniform(0.02, 0.3),
            "max_iter": randint(50, 300),
            "max_leaf_nodes": randint(8, 64),
            "min_samples_leaf": randint(5, 60),
            "l2_regularization": loguniform(1e-6, 1.0),
        },
        ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",),
    ),
    "gradient_boosting": ModelChoice(
        lambda seed: GradientBoostingClassifier(random_state=seed),
        {
            "n_estimators": randint(50, 300),
            "learning_rate": loguniform(0.02, 0.3),
            "max_depth": randint(2, 6),
            "subsample": uniform(0.6, 0.4),
        },
        ("sklearn.tree._tree.Tree",),
    ),
    "random_forest": ModelChoice(
        lambda seed: RandomForestClassifier(n_estimators=300, random_state=seed),
        {
            "n_estimators": randint(100, 500),
            "max_depth": [None, 10, 20, 40],
            "min_samples_leaf": randint(1, 10),
            "max_features": ["sqrt", "log2", 0.5],
        },
        ("sklearn.tree._tree.Tree",),
    ),
    # SVC(probability=True) is deprecated since scikit-learn 1.9; temperature scaling calibrates the
    # decision function without changing which class wins.
    "svm": ModelChoice(
        lambda seed: CalibratedClassifierCV(SVC(random_state=seed), method="temperature", ensemble=False),
        {"estimator__C": loguniform(0.1, 100.0), "estimator__gamma": loguniform(1e-4, 1e-1)},
        ("sklearn.calibration._CalibratedClassifier", "sklearn.calibration._TemperatureScaling"),
    ),
    # brute force: the artifact then holds no KD/ball tree, whose skops types depend on the data
    "knn": ModelChoice(
        lambda seed: KNeighborsClassifier(n_neighbors=5, weights="distance", algorithm="brute"),
        {"n_neighbors": randint(1, 40), "weights": ["uniform", "distance"], "p": [1, 2]},
    ),
    "mlp": ModelChoice(
        lambda seed: MLPClassifier(
            hidden_layer_sizes=(128, 64), early_stopping=True, max_iter=500, random_state=seed
        ),
        {
            "hidden_layer_sizes": [(64,), (128,), (128, 64), (256, 128)],
            "alpha": loguniform(1e-5, 1e-1),
            "learning_rate_init": loguniform(1e-4, 1e-2),
        },
        ("sklearn.neural_network._stochastic_optimizers.AdamOptimizer",),
    ),
}

TRUSTED_TYPES: tuple[str, ...] = tuple(
    sorted({"numpy.dtype", *(name for choice in MODELS.values() for name in choice.trusted)})
)
"""Every type beyond skops' defaults that a saved pipeline may hold; the device's list must match."""


def _smote(seed: int, smallest_class: int) -> BaseSampler:
    # SMOTE interpolates between a row and its k nearest neighbours of the same class
    return SMOTE(random_state=seed, k_neighbors=min(SMOTE_NEIGHBORS, smallest_class - 1))


BALANCERS: dict[str, Callable[[int, int], BaseSampler]] = {
    "upsample": lambda seed, _smallest: RandomOverSampler(random_state=seed),
    "downsample": lambda seed, _smallest: RandomUnderSampler(random_state=seed),
    "smote": _smote,
}
"""``--balance`` choices: (seed, rows of the smallest class in any training fold) -> sampler."""


def build_pipeline(model: str, seed: int, balance: str | None = None, smallest_class: int = 0) -> Pipeline:
    """The unfitted pipeline of ``model``: imputer, scaler, optional sampler, classifier.

    Median imputation is robust to the outliers that mis-detected joints produce;
    ``keep_empty_features`` keeps a column that is empty in training (as 0) instead of dropping
    it, so the column count seen by the scaler and a TFLite export stays the dataset's.
    """
    steps: list[tuple[str, Any]] = [
        (IMPUTE, SimpleImputer(strategy="median", keep_empty_features=True)),
        (SCALE, StandardScaler()),
    ]
    if balance is not None:
        steps.append((BALANCE, BALANCERS[balance](seed, smallest_class)))
    steps.append((CLASSIFY, MODELS[model].build(seed)))
    return SamplingPipeline(steps)


def search_space(model: str) -> dict[str, Any]:
    """``--search random`` distributions of ``model``, addressed to the classifier step."""
    return {f"{CLASSIFY}__{name}": values for name, values in MODELS[model].space.items()}


def deployable(fitted: Pipeline) -> Pipeline:
    """The fitted pipeline without its samplers, as a plain scikit-learn ``Pipeline``.

    Samplers only act during ``fit``; the remaining steps are the same fitted objects, so the
    result's predictions equal the input's.
    """
    return Pipeline([(name, step) for name, step in fitted.steps if not isinstance(step, BaseSampler)])


def classifier_params(pipeline: Pipeline) -> dict[str, Any]:
    """The classifier's hyperparameters as JSON values (nested estimators themselves left out)."""
    params: dict[str, Any] = {}
    for name, value in sorted(pipeline.named_steps[CLASSIFY].get_params(deep=True).items()):
        plain = _json_value(value)
        if plain is not _SKIP:
            params[name] = plain
    return params


_SKIP = object()


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalars from the search
        return value.item()
    if isinstance(value, tuple | list):
        items = [_json_value(v) for v in value]
        return _SKIP if any(v is _SKIP for v in items) else items
    return _SKIP
