"""Whole trainer runs that the demo, the tests and the benchmarks share.

Each runs the same commands a user types (through :func:`trainer.__main__.main`), so what they
exercise is exactly the product, not a shortcut around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PoseBundle:
    """A signed per-frame pose classifier and the files around it."""

    bundle: Path
    public_key: Path
    signing_key: Path
    run_dir: Path


def pose_bundle(
    table: Path, work: Path, *, version: str | None = None, extra_export: tuple[str, ...] = (), cv: int = 0
) -> PoseBundle:
    """keygen -> dataset (BODY-25 table) -> train -> export: a 20-pose classifier in ``work``.

    Logistic regression on angles, the seed preset and distances: about ten seconds here, and
    macro F1 ≈ 0.99 on the held-out poses.
    """
    keys, dataset, run, bundle = work / "keys", work / "poses.parquet", work / "run", work / "model.zip"
    steps = [
        ["dataset", "--body25", str(table), "--features", "angles,seed,distances", "--out", str(dataset)],
        [
            "train",
            "--dataset",
            str(dataset),
            "--target",
            "label",
            "--split",
            "stratified",
            "--cv",
            str(cv),
            "--out",
            str(run),
            "--overwrite",
        ],
        [
            "export",
            str(run),
            "--out",
            str(bundle),
            "--key",
            str(keys / "signing.key"),
            "--model-id",
            "poses",
            *(["--version", version] if version else []),
            *extra_export,
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
