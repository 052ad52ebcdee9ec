"""Honest numbers for a fitted pipeline: held-out metrics, cross-validation, feature importance.

Test metrics are computed on rows the pipeline never saw, with the very object that is saved as
the artifact (reloaded from its skops bytes by the caller). Cross-validated scores come from the
training part only and are reported as mean and standard deviation, so that a difference between
two models can be judged against the spread between folds.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from sklearn.inspection import permutation_importance
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.pipeline import Pipeline

SCORING: dict[str, str] = {"macro_f1": "f1_macro", "balanced_accuracy": "balanced_accuracy"}
"""Cross-validation scores, by metrics.json name -> scikit-learn scorer; the search refits on the first."""

TOP_FEATURES = 20
PERMUTATION_ROWS = 500
PERMUTATION_SECONDS = 5.0  # the time permutation importance aims for
MAX_PERMUTATION_REPEATS = 5


@contextmanager
def classes_absent_quietly() -> Iterator[None]:
    """Silence scikit-learn's "y_pred contains classes not in y_true" (joblib workers included).

    A class absent from the rows scored is normal for a time split of few videos, which often
    ends in one movement; the metrics say so themselves (the ROC-AUC note names the class), so
    the warning would only bury train's own lines.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        yield


def held_out_metrics(model: Pipeline, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1, ROC-AUC, MCC, per-class scores and the confusion matrix."""
    labels = [str(c) for c in model.classes_]
    predicted = model.predict(X)
    roc_auc, roc_note = _roc_auc(y, model.predict_proba(X), labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, predicted, labels=labels, zero_division=0
    )
    with classes_absent_quietly():
        balanced = float(balanced_accuracy_score(y, predicted))
    return {
        "accuracy": float(accuracy_score(y, predicted)),
        "balanced_accuracy": balanced,
        "macro_f1": float(f1_score(y, predicted, labels=labels, average="macro", zero_division=0)),
        "roc_auc": roc_auc,
        "roc_auc_note": roc_note,
        "mcc": float(matthews_corrcoef(y, predicted)),
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": {
            "labels": labels,
            "rows": "true label",
            "columns": "predicted label",
            "matrix": confusion_matrix(y, predicted, labels=labels).tolist(),
        },
    }


def _roc_auc(y: np.ndarray, proba: np.ndarray, labels: list[str]) -> tuple[float | None, str | None]:
    """Binary ROC-AUC, or one-vs-rest macro ROC-AUC; None and the reason when it is undefined."""
    absent = [label for label in labels if label not in set(y.tolist())]
    if absent:
        return None, f"undefined: class {', '.join(absent)} absent from the test split"
    if len(labels) == 2:
        return float(roc_auc_score(y == labels[1], proba[:, 1])), None
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=labels)), None


def cv_summary(scores: dict[str, np.ndarray], source: str) -> dict[str, Any]:
    """Mean, standard deviation and per-fold values of each :data:`SCORING` score."""
    summary: dict[str, Any] = {"folds": len(next(iter(scores.values()))), "source": source}
    for name, values in scores.items():
        values = np.asarray(values, dtype=float)
        summary[name] = {"mean": float(values.mean()), "std": float(values.std()), "folds": values.tolist()}
    return summary


def feature_importance(
    model: Pipeline, X: np.ndarray, y: np.ndarray, columns: tuple[str, ...], seed: int
) -> dict[str, Any]:
    """The top features and how their importance was measured.

    The classifier's own ``feature_importances_`` or ``coef_`` are free; otherwise permutation
    importance on a sample of the test rows. Its cost is one prediction per feature and repeat,
    and a prediction costs very different times per model (a 20-class gradient boosting walks
    2,000 trees), so the repeats are chosen from one timed prediction to stay near
    :data:`PERMUTATION_SECONDS`; when even one repeat would take four times that, it is skipped
    and the report says why. Coefficients are comparable across features because the pipeline
    standardizes them first.
    """
    classifier = model[-1]
    if hasattr(classifier, "feature_importances_"):
        values, method = (
            np.asarray(classifier.feature_importances_),
            "impurity decrease (feature_importances_)",
        )
    elif hasattr(classifier, "coef_"):
        values, method = np.abs(classifier.coef_).mean(axis=0), "mean |coefficient| on standardized features"
    else:
        rows = np.random.default_rng(seed).permutation(len(y))[:PERMUTATION_ROWS]
        repeats, one_repeat = _affordable_repeats(model, X[rows], len(columns))
        if not repeats:
            note = f"skipped: permutation importance would take {one_repeat:.0f} s per repeat"
            return {"method": None, "note": note, "top": []}
        result = permutation_importance(
            model, X[rows], y[rows], scoring="f1_macro", n_repeats=repeats, random_state=seed
        )
        values = result.importances_mean
        method = f"permutation: mean drop in macro F1 on {len(rows)} held-out rows, {repeats} repeat(s)"
    order = np.argsort(-values, kind="stable")[:TOP_FEATURES]
    return {"method": method, "note": None, "top": [[columns[i], float(values[i])] for i in order]}


def _affordable_repeats(model: Pipeline, X: np.ndarray, features: int) -> tuple[int, float]:
    """Permutation repeats that fit :data:`PERMUTATION_SECONDS` (0: unaffordable), and one repeat's cost."""
    start = time.perf_counter()
    model.predict(X)
    one_repeat = (time.perf_counter() - start) * features
    if one_repeat > 4 * PERMUTATION_SECONDS:
        return 0, one_repeat
    return int(np.clip(PERMUTATION_SECONDS // one_repeat, 1, MAX_PERMUTATION_REPEATS)), one_repeat


def summary_table(metrics: dict[str, Any]) -> str:
    """The short table ``train`` prints at the end."""

    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    rows = [
        ("accuracy", number(metrics["accuracy"])),
        ("balanced accuracy", number(metrics["balanced_accuracy"])),
        ("macro F1", number(metrics["macro_f1"])),
        (
            "ROC-AUC",
            number(metrics["roc_auc"])
            + (f"  ({metrics['roc_auc_note']})" if metrics["roc_auc_note"] else ""),
        ),
        ("MCC", number(metrics["mcc"])),
    ]
    cv = metrics["cv"]
    if cv is None:
        rows.append(("CV macro F1", "not run (--cv 0)"))
    else:
        f1 = cv["macro_f1"]
        rows.append(
            ("CV macro F1", f"{f1['mean']:.4f} ± {f1['std']:.4f} ({cv['folds']} folds, training part)")
        )
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)
