"""``python -m benchmarks [NAME] [OPTIONS]`` (``make bench``): one benchmark, or all of them as one table.

NAME is ``table`` (the default: every benchmark, one table) or one of ``features``, ``pose``,
``dataset``, ``seed``, ``train``, ``device``, ``memory``, ``load``, ``extract``, ``replay``,
``activities``, ``people``, ``startup``; the options are that benchmark's
own (``--help``).
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS: dict[str, str] = {
    "table": "benchmarks.table",
    "features": "benchmarks.feature_bench",
    "pose": "benchmarks.pose_bench",
    "dataset": "benchmarks.dataset_bench",
    "seed": "benchmarks.seed_bench",
    "train": "benchmarks.train_bench",
    "device": "benchmarks.device_bench",
    "memory": "benchmarks.memory_bench",
    "load": "benchmarks.load_bench",
    "extract": "benchmarks.extract_bench",
    "replay": "benchmarks.replay_bench",
    "activities": "benchmarks.activity_bench",
    "people": "benchmarks.people_bench",
    "startup": "benchmarks.startup_bench",
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    name = args.pop(0) if args and not args[0].startswith("-") else "table"
    if name not in BENCHMARKS:
        print(
            f"python -m benchmarks: unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    return importlib.import_module(BENCHMARKS[name]).main(args)


if __name__ == "__main__":
    raise SystemExit(main())
