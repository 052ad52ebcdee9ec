"""``trainer train`` as its user meets it: the options, their choices and the help.

Kept apart from :mod:`trainer.train`, which imports scikit-learn, pandas and matplotlib at once:
``trainer train --help`` (and a mistyped option) should answer in a blink, not in seconds. The
names here are the ones the training code is keyed by (:data:`trainer.estimators.MODELS`,
:data:`trainer.estimators.BALANCERS`, :func:`trainer.splits.make_split`); a test keeps them equal.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from device.cli import Command, lazy
from trainer import tracking

BUNDLE_FILE = "bundle.zip"
"""The signed bundle ``--key`` writes into the run directory."""

MODEL_SUMMARIES: dict[str, str] = {
    "logistic_regression": "multinomial logistic regression: fast, small, calibrated; exports to TFLite",
    "hist_gradient_boosting": (
        "histogram gradient boosting: strong on non-linear data; a tree per class and round"
    ),
    "gradient_boosting": "classic gradient boosting: slow to fit and large with many classes",
    "random_forest": "random forest: robust untuned; large artifact, slow per row",
    "svm": "RBF support vector machine with temperature-scaled probabilities",
    "knn": "k nearest neighbours, distance-weighted; the artifact holds every training row",
    "mlp": "two-layer neural network with early stopping; exports to TFLite",
}
"""``--model`` choices and the line each gets in ``--help``."""
DEFAULT_MODEL = "logistic_regression"
BALANCE_CHOICES: tuple[str, ...] = ("upsample", "downsample", "smote")
SPLITS: tuple[str, ...] = ("auto", "group", "time", "stratified", "random")


DESCRIPTION = f"""\
Train one classifier on a dataset file (written by `python -m trainer dataset`) and evaluate it
on held-out rows. RUN_DIR receives model.skops (the fitted imputer -> scaler -> classifier
pipeline, which `export` bundles for the device), run.json, test_rows.npz, metrics.json and a
self-contained report.html. Rows without a target label are dropped (and counted); missing
feature values are imputed inside the pipeline, never dropped.

How rows are held out (--split, default auto). The rows of one video are near-copies of each
other (neighbouring frames, overlapping windows, the same person, light and camera). When some of
them are in the training part and their neighbours in the test part, the test measures recognition
of that video, not of the movement, and every metric comes out too high.
  group       each video_id wholly on one side (StratifiedGroupKFold: 1/round(1/TEST_SIZE) of the
              videos, class mix balanced), cross-validated by video too: the numbers predict what
              a kiosk will see with a new person. Needs round(1/TEST_SIZE) videos (5 at 0.2).
  time        with fewer videos: within each video, train on the first 1 - TEST_SIZE of its rows
              in frame order and test on the last TEST_SIZE, leaving out the rows between whose
              frames overlap the held-out ones (a window's length), so no frame is on both sides.
              Cross-validation chains forward within each video (fit on earlier blocks, score the
              next one). Honest where stratified is not: every score is on moments the model never
              saw, after a gap, as a kiosk meets the future; but they are the same people, so
              train says that the scores do not yet speak for new ones.
  stratified  rows drawn at random with the class mix kept (random: without); right for single
              examples such as BODY-25 poses, optimistic for videos, and train says so.
auto takes group when there are enough videos, else time when rows have frame ranges, else
stratified; run.json records the kind and why, metrics.json and report.html the warning.

Models (--model, default {DEFAULT_MODEL}):
{chr(10).join(f"  {name:<23} {summary}" for name, summary in MODEL_SUMMARIES.items())}
The default is logistic regression. On the BODY-25 poses (benchmarks/train_bench.py) it is as
accurate as the tree ensembles (within two of 2,137 held-out rows), fits in about a second, and
classifies one row in 0.4 ms against 12 ms for 20-class histogram gradient boosting (2,000 trees
per row) in a 60 KB artifact instead of 13 MB; its probabilities are calibrated, which the device's
confidence threshold relies on, and it exports to TFLite. The pipeline imputes before every model,
so gradient boosting's native NaN handling brings nothing here. For non-linear targets compare with
--model hist_gradient_boosting: each run prints its cross-validated macro F1 as mean ± std.

Examples:
  python -m trainer train --dataset steps.parquet --target step_type --out runs/steps
  python -m trainer train --dataset steps.parquet --target weight_transfer_type --out runs/wt \\
      --value-map "Successful Weight Transfer=ok,Failure Weight Transfer=fail" --balance smote
  python -m trainer train --dataset poses.csv --target label --out runs/poses --split stratified \\
      --model hist_gradient_boosting --search random --iterations 20 --drop "seed.*"
  python -m trainer train --dataset poses.csv --target label --out runs/poses --overwrite --cv 0

Signed bundle and MLflow (optional extra: pip install .[mlflow]):
  --key FILE signs and exports the model into RUN_DIR/bundle.zip exactly as `export RUN_DIR --key
  FILE` would (with --model-id, --version and --label-names; the decision options keep export's
  defaults, the threshold among them from the held-out rows). --mlflow logs the run: parameters,
  the dataset fingerprint (a tag and a dataset input), every number of metrics.json, and
  report.html, metrics.json, run.json as artifacts; with --key also the bundle, registered as a new
  version of --register NAME (default: the model id) and pointed at by --alias (default
  candidate). The store is --tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db
  (artifacts in ./mlruns; `mlflow ui` in the same folder shows them). RUN_DIR/mlflow.json records
  the run. Nothing is written, and the MLflow run is marked FAILED, if any of it fails.
  python -m trainer train --dataset poses.parquet --target label --split stratified --out runs/poses \\
      --mlflow --key keys/signing.key --model-id poses
  python -m trainer train --dataset steps.parquet --target step_type --out runs/steps --mlflow \\
      --tracking-uri http://mlflow.lan:5000 --experiment steps --key keys/signing.key --alias staging
  python -m provisioning push models:/poses@candidate --fleet fleet.toml --promote production
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", type=Path, required=True, help="dataset table: FILE.csv or FILE.parquet")
    parser.add_argument("--target", required=True, help="label column to predict")
    parser.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run directory to write")
    parser.add_argument(
        "--model", choices=tuple(MODEL_SUMMARIES), default=DEFAULT_MODEL, help=f"default {DEFAULT_MODEL}"
    )
    parser.add_argument("--value-map", metavar="OLD=NEW,...", help='rename or merge target values: "A=x,B=x"')
    parser.add_argument(
        "--drop", metavar="COLS", help="comma-separated feature columns (or glob patterns) to leave out"
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="auto",
        help="held-out split (default auto: group with enough videos, else time, else stratified)",
    )
    parser.add_argument(
        "--test-size", type=float, default=0.2, help="held-out fraction, 0 < x <= 0.5 (default 0.2)"
    )
    parser.add_argument("--balance", choices=BALANCE_CHOICES, help="resample the training rows only")
    parser.add_argument(
        "--search", choices=("random",), help="randomized hyperparameter search on the CV folds"
    )
    parser.add_argument(
        "--iterations", type=int, default=20, help="candidates of --search random (default 20)"
    )
    parser.add_argument(
        "--cv", type=int, default=5, metavar="K", help="cross-validation folds, 0 to skip (default 5)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of every split, sampler and model (default 0)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty RUN_DIR")
    bundle = parser.add_argument_group("signed bundle (as `export` makes it)")
    bundle.add_argument("--key", type=Path, help=f"sign and export the model into RUN_DIR/{BUNDLE_FILE}")
    bundle.add_argument("--model-id", help="model id on the devices (default: the target column)")
    bundle.add_argument("--version", help="bundle version (default: UTC time YYYY.MM.DD.HHMMSS)")
    bundle.add_argument(
        "--label-names", type=Path, metavar="FILE.toml", help="display names of the labels, as for `export`"
    )
    mlflow = parser.add_argument_group(f"MLflow tracking and registry ({tracking.EXTRA})")
    mlflow.add_argument("--mlflow", action="store_true", help="log the run (and register the bundle)")
    mlflow.add_argument(
        "--tracking-uri",
        metavar="URI",
        help=f"default $MLFLOW_TRACKING_URI, else sqlite:///./{tracking.STORE_FILE}",
    )
    mlflow.add_argument("--experiment", metavar="NAME", help="MLflow experiment (default: the model id)")
    mlflow.add_argument("--register", metavar="NAME", help="registered model name (default: the model id)")
    mlflow.add_argument(
        "--alias", metavar="ALIAS", help=f"alias of the new version (default {tracking.DEFAULT_ALIAS})"
    )


COMMAND = Command(
    description=DESCRIPTION,
    add_arguments=add_arguments,
    run=lazy("trainer.train:run"),
)
