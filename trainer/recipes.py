"""Whole trainer runs that the demo, the tests and the benchmarks share.

Each runs the same commands a user types (through :func:`trainer.__main__.main`), so what they
exercise is exactly the product, not a shortcut around it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PoseBundle:
    """A signed per-frame pose classifier and the files around it."""

    bundle: Path
    public_key: Path
    signing_key: Path
    run_dir: Path


FITNESS_ACTIVITIES = Path(__file__).resolve().parents[1] / "examples" / "fitness.activities.toml"
"""The squat and push-up activities (DESIGN.md §8) that :func:`fitness_bundle` signs into its bundle."""


def pose_bundle(
    table: Path, work: Path, *, version: str | None = None, extra_export: tuple[str, ...] = (), cv: int = 0
) -> PoseBundle:
    """keygen -> dataset (BODY-25 table) -> train -> export: a 20-pose classifier in ``work``.

    Logistic regression on angles, the seed preset and distances: about ten seconds here, and
    macro F1 ≈ 0.99 on the held-out poses.
    """
    return _table_bundle(
        ["--body25", str(table), "--features", "angles,seed,distances"],
        ["--split", "stratified", "--cv", str(cv)],
        extra_export,
        work,
        model_id="poses",
        version=version,
    )


def fitness_bundle(
    table: Path, work: Path, *, version: str | None = None, extra_export: tuple[str, ...] = ()
) -> PoseBundle:
    """keygen -> dataset (BlazePose table) -> train -> export with activities: a rep counter in ``work``.

    The four key poses of ML Kit's samples (``squats_up``/``down``, ``pushups_up``/``down``) on the
    kiosk's default features, so the model runs on the keypoints a kiosk computes itself; the
    activities of :data:`FITNESS_ACTIVITIES` turn its decisions into squats and push-ups counted.
    The split is ``auto`` (stratified: the rows are single poses); the mean over 0.3 s steadies
    the decisions over a few frames, well under the time a rep spends in either key pose.
    """
    return _table_bundle(
        ["--blazepose", str(table)],
        [],
        ["--activities", str(FITNESS_ACTIVITIES), "--smoothing", "mean:0.3", *extra_export],
        work,
        model_id="fitness",
        version=version,
    )


def _table_bundle(
    dataset: Sequence[str],
    train: Sequence[str],
    export: Sequence[str],
    work: Path,
    *,
    model_id: str,
    version: str | None,
) -> PoseBundle:
    """keygen -> dataset (a table of single poses, label column ``label``) -> train -> export -> verify.

    The recipes of tables differ only in the options each step takes; the files land in ``work``.
    """
    keys, table, run, bundle = work / "keys", work / "poses.parquet", work / "run", work / "model.zip"
    steps = [
        ["dataset", *dataset, "--out", str(table)],
        ["train", "--dataset", str(table), "--target", "label", *train, "--out", str(run), "--overwrite"],
        [
            *["export", str(run), "--out", str(bundle), "--key", str(keys / "signing.key")],
            *["--model-id", model_id, *(["--version", version] if version else []), *export],
        ],
        ["verify", str(bundle), "--pub", str(keys / "signing.pub")],
    ]
    _run_steps(steps, keys)
    return PoseBundle(bundle, keys / "signing.pub", keys / "signing.key", run)


def step_bundle(
    keypoints: Path, annotations: Path, labels: Path, work: Path, *, window: int = 10, stride: int = 2
) -> PoseBundle:
    """dataset (sliding windows of the seed's example) -> train -> export: a window-based model.

    ``keypoints`` holds ``example_video.frames.jsonl`` (30 frames/s), so the bundle's window is
    ``window`` frames at 30 frames/s and a kiosk resamples to that rate.
    """
    keys, dataset, run, bundle = work / "keys", work / "steps.parquet", work / "run", work / "steps.zip"
    sliding = ["--strategy", "sliding_window", "--window", str(window), "--stride", str(stride)]
    steps = [
        [
            *["dataset", "--keypoints", str(keypoints), "--annotations", str(annotations)],
            *["--labels", str(labels), *sliding, "--window-label", "step_type", "--out", str(dataset)],
        ],
        ["train", "--dataset", str(dataset), "--target", "step_type", "--cv", "0", "--out", str(run)],
        ["export", str(run), "--out", str(bundle), "--key", str(keys / "signing.key"), "--model-id", "steps"],
    ]
    _run_steps(steps, keys)
    return PoseBundle(bundle, keys / "signing.pub", keys / "signing.key", run)


def _run_steps(steps: list[list[str]], keys: Path) -> None:
    """Each trainer command in turn (a key pair first, unless ``keys`` has one); stop at a failure."""
    from trainer.__main__ import main as trainer

    if not (keys / "signing.key").exists():
        steps.insert(0, ["keygen", "--out", str(keys)])
    for step in steps:
        if trainer(step) != 0:
            raise RuntimeError(f"trainer {step[0]} failed (see its message above)")
