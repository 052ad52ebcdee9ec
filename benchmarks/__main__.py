"""``python -m benchmarks [NAME ...]`` (or ``make bench``): run the benchmarks and print their tables."""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS: dict[str, str] = {
    "features": "benchmarks.feature_bench",
    "pose": "benchmarks.pose_bench",
    "dataset": "benchmarks.dataset_bench",
    "train": "benchmarks.train_bench",
    "device": "benchmarks.device_bench",
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"any of {', '.join(BENCHMARKS)} (default: all)"
    )
    names = parser.parse_args().names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    for name in names:
        print(f"== {name} ==")
        importlib.import_module(BENCHMARKS[name]).main()
        print()


if __name__ == "__main__":
    main()
