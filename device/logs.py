"""Logs: structured JSON lines for the daemon, and the native libraries' chatter kept off stderr.

The daemon writes one JSON object per line on stdout, which journald and log shippers index.

MediaPipe's C++ (absl logging) and the TFLite interpreter write to file descriptor 2 directly:
``GPU suport is not available``, ``Created TensorFlow Lite XNNPACK delegate``, ``Feedback
manager requires a model with a single signature`` — at every pose graph and interpreter, in
every command. No setting reaches them: ``GLOG_minloglevel``, ``TF_CPP_MIN_LOG_LEVEL`` and
absl's flags were tried with mediapipe 0.10.18 and ai-edge-litert 2.3.0 and change nothing
(absl writes to stderr before ``absl::InitializeLog()``, which the wheels never call; TFLite's
minimal logger has no switch). So :func:`quiet_native_logs` filters descriptor 2 itself.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import time

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

NATIVE_CHATTER = re.compile(
    rb"[IW]\d{4} [\d:.]+ +\d+ [^ \]]+:\d+\] "  # absl INFO and WARNING: "I0000 00:00:17… 42 file.cc:85] "
    rb"|INFO: "  # TFLite's minimal logger: "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
)
"""Native lines that say nothing to a user; errors (``E…``, ``F…``, ``ERROR:``) still pass."""

_quieted = False


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra fields}``; exceptions as one string field."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str) -> None:
    """Send every log record to stdout as JSON lines at ``level``."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def quiet_native_logs() -> None:
    """Drop the native libraries' INFO and WARNING lines from stderr; keep everything else.

    Called first by every command started as a program (``device.cli.run_cli``), before
    MediaPipe or TFLite load. Descriptor 2 becomes a pipe read by a small forked process that
    forwards every line except :data:`NATIVE_CHATTER` to the real stderr. A process rather than
    a thread: a C++ fatal error writes its reason and aborts at once, and a reader inside the
    dying process would lose that line; the forwarder outlives it and exits when the last
    writer is gone. Python's own ``sys.stderr`` writes to the real stderr directly, so it stays
    a terminal where it was one (progress bars) and nothing of Python's output waits on the
    forwarder.

    Only for a process that is the command: when a host (pytest, an embedding program) has
    replaced ``sys.stderr``, its descriptors are left alone. Idempotent.
    """
    global _quieted
    if _quieted or sys.stderr is None or sys.stderr is not sys.__stderr__:
        return
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # the forwarder: its descriptor 2 is still the real stderr
        try:
            for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # it ends with its writers
                signal.signal(stop, signal.SIG_IGN)
            os.close(write_end)
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)  # holds no pipe a reader of stdout waits on
            _forward(read_end, 2)
        finally:
            os._exit(0)  # never run the parent's exit handlers or flush its buffers a second time
    os.close(read_end)
    real = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)
    stderr = sys.stderr
    sys.stderr = os.fdopen(real, "w", buffering=1, encoding=stderr.encoding, errors=stderr.errors)
    _quieted = True


def _forward(source: int, sink: int) -> None:
    """Copy lines from ``source`` to ``sink`` until end of file, without the native chatter."""
    pending = b""
    while chunk := os.read(source, 1 << 16):
        *lines, pending = (pending + chunk).split(b"\n")
        _write(sink, b"".join(line + b"\n" for line in lines if not NATIVE_CHATTER.match(line)))
    if pending and not NATIVE_CHATTER.match(pending):
        _write(sink, pending)


def _write(sink: int, data: bytes) -> None:
    """Write all of ``data``; when stderr is gone, keep draining the pipe so writers never block."""
    try:
        while data:
            data = data[os.write(sink, data) :]
    except OSError:
        pass
