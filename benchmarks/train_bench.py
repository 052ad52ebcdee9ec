"""Every ``train --model`` on the BODY-25 poses: accuracy, fit time, and what it costs the kiosk.

The rows are the 10,681 labelled poses of ``BodyPose_Dataset.csv`` (20 classes) with the features
the trainer's tests use (normalized BODY-25 joints, angles, distances, the seed preset); the split
is ``train``'s own stratified 80/20 split with seed 0, and each model is the exact pipeline
``train`` builds. Besides held-out macro F1, accuracy and fit seconds, two numbers that decide
whether a model suits the device: the latency of classifying one row (single-threaded, as the
kiosk classifies one window at a time) and the size of the skops artifact. Each model is read
against the default model (logistic regression) trained in the same run.

Run: ``python -m benchmarks train [--models NAME,...]`` (about eight minutes on two cores, seven of
them gradient boosting: 2,000 single-threaded trees for 20 classes; the table leaves it out).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import skops.io
from threadpoolctl import threadpool_limits

from benchmarks import command
from benchmarks.rows import Row, render_text
from benchmarks.samples import BODY25_TABLE
from device.features import FeatureEngine, FeatureSpec
from device.keypoints import BODY25_JOINTS, JOINT_INDEX, read_body25_table
from trainer.estimators import MODELS, build_pipeline, deployable
from trainer.evaluate import held_out_metrics
from trainer.examples import Examples
from trainer.splits import make_split
from trainer.train_options import DEFAULT_MODEL

SEED = 0
LATENCY_CALLS = 200
SLOW = ("gradient_boosting",)  # minutes of fitting; left out of the table run
TABLE_MODELS = tuple(m for m in MODELS if m not in SLOW)


def body25_examples() -> Examples:
    table = read_body25_table(BODY25_TABLE)
    engine = FeatureEngine(
        FeatureSpec(normalized=tuple(j for j in BODY25_JOINTS if j in JOINT_INDEX), presets=("seed",))
    )
    X = np.ascontiguousarray(engine.compute(table.points))
    return Examples(X, table.labels.astype(str), None, engine.names, 0)


def row_latency_ms(model, row: np.ndarray, calls: int = LATENCY_CALLS) -> float:
    """Median milliseconds of ``predict_proba`` on one row, on one thread."""
    with threadpool_limits(1):
        for _ in range(10):
            model.predict_proba(row)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            model.predict_proba(row)
            times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000


@dataclass(frozen=True)
class ModelNumbers:
    macro_f1: float
    accuracy: float
    fit_seconds: float
    row_ms: float
    size_mb: float


@dataclass(frozen=True)
class TrainNumbers:
    train_rows: int
    test_rows: int
    features: int
    classes: int
    models: dict[str, ModelNumbers]

    def rows(self) -> list[Row]:
        base = self.models[DEFAULT_MODEL]
        rows = []
        for name, m in self.models.items():
            baseline = f"the default, {DEFAULT_MODEL}"
            detail = f"{name} (fit {m.fit_seconds:.1f} s, {m.size_mb:.2f} MB)"
            rows.append(Row("train", f"held-out macro F1, {detail}", m.macro_f1, "", base.macro_f1, baseline))
            rows.append(Row("train", f"predict one row, {name}", m.row_ms, "ms", base.row_ms, baseline))
        return rows


def measure(models: tuple[str, ...] = tuple(MODELS), latency_calls: int = LATENCY_CALLS) -> TrainNumbers:
    """Fit and evaluate each model (the default one always, first: it is every row's baseline)."""
    examples = body25_examples()
    split = make_split(examples, "stratified", 0.2, 0, SEED)
    X_train, y_train = examples.X[split.train], examples.y[split.train]
    X_test, y_test = examples.X[split.test], examples.y[split.test]
    results = {}
    for name in dict.fromkeys((DEFAULT_MODEL, *models)):
        pipeline = build_pipeline(name, SEED)
        start = time.perf_counter()
        pipeline.fit(X_train, y_train)
        fit_seconds = time.perf_counter() - start
        model = deployable(pipeline)
        metrics = held_out_metrics(model, X_test, y_test)
        results[name] = ModelNumbers(
            macro_f1=metrics["macro_f1"],
            accuracy=metrics["accuracy"],
            fit_seconds=fit_seconds,
            row_ms=row_latency_ms(model, X_test[:1], latency_calls),
            size_mb=len(skops.io.dumps(model)) / 1e6,
        )
    return TrainNumbers(len(split.train), len(split.test), X_train.shape[1], len(np.unique(y_train)), results)


def main(argv: list[str] | None = None) -> int:
    parser = command("train", __doc__)
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        help=f"comma-separated, any of {', '.join(MODELS)} (default: all)",
    )
    args = parser.parse_args(argv)
    models = tuple(m for m in args.models.split(",") if m)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown model {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    numbers = measure(models)
    print(
        f"BODY-25 poses: {numbers.train_rows} training / {numbers.test_rows} held-out rows, "
        f"{numbers.features} features, {numbers.classes} classes (stratified split, seed {SEED})"
    )
    print(f"  {'model':<23} {'macro F1':>8} {'accuracy':>8} {'fit s':>7} {'row ms':>7} {'size MB':>8}")
    for name, m in numbers.models.items():
        print(
            f"  {name:<23} {m.macro_f1:>8.4f} {m.accuracy:>8.4f} {m.fit_seconds:>7.1f} "
            f"{m.row_ms:>7.2f} {m.size_mb:>8.2f}"
        )
    print()
    print(render_text(numbers.rows()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
