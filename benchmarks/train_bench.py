"""Every ``train --model`` on the BODY-25 poses: accuracy, fit time, and what it costs the kiosk.

The rows are the 10,681 labelled poses of ``BodyPose_Dataset.csv`` (20 classes) with the features
the trainer's tests use (normalized BODY-25 joints, angles, distances, the seed preset); the split
is ``train``'s own stratified 80/20 split with seed 0, and each model is the exact pipeline
``train`` builds. Besides held-out macro F1, accuracy and fit seconds, two numbers that decide
whether a model suits the device: the latency of classifying one row (single-threaded, as the
kiosk classifies one window at a time) and the size of the skops artifact.

Run: ``python -m benchmarks.train_bench`` (about eight minutes on two cores, seven of them
gradient boosting: 2,000 single-threaded trees for 20 classes).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import skops.io
from threadpoolctl import threadpool_limits

from device.features import FeatureEngine, FeatureSpec
from device.keypoints import BODY25_JOINTS, JOINT_INDEX, read_body25_table
from trainer.estimators import MODELS, build_pipeline, deployable
from trainer.evaluate import held_out_metrics
from trainer.train import Examples, make_split

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SEED = 0
LATENCY_CALLS = 200


def body25_examples() -> Examples:
    table = read_body25_table(DATA / "keypoints" / "BodyPose_Dataset.csv")
    engine = FeatureEngine(
        FeatureSpec(normalized=tuple(j for j in BODY25_JOINTS if j in JOINT_INDEX), presets=("seed",))
    )
    X = np.ascontiguousarray(engine.compute(table.points))
    return Examples(X, table.labels.astype(str), None, engine.names, 0)


def row_latency_ms(model, row: np.ndarray) -> float:
    """Median milliseconds of ``predict_proba`` on one row, on one thread."""
    with threadpool_limits(1):
        for _ in range(10):
            model.predict_proba(row)
        times = []
        for _ in range(LATENCY_CALLS):
            start = time.perf_counter()
            model.predict_proba(row)
            times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000


def main() -> dict[str, dict[str, float]]:
    examples = body25_examples()
    split = make_split(examples, "stratified", 0.2, 0, SEED)
    X_train, y_train = examples.X[split.train], examples.y[split.train]
    X_test, y_test = examples.X[split.test], examples.y[split.test]
    print(
        f"BODY-25 poses: {len(split.train)} training / {len(split.test)} held-out rows, "
        f"{X_train.shape[1]} features, {len(np.unique(y_train))} classes (stratified split, seed {SEED})"
    )
    print(f"  {'model':<23} {'macro F1':>8} {'accuracy':>8} {'fit s':>7} {'row ms':>7} {'size MB':>8}")
    results = {}
    for name in MODELS:
        pipeline = build_pipeline(name, SEED)
        start = time.perf_counter()
        pipeline.fit(X_train, y_train)
        fit_seconds = time.perf_counter() - start
        model = deployable(pipeline)
        metrics = held_out_metrics(model, X_test, y_test)
        results[name] = {
            "macro_f1": metrics["macro_f1"],
            "accuracy": metrics["accuracy"],
            "fit_seconds": fit_seconds,
            "row_ms": row_latency_ms(model, X_test[:1]),
            "size_mb": len(skops.io.dumps(model)) / 1e6,
        }
        r = results[name]
        print(
            f"  {name:<23} {r['macro_f1']:>8.4f} {r['accuracy']:>8.4f} {r['fit_seconds']:>7.1f} "
            f"{r['row_ms']:>7.2f} {r['size_mb']:>8.2f}",
            flush=True,
        )
    return results


if __name__ == "__main__":
    main()
