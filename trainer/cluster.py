"""Where ``trainer extract`` runs its videos: a local process pool or a Dask cluster.

Both are :class:`Backend` s that open a :class:`TaskRunner` with the same three verbs — submit a
task, wait for the ones that ended, collect the progress messages running tasks sent — so the
batch loop (skip finished videos, progress bar, failures, results) exists once, in
:mod:`trainer.extract`, whatever runs the work.

A task is a module-level function whose first argument is a :data:`Report`: calling it with
plain values (ints, strings) sends them to the client as one progress message. In the pool a
message travels on a multiprocessing queue; on Dask it is a worker event (``log_event``) that the
scheduler forwards to this client's topic subscription, so per-frame progress works across
machines without any shared state.

``dask`` and ``distributed`` are an optional extra (``pip install .[dask]``), imported only when a
Dask cluster is asked for.

A Dask scheduler runs whatever code its clients send on every worker, and the workers write the
training data: whoever reaches the scheduler owns both. So a scheduler on another machine is
reached over ``tls://`` with distributed's own mutual TLS (:class:`TlsFiles`: a CA of the
cluster's, and a client certificate and key it signed — the scheduler refuses clients without
one); plain ``tcp://`` beyond loopback is refused unless the user says ``insecure``.
"""

from __future__ import annotations

import ipaddress
import logging
import multiprocessing
import os
import queue
import re
import signal
import ssl
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

Report = Callable[..., None]
"""Sends one progress message (its arguments, msgpack-friendly plain values) to the client."""

DASK_EXTRA_HINT = "install the Dask extra: pip install .[dask]"


class ClusterError(Exception):
    """A cluster that cannot be used (extra missing, scheduler unreachable, no workers); one line."""


@dataclass(frozen=True)
class Finished:
    """A task that ended: the ticket :meth:`TaskRunner.submit` gave it, and its value or exception.

    ``error`` is set only when the infrastructure failed (a worker process died, the task was
    cancelled); a task that wants its own failures reported returns them as values.
    """

    ticket: int
    value: Any = None
    error: BaseException | None = None


class TaskRunner(Protocol):
    """Runs tasks on some workers until closed."""

    def submit(self, task: Callable[..., Any], *args: Any) -> int:
        """Start ``task(report, *args)`` on a worker; the returned ticket names it in :meth:`wait`."""
        ...

    def wait(self, timeout: float) -> list[Finished]:
        """The tasks that ended since the last call; waits up to ``timeout`` seconds for one."""
        ...

    def progress(self) -> list[tuple]:
        """The progress messages that arrived since the last call, oldest first per worker."""
        ...

    def close(self) -> None:
        """Cancel what has not started and release the workers this runner started."""
        ...


class Backend(Protocol):
    """Where tasks run: validated when built, started or connected only by :meth:`open`."""

    def open(self, tasks: int) -> TaskRunner:
        """A runner for ``tasks`` tasks; raises :class:`ClusterError` when it cannot start."""
        ...


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C back until the block ends, then raise KeyboardInterrupt.

    Starting a ``LocalCluster`` is not interruptible: interrupted half way, it cannot be closed
    (Dask's exit handler then fails with a traceback). Deferred, the interrupt arrives when the
    cluster is in hand and can be closed properly.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets it
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    try:
        yield
    except Exception:
        if received:  # the failure is the interrupt's doing (a worker process killed while starting)
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def prepare_worker_process() -> None:
    """Ctrl-C and native logging for a worker process this machine started (pool or LocalCluster).

    SIGINT kills the worker at once (default action, no traceback); the client sees Ctrl-C too
    and stops the batch, leaving ``.partial`` files that the next run redoes. MediaPipe and FFmpeg
    log from C++ straight to file descriptor 2 (GPU probes, "moov atom not found"), which would
    shred the client's progress bar in the same terminal, so descriptor 2 goes to /dev/null while
    Python's ``sys.stderr`` keeps the real one. Runs in the worker's main thread.
    """
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # e.g. under nohup: stay immune
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    python_stderr = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(python_stderr, "w", buffering=1)


class _FutureRunner:
    """The bookkeeping both runners share: futures of either kind call back when they end."""

    def __init__(self, messages: Any) -> None:
        self._messages = messages  # anything whose get_nowait() raises queue.Empty when drained
        self._futures: dict[int, Any] = {}
        self._ended: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._tickets = 0

    def _track(self, future: Any) -> int:
        ticket = self._tickets
        self._tickets += 1
        self._futures[ticket] = future
        future.add_done_callback(lambda _: self._ended.put(ticket))
        return ticket

    def wait(self, timeout: float) -> list[Finished]:
        try:
            tickets = [self._ended.get(timeout=timeout)]
        except queue.Empty:
            return []
        tickets += _drain(self._ended)
        finished = []
        for ticket in tickets:
            future = self._futures.pop(ticket)
            try:
                finished.append(Finished(ticket, future.result()))
            except Exception as exc:  # a worker died, the task was cancelled, the scheduler went away
                finished.append(Finished(ticket, error=exc))
        return finished

    def progress(self) -> list[tuple]:
        return [tuple(message) for message in _drain(self._messages)]


def _drain(source: Any) -> list:
    items = []
    while True:
        try:
            items.append(source.get_nowait())
        except queue.Empty:
            return items


# --------------------------------------------------------------------------- local process pool

# Each pool process's progress channel; set once by _init_pool_worker, because a multiprocessing
# queue can reach a spawned process only at its creation.
_pool_messages: multiprocessing.Queue | None = None


def _init_pool_worker(messages: multiprocessing.Queue) -> None:
    global _pool_messages
    _pool_messages = messages
    prepare_worker_process()


def _report_to_pool(*message: Any) -> None:
    if _pool_messages is not None:
        _pool_messages.put(message)


class _PoolRunner(_FutureRunner):
    def __init__(self, workers: int) -> None:
        # Spawned, not forked: MediaPipe's threads do not survive a fork.
        context = multiprocessing.get_context("spawn")
        self._queue = context.Queue()
        super().__init__(self._queue)
        self._pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_init_pool_worker, initargs=(self._queue,)
        )

    def submit(self, task: Callable[..., Any], *args: Any) -> int:
        return self._track(self._pool.submit(task, _report_to_pool, *args))

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)
        self._queue.close()


@dataclass(frozen=True)
class LocalPool:
    """Processes on this machine: ``workers`` of them (default one per core), never more than tasks."""

    workers: int | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")

    def open(self, tasks: int) -> TaskRunner:
        return _PoolRunner(min(self.workers or os.cpu_count() or 1, tasks))


# --------------------------------------------------------------------------- Dask


def _import_distributed() -> ModuleType:
    try:
        import distributed
    except ImportError as exc:
        raise ClusterError(f"Dask is not installed ({exc}); {DASK_EXTRA_HINT}") from exc
    return distributed


@dataclass(frozen=True)
class _EventReport:
    """A :data:`Report` for Dask tasks: a worker event on this batch's own topic.

    Events go over the worker's existing connection to the scheduler (batched, fire and forget),
    which forwards them to the subscribed client; the scheduler keeps only a bounded log of them.
    """

    topic: str

    def __call__(self, *message: Any) -> None:
        import distributed

        distributed.get_worker().log_event(self.topic, list(message))


class _DaskRunner(_FutureRunner):
    def __init__(self, client: Any, local_cluster: Any | None, quiet: ExitStack) -> None:
        super().__init__(queue.SimpleQueue())
        self._client, self._local_cluster, self._quiet = client, local_cluster, quiet
        # One topic per batch, so two batches on one shared cluster never see each other's progress.
        self._topic = f"movement-edge-extract-{uuid.uuid4().hex}"
        client.subscribe_topic(self._topic, self._on_event)

    def _on_event(self, event: tuple[float, Any]) -> None:  # runs in the client's event loop thread
        self._messages.put(event[1])  # event = (scheduler timestamp, message)

    def submit(self, task: Callable[..., Any], *args: Any) -> int:
        # pure=False: a task writes a file, so two submissions must never be merged into one.
        return self._track(self._client.submit(task, _EventReport(self._topic), *args, pure=False))

    def close(self) -> None:
        try:
            if self._futures:  # released futures are dropped by the scheduler unless already running
                self._client.cancel(list(self._futures.values()))
            self._client.unsubscribe_topic(self._topic)
        finally:
            try:
                self._client.close()
                if self._local_cluster is not None:
                    self._local_cluster.close()
            finally:
                self._quiet.close()


_ADDRESS = re.compile(
    r"local(?::(?P<workers>\d+))?"
    r"|(?P<scheme>tcp|tls)://(?P<host>[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>\d+)"
)
ADDRESS_FORMS = "local, local:N, tls://HOST:PORT or tcp://HOST:PORT"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """True for a loopback address (127.0.0.0/8, ::1) or the name ``localhost``, as written.

    A name is never resolved: what it resolves to can change, and an attacker may control it.
    (The provisioning tool decides the same way for kiosks.)
    """
    bare = host.strip("[]").lower().rstrip(".")
    if bare in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class TlsFiles:
    """This client's side of a cluster's mutual TLS: PEM files, any of them may come from Dask's
    own configuration (``distributed.comm.tls.ca-file``, ``…client.cert``, ``…client.key``)."""

    ca: Path | None = None  # the CA that signed the scheduler's and workers' certificates
    cert: Path | None = None  # this client's certificate, signed by a CA the scheduler trusts
    key: Path | None = None  # its key (may be appended to ``cert`` instead)

    def security(self, distributed: ModuleType) -> Any:
        """A ``distributed.Security`` requiring encryption; :class:`ValueError` naming what is missing.

        Without a CA and a certificate distributed would silently make no TLS context at all, and
        the connection would fail later with an obscure error: say it here instead.
        """
        given = {"tls_ca_file": self.ca, "tls_client_cert": self.cert, "tls_client_key": self.key}
        security = distributed.Security(
            require_encryption=True, **{name: str(path) for name, path in given.items() if path is not None}
        )
        required = {"--dask-ca": security.tls_ca_file, "--dask-cert": security.tls_client_cert}
        missing = [option for option, value in required.items() if not value]
        if missing:
            raise ValueError(
                f"tls:// needs {' and '.join(missing)} (or distributed.comm.tls.* in Dask's configuration)"
            )
        return security


@dataclass(frozen=True)
class DaskCluster:
    """A Dask cluster: a ``LocalCluster`` this process starts, or a running scheduler's address.

    A local cluster has ``workers`` worker processes (default one per core, never more than
    tasks), each with a single thread: MediaPipe runs its own threads and one graph per process
    is both the fastest and the safest arrangement. ``timeout`` bounds connecting to a remote
    scheduler and waiting for its first worker.
    """

    scheduler: str | None = None  # None: start a LocalCluster
    workers: int | None = None
    timeout: float = 10.0
    security: Any = None  # a distributed.Security for a tls:// scheduler

    @classmethod
    def from_address(
        cls, address: str, timeout: float = 10.0, tls: TlsFiles | None = None, insecure: bool = False
    ) -> DaskCluster:
        """``local``, ``local:N``, ``tls://HOST:PORT`` or ``tcp://HOST:PORT``, checked before anything starts.

        ``tls`` belongs to a ``tls://`` address (which needs a CA and a certificate from it or
        Dask's configuration); a ``tcp://`` address beyond loopback needs ``insecure``. Raises
        ValueError saying what is wrong, and :class:`ClusterError` when the Dask extra is not
        installed (so a batch never starts writing before finding out).
        """
        match = _ADDRESS.fullmatch(address)
        if not match:
            raise ValueError(f"expected {ADDRESS_FORMS}")
        if tls is not None and match["scheme"] != "tls":
            raise ValueError("--dask-ca, --dask-cert and --dask-key are for a tls:// scheduler")
        if insecure and (match["scheme"] != "tcp" or is_loopback(match["host"])):
            raise ValueError("--dask-insecure is for a tcp:// scheduler on another machine")
        if match["port"] is None:
            workers = None if match["workers"] is None else int(match["workers"])
            if workers == 0:
                raise ValueError("local:N needs at least 1 worker")
            _import_distributed()
            return cls(workers=workers, timeout=timeout)
        if not 1 <= int(match["port"]) <= 65535:
            raise ValueError(f"port {match['port']} is not between 1 and 65535")
        if match["scheme"] == "tcp" and not is_loopback(match["host"]) and not insecure:
            raise ValueError(
                "plain tcp:// to another machine lets anyone who reaches the scheduler run code on "
                "the workers, and the videos' keypoints cross the network readable; use tls:// with "
                "--dask-ca, --dask-cert and --dask-key, or give --dask-insecure"
            )
        distributed = _import_distributed()
        security = (tls or TlsFiles()).security(distributed) if match["scheme"] == "tls" else None
        return cls(scheduler=address, timeout=timeout, security=security)

    def open(self, tasks: int) -> TaskRunner:
        distributed = _import_distributed()
        quiet = ExitStack()
        # Dask logs what it retries and what it loses (with tracebacks); the batch reports the
        # outcome of every video itself, and the terminal belongs to its progress bar.
        quiet.enter_context(distributed.utils.silence_logging_cmgr(logging.CRITICAL))
        try:
            if self.scheduler is None:
                client, cluster = self._start_local(
                    distributed, min(self.workers or os.cpu_count() or 1, tasks)
                )
            else:
                client, cluster = self._connect(distributed), None
            return _DaskRunner(client, cluster, quiet)
        except BaseException:
            quiet.close()
            raise

    def _start_local(self, distributed: ModuleType, workers: int) -> tuple[Any, Any]:
        cluster = client = None
        try:
            with interrupts_deferred():
                cluster = distributed.LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,  # nobody looks at it during a batch, and it would need a port
                    silence_logs=logging.CRITICAL,
                )
                client = distributed.Client(cluster, set_as_default=False)
            client.run(prepare_worker_process)  # on each worker's event loop, i.e. its main thread
            return client, cluster
        except BaseException:
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()
            raise

    def _connect(self, distributed: ModuleType) -> Any:
        from distributed.comm.core import CommClosedError

        try:
            client = self._client_within_timeout(distributed)
        except CommClosedError as exc:  # the TLS or Dask handshake ended: not welcome, or not trusted
            if isinstance(exc.__cause__, ssl.SSLCertVerificationError):  # this side's verdict
                raise ClusterError("the scheduler's certificate is not signed by --dask-ca") from exc
            why = (
                "it does not accept --dask-cert" if self.security else "does it want tls:// and certificates?"
            )
            raise ClusterError(f"the scheduler closed the connection ({why})") from exc
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"no Dask scheduler answers there within {self.timeout:g} s") from exc
        try:
            client.wait_for_workers(1, timeout=self.timeout)
        except (OSError, TimeoutError) as exc:
            client.close()
            raise ClusterError(f"the scheduler has no workers (waited {self.timeout:g} s)") from exc
        return client

    def _client_within_timeout(self, distributed: ModuleType) -> Any:
        """``distributed.Client(scheduler)``, given up on after twice ``timeout`` (a TimeoutError).

        distributed bounds the TCP/TLS connect by ``timeout`` but then waits for the scheduler's
        handshake without any bound (distributed 2026.8, ``comm.core.connect``): a peer that
        accepts and never speaks would hang the batch for ever. So the client is made on a
        thread of its own; one that connects after all, too late, is closed there.
        """
        outcome: queue.SimpleQueue[Any] = queue.SimpleQueue()
        abandoned = threading.Event()

        def connect() -> None:
            try:
                client = distributed.Client(
                    self.scheduler, timeout=self.timeout, security=self.security, set_as_default=False
                )
            except BaseException as exc:  # handed to the caller, who raises it
                outcome.put(exc)
                return
            outcome.put(client)
            if abandoned.is_set():
                client.close()

        threading.Thread(target=connect, name="dask-connect", daemon=True).start()
        try:
            result = outcome.get(timeout=2 * self.timeout)
        except queue.Empty:
            abandoned.set()  # from now on the thread closes what it makes; what it made, closed here
            for late in _drain(outcome):
                if not isinstance(late, BaseException):
                    late.close()
            raise TimeoutError(f"no handshake from {self.scheduler}") from None
        if isinstance(result, BaseException):
            raise result
        return result
