"""Concurrent HTTP clients hammering one URL (``wrk`` when installed, else a Python fallback), and
live-view viewers reading an MJPEG stream (:func:`watch`).

``wrk`` (Debian package ``wrk``; ``make bench`` installs it) is a C load generator on epoll: it
keeps N keep-alive connections busy and costs the machine far less than the server it loads. The
fallback is N Python threads, each with its own keep-alive ``http.client`` connection, run in a
child process so they do not share an interpreter with whatever else the caller runs; being
bound by Python's GIL it offers less load than wrk, and results say which tool produced them.
The fallback can also check every body is valid JSON, which the functional test relies on.

Run on its own: ``python -m benchmarks.http_load URL --clients 50 --seconds 30 [--tool python]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

WRK_SCRIPT = Path(__file__).with_name("wrk_report.lua")
PYTHON_TOOL = "python http.client threads (fallback: wrk not installed)"


@dataclass(frozen=True)
class LoadResult:
    """What the clients saw; ``requests`` counts every response received, whatever its status."""

    tool: str
    clients: int
    seconds: float
    requests: int
    bad_status: int  # responses other than 200 (wrk: outside 2xx/3xx)
    connection_errors: int  # refused, reset, timed out: requests that got no response
    p50_ms: float
    p99_ms: float
    invalid_json: int = 0  # only counted when asked to check bodies
    statuses: dict[int, int] = field(default_factory=dict)  # the Python client only
    client_requests: list[int] = field(default_factory=list)  # responses per client; the Python client only

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def errors(self) -> int:
        return self.bad_status + self.connection_errors + self.invalid_json


def wrk(url: str, clients: int, seconds: float, threads: int = 1) -> LoadResult:
    """``wrk`` with ``clients`` connections on ``threads`` threads (1 leaves a core to the server)."""
    command = [
        "wrk", f"-t{min(threads, clients)}", f"-c{clients}", f"-d{max(1, round(seconds))}s",
        "--timeout", "10s", "-s", str(WRK_SCRIPT), url,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    summary = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
    return LoadResult(
        tool="wrk",
        clients=clients,
        seconds=summary["duration_us"] / 1e6,
        requests=summary["requests"],
        bad_status=summary["status"],
        connection_errors=sum(summary[k] for k in ("connect", "read", "write", "timeout")),
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
    )


class _Client(threading.Thread):
    """One keep-alive connection sending requests back to back until the deadline."""

    def __init__(self, url: urllib.parse.SplitResult, barrier: threading.Barrier, check_json: bool) -> None:
        super().__init__(name="load-client", daemon=True)
        self.url, self.barrier, self.check_json = url, barrier, check_json
        self.deadline = 0.0
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.connection_errors = 0
        self.invalid_json = 0

    def run(self) -> None:
        path = self.url.path or "/"
        self.barrier.wait()
        connection = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=10)
        while time.monotonic() < self.deadline:
            began = time.perf_counter()
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException):
                self.connection_errors += 1
                connection.close()  # the next request reconnects
                time.sleep(0.01)  # a refusing server is not hammered in a busy loop
                continue
            self.latencies.append(time.perf_counter() - began)
            self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
            if self.check_json and response.status == 200:
                try:
                    json.loads(body)
                except ValueError:
                    self.invalid_json += 1
        connection.close()


def hammer(url: str, clients: int, seconds: float, *, check_json: bool = False) -> LoadResult:
    """``clients`` threads in this process, started together, for ``seconds``; bounded by the deadline."""
    barrier = threading.Barrier(clients + 1)
    threads = [_Client(urllib.parse.urlsplit(url), barrier, check_json) for _ in range(clients)]
    for thread in threads:
        thread.start()
    began = time.monotonic()
    for thread in threads:
        thread.deadline = began + seconds
    barrier.wait()
    finished_by = began + seconds + 15  # a request in flight at the deadline ends within its timeout
    for thread in threads:
        thread.join(max(0.0, finished_by - time.monotonic()))
    elapsed = time.monotonic() - began
    statuses: dict[int, int] = {}
    for thread in threads:
        for status, count in thread.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    latencies = [s for thread in threads for s in thread.latencies] or [float("nan")]
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    return LoadResult(
        tool=PYTHON_TOOL,
        clients=clients,
        seconds=elapsed,
        requests=sum(statuses.values()),
        bad_status=sum(count for status, count in statuses.items() if status != 200),
        connection_errors=sum(t.connection_errors for t in threads),
        p50_ms=float(p50),
        p99_ms=float(p99),
        invalid_json=sum(t.invalid_json for t in threads),
        statuses=statuses,
        client_requests=[len(t.latencies) for t in threads],
    )


@dataclass(frozen=True)
class WatchResult:
    """What live-view viewers received: JPEG parts of the multipart stream, and connections that failed."""

    viewers: int
    seconds: float
    parts: list[int]  # per viewer
    refused: int  # viewers answered with anything but 200, or not at all

    @property
    def parts_per_s(self) -> float:
        """Parts per second per viewer (the stream sends at most 10)."""
        return sum(self.parts) / self.viewers / self.seconds


def _watch_one(url: urllib.parse.SplitResult, deadline: float, parts: list[int], index: int) -> bool:
    """One viewer reading ``url``'s parts until ``deadline``; False when refused."""
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        connection.request("GET", url.path)
        response = connection.getresponse()
        if response.status != 200:
            return False
        while time.monotonic() < deadline:
            line = response.readline()
            if not line:
                break
            if line.startswith(b"Content-Length:"):
                response.readline()  # the blank line after the part's headers
                response.read(int(line.split(b":")[1]))
                parts[index] += 1
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def watch(url: str, viewers: int, seconds: float) -> WatchResult:
    """``viewers`` threads each reading the MJPEG stream at ``url`` for ``seconds``.

    Threads are enough here: a viewer receives at most 10 parts a second, unlike a status client.
    """
    parts = [0] * viewers
    outcomes: list[bool] = []
    began = time.monotonic()
    split = urllib.parse.urlsplit(url)

    def run(index: int) -> None:
        outcomes.append(_watch_one(split, began + seconds, parts, index))

    threads = [threading.Thread(target=run, args=(i,), name="viewer", daemon=True) for i in range(viewers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    return WatchResult(viewers, time.monotonic() - began, parts, outcomes.count(False))


def load(url: str, clients: int, seconds: float, tool: str = "auto") -> LoadResult:
    """wrk if installed (or asked for), else the Python clients in a child process of their own."""
    if tool == "wrk" or (tool == "auto" and shutil.which("wrk")):
        return wrk(url, clients, seconds)
    command = [
        sys.executable,
        "-m",
        "benchmarks.http_load",
        url,
        f"--clients={clients}",
        f"--seconds={seconds}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 90, check=True)
    fields = json.loads(done.stdout)
    fields["statuses"] = {int(k): v for k, v in fields["statuses"].items()}
    return LoadResult(**fields)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http_load", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--tool", choices=("python", "wrk"), default="python")
    args = parser.parse_args(argv)
    if args.tool == "wrk":
        result = wrk(args.url, args.clients, args.seconds)
    else:
        result = hammer(args.url, args.clients, args.seconds, check_json=True)
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
