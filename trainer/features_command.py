"""``python -m trainer features``: per-frame features of one keypoint file, or the feature list."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from device.cli import Command, ExitStatus, UsageError
from device.features import GROUPS, FeatureEngine, FeatureSpec, FeatureSpecError
from device.keypoints import read_keypoints

DESCRIPTION = """\
Compute the per-frame features of one keypoint file (a .frames.jsonl file or a seed folder of
keypoints-NNNN.json files) and write them as CSV: one row per frame, `frame_number` first, then
the feature columns in the spec's order. Missing joints give empty cells.

Examples:
  python -m trainer features walk.frames.jsonl --out walk.features.csv
  python -m trainer features walk.frames.jsonl --out walk.csv --groups angles,seed --z
  python -m trainer features walk.frames.jsonl --out walk.csv --spec spec.json
  python -m trainer features --list
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("keypoints", nargs="?", type=Path, help="a .frames.jsonl file or a seed folder")
    parser.add_argument("--out", type=Path, help="CSV file to write")
    parser.add_argument("--spec", type=Path, help="feature spec JSON file (as stored in bundles)")
    parser.add_argument(
        "--groups",
        help=f"comma-separated feature groups instead of --spec: {','.join(GROUPS)} "
        "(default: normalized,angles,distances)",
    )
    parser.add_argument("--z", action="store_true", help="use the z axis too (with --groups)")
    parser.add_argument("--decimals", type=int, default=6, help="decimal places in the CSV (default 6)")
    parser.add_argument("--list", action="store_true", help="print every feature name with its definition")


def _spec(args: argparse.Namespace) -> FeatureSpec:
    if args.spec and args.groups:
        raise UsageError("give either --spec or --groups, not both")
    try:
        if args.spec:
            return FeatureSpec.load(args.spec)
        if args.groups:
            return FeatureSpec.from_groups([g.strip() for g in args.groups.split(",") if g.strip()], z=args.z)
        if args.list:
            return FeatureSpec.from_groups(GROUPS, z=args.z)
        return FeatureSpec(z=args.z)
    except FeatureSpecError as exc:
        raise UsageError(f"--spec/--groups: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    spec = _spec(args)
    engine = FeatureEngine(spec)
    if args.list:
        width = max(len(name) for name in engine.names)
        for name, definition in engine.definitions():
            print(f"{name:<{width}}  {definition}")
        return ExitStatus.OK
    if args.keypoints is None or args.out is None:
        raise UsageError("give a keypoint file and --out OUT.csv (or --list)")
    if args.decimals < 0:
        raise UsageError("--decimals must be >= 0")
    if args.out.is_dir():
        raise UsageError(f"--out {args.out} is a folder; give a CSV file name")
    sequence = read_keypoints(args.keypoints)
    values = engine.compute(sequence.points)
    write_csv(args.out, ["frame_number", *engine.names], sequence.frame_numbers, values, args.decimals)
    print(f"wrote {len(sequence)} frames x {len(engine.names)} features to {args.out}")
    return ExitStatus.OK


def write_csv(path: Path, header: list[str], first: np.ndarray, values: np.ndarray, decimals: int) -> None:
    """Write an integer column and a float matrix as CSV, atomically; NaN becomes an empty cell."""
    partial = path.with_name(path.name + ".partial")
    rounded = np.round(values, decimals)
    try:
        with partial.open("w", encoding="utf-8", newline="") as handle:
            handle.write(",".join(header) + "\n")
            for key, row in zip(first.tolist(), rounded.tolist(), strict=True):
                cells = ["" if v != v else repr(v) for v in row]  # v != v only for NaN
                handle.write(f"{key},{','.join(cells)}\n")
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise UsageError(f"--out {path}: cannot write ({exc.strerror})") from exc


COMMAND = Command(
    description=DESCRIPTION,
    add_arguments=add_arguments,
    run=run,
)
