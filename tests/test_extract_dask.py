"""``trainer extract --dask``: the same batches on real Dask clusters of worker processes.

Each result is compared with the local process pool's files for the same videos (the
``extracted`` fixture of ``test_extract``, two pool processes): MediaPipe on the CPU is
deterministic per video, so the frame files must be byte for byte the same whatever ran them.

A cluster on another machine is reached over distributed's mutual TLS: the tests run a real
``tls://`` scheduler whose certificates a CA made here signed, and clients with the right
certificate, one from another CA, and none.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import logging
import os
import pty
import re
import shutil
import socket
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from broker import free_port
from conftest import REPO, network_address
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from distributed import LocalCluster, Security
from test_extract import (
    DANCE,
    SQUATS,
    assert_usage_error,
    broken_videos,
    extracted,
    failure_lines,
    finished_squats_and_stale_dance,
)

from trainer.__main__ import main

__all__ = ["extracted"]  # the pool's output, as a fixture of this module too

FRAME_FILES = ["dance.frames.jsonl", "squats.frames.jsonl"]
# what extraction leaves in its folder: each video's frames and their columnar copy (whose header
# records the JSONL's modification time, so only the frames are compared byte for byte)
WRITTEN = sorted([*FRAME_FILES, "dance.frames.arrow", "squats.frames.arrow"])


def run_on_terminal(command: list[str], timeout: float) -> tuple[int, str, str]:
    """(status, stdout, what stderr drew) for ``command`` with stderr on a 120-column pseudo-terminal.

    A terminal is where the progress bar shows (tqdm stays quiet on a pipe) and where stray log
    lines from workers would land.
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    screen = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                return
            if not chunk:
                return
            screen.extend(chunk)

    reader = threading.Thread(target=read, name="pty-reader", daemon=True)
    reader.start()
    try:
        completed = subprocess.run(
            command,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            timeout=timeout,
        )
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    return completed.returncode, completed.stdout, screen.decode(errors="replace")


@pytest.fixture(scope="module")
def on_local_cluster(tmp_path_factory: pytest.TempPathFactory, task_path: Path) -> tuple[Path, int, str, str]:
    """Both videos extracted by the real command line on ``--dask local:2``, as seen on a terminal."""
    out = tmp_path_factory.mktemp("dask")
    command = [sys.executable, "-m", "trainer", "extract", str(SQUATS), str(DANCE), "--out", str(out)]
    command += ["--dask", "local:2", "--pose-model", str(task_path)]
    return out, *run_on_terminal(command, timeout=300)


def assert_same_files(out: Path, pool_out: Path, names: list[str]) -> None:
    for name in names:
        assert (out / name).read_bytes() == (pool_out / name).read_bytes(), f"{name} differs from the pool's"


def test_a_local_cluster_writes_the_same_files_as_the_process_pool(extracted, on_local_cluster) -> None:
    pool_out, pool_run = extracted
    out, status, stdout, screen = on_local_cluster
    assert pool_run.returncode == 0, pool_run.stderr
    assert status == 0, screen
    assert "2 done, 0 skipped, 0 failed; 167 frames" in stdout
    assert sorted(p.name for p in out.iterdir()) == WRITTEN
    assert_same_files(out, pool_out, FRAME_FILES)


def test_progress_counts_frames_and_the_terminal_shows_nothing_else(on_local_cluster) -> None:
    screen = on_local_cluster[3]
    counts = [(int(done), int(total)) for done, total in re.findall(r"(\d+)/(\d+) \[", screen)]
    assert counts and counts[-1] == (167, 167), screen
    per_video = {0, 65, 102, 167}  # what whole-video progress could show for these two videos
    assert {done for done, _ in counts} - per_video, "frames are counted as workers finish them"
    # Dask's logs, MediaPipe's native GPU probe and tracebacks would all land on this terminal
    for noise in ("distributed", "GPU", "WARNING", "Traceback"):
        assert noise not in screen


def test_a_broken_video_is_reported_by_name_and_the_others_finish(
    tmp_path: Path, extracted, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # no --pose-model: the workers build the offline model into their own cache
    cache = tmp_path / "cache"
    monkeypatch.setenv("MOVEMENT_EDGE_CACHE", str(cache))
    videos = tmp_path / "videos"
    videos.mkdir()
    for video in (SQUATS, DANCE):
        shutil.copy(video, videos)
    expected_failures = broken_videos(videos)
    out = tmp_path / "out"

    status = main(["extract", str(videos), "--out", str(out), "--dask", "local:2"])

    captured = capsys.readouterr()
    assert status == 1
    assert failure_lines(captured.err) == expected_failures
    assert "2 done, 0 skipped, 2 failed; 167 frames" in captured.out
    assert sorted(p.name for p in out.iterdir()) == WRITTEN
    assert_same_files(out, extracted[0], FRAME_FILES)
    assert [p.suffix for p in cache.iterdir()] == [".task"], "the workers built and cached the pose model"


@pytest.fixture
def scheduler() -> Iterator[str]:
    """A running Dask scheduler on 127.0.0.1 with two single-threaded worker processes."""
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.ERROR,
    ) as cluster:
        yield cluster.scheduler_address


def test_a_running_scheduler_resumes_a_batch(
    tmp_path: Path, extracted, scheduler: str, task_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    finished, _ = finished_squats_and_stale_dance(tmp_path, extracted[0])

    options = ["--dask", scheduler, "--pose-model", str(task_path)]
    status = main(["extract", str(SQUATS), str(DANCE), "--out", str(tmp_path), *options])

    assert status == 0
    assert "1 done, 1 skipped, 0 failed; 102 frames" in capsys.readouterr().out
    assert finished.stat().st_mtime_ns == 1_000_000_000, "a finished file is left alone"
    # no .partial left; the skipped video gets no columnar copy (trainer keypoints-cache makes it)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*FRAME_FILES, "dance.frames.arrow"])
    assert_same_files(tmp_path, extracted[0], FRAME_FILES)


def test_finished_videos_are_skipped_before_any_cluster_is_contacted(
    tmp_path: Path, extracted, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in FRAME_FILES:
        shutil.copy(extracted[0] / name, tmp_path)
    nobody = f"tcp://127.0.0.1:{free_port()}"

    status = main(["extract", str(SQUATS), str(DANCE), "--out", str(tmp_path), "--dask", nobody])

    assert status == 0
    assert "0 done, 2 skipped, 0 failed; 0 frames" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            ["--dask", "cluster"],
            "--dask cluster: expected local, local:N, tls://HOST:PORT or tcp://HOST:PORT",
        ),
        (["--dask", "local:two"], "--dask local:two: expected local, local:N"),
        (["--dask", "local:0"], "--dask local:0: local:N needs at least 1 worker"),
        (["--dask", "tcp://10.0.0.5"], "--dask tcp://10.0.0.5: expected local"),
        (["--dask", "https://10.0.0.5:8786"], "--dask https://10.0.0.5:8786: expected local"),
        (["--dask", "tcp://127.0.0.1:70000"], "port 70000 is not between 1 and 65535"),
        (["--dask", "local", "--workers", "2"], "--workers sizes the local process pool; with --dask give"),
        (["--dask-timeout", "5"], "--dask-timeout: only meaningful with --dask"),
        (["--dask", "local", "--dask-timeout", "0"], "--dask-timeout 0: expected more than 0 seconds"),
        (
            ["--dask", "tcp://10.0.0.5:8786"],
            "--dask tcp://10.0.0.5:8786: plain tcp:// to another machine lets anyone who reaches the "
            "scheduler run code on the workers",
        ),
        (["--dask", "tcp://scheduler.lan:8786"], "use tls:// with --dask-ca, --dask-cert and --dask-key"),
        (
            ["--dask", "tls://10.0.0.5:8786"],
            "--dask tls://10.0.0.5:8786: tls:// needs --dask-ca and --dask-cert",
        ),
        (["--dask", "tls://10.0.0.5:8786", "--dask-ca", "{certs}/ca.pem"], "tls:// needs --dask-cert (or"),
        (
            ["--dask", "tls://10.0.0.5:8786", "--dask-ca", "{certs}/none.pem"],
            "--dask-ca {certs}/none.pem: no such",
        ),
        (["--dask", "tcp://127.0.0.1:8786", "--dask-ca", "{certs}/ca.pem"], "are for a tls:// scheduler"),
        (
            ["--dask", "tcp://127.0.0.1:8786", "--dask-insecure"],
            "--dask-insecure is for a tcp:// scheduler on",
        ),
        (
            ["--dask", "tls://10.0.0.5:8786", "--dask-insecure"],
            "--dask-insecure is for a tcp:// scheduler on",
        ),
        (["--dask-cert", "{certs}/ca.pem"], "--dask-cert: only meaningful with --dask"),
        (["--dask-insecure"], "--dask-insecure: only meaningful with --dask"),
    ],
)
def test_bad_dask_options_are_usage_errors(
    tmp_path: Path, certificates: Path, capsys: pytest.CaptureFixture[str], options: list[str], expected: str
) -> None:
    options = [option.format(certs=certificates) for option in options]
    status = main(["extract", str(SQUATS), "--out", str(tmp_path / "out"), *options])

    assert_usage_error(status, capsys.readouterr().err, expected.format(certs=certificates))
    assert not (tmp_path / "out").exists(), "nothing is written on a usage error"


def test_an_unreachable_scheduler_is_a_usage_error_within_the_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nobody = f"tcp://127.0.0.1:{free_port()}"

    status = main(
        ["extract", str(SQUATS), "--out", str(tmp_path / "out"), "--dask", nobody, "--dask-timeout", "1"]
    )

    assert_usage_error(
        status, capsys.readouterr().err, f"--dask {nobody}: no Dask scheduler answers there within 1 s"
    )
    assert not (tmp_path / "out").exists(), "nothing is written on a usage error"


def test_without_the_dask_extra_the_error_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # None in sys.modules is how Python spells "this module cannot be imported"
    monkeypatch.setitem(sys.modules, "distributed", None)

    status = main(["extract", str(SQUATS), "--out", str(tmp_path / "out"), "--dask", "local"])

    err = capsys.readouterr().err
    assert_usage_error(status, err, "--dask local: Dask is not installed")
    assert err.rstrip().endswith("; install the Dask extra: pip install .[dask]")
    assert not (tmp_path / "out").exists(), "nothing is written on a usage error"


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def issue(name: str, issuer: Issued | None = None) -> Issued:
    """A CA certificate (no ``issuer``), or one for ``name`` at 127.0.0.1 that ``issuer`` signed, valid
    for both ends of a connection (Dask authenticates clients, scheduler and workers alike)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    else:
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        ).add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return Issued(key, builder.sign(issuer.key if issuer else key, hashes.SHA256()))


def write_pem(folder: Path, name: str, issued: Issued) -> None:
    (folder / f"{name}.pem").write_bytes(issued.cert.public_bytes(serialization.Encoding.PEM))
    key = issued.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (folder / f"{name}.key").write_bytes(key)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem, the cluster's CA; cluster.pem/.key that it signed (scheduler, workers and the good
    client share it); other-ca.pem and outsider.pem/.key, a second CA and one it signed."""
    folder = tmp_path_factory.mktemp("dask-tls")
    ca, other_ca = issue("cluster CA"), issue("another CA")
    write_pem(folder, "ca", ca)
    write_pem(folder, "other-ca", other_ca)
    write_pem(folder, "cluster", issue("cluster", ca))
    write_pem(folder, "outsider", issue("outsider", other_ca))
    return folder


@pytest.fixture(scope="module")
def tls_scheduler(certificates: Path) -> Iterator[str]:
    """A running ``tls://`` scheduler on 127.0.0.1 with one worker, admitting clients the CA signed."""
    files = {
        f"tls_{role}_{kind}": str(certificates / f"cluster.{'pem' if kind == 'cert' else 'key'}")
        for role in ("scheduler", "worker", "client")
        for kind in ("cert", "key")
    }
    security = Security(require_encryption=True, tls_ca_file=str(certificates / "ca.pem"), **files)
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        protocol="tls://",
        security=security,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    ) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        yield cluster.scheduler_address


def test_a_tls_scheduler_runs_the_batch_for_a_client_with_its_certificate(
    tmp_path: Path,
    extracted,
    tls_scheduler: str,
    certificates: Path,
    task_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tls = ["--dask-ca", str(certificates / "ca.pem"), "--dask-cert", str(certificates / "cluster.pem")]
    tls += ["--dask-key", str(certificates / "cluster.key")]
    options = ["--dask", tls_scheduler, *tls, "--pose-model", str(task_path)]

    status = main(["extract", str(SQUATS), "--out", str(tmp_path), *options])

    assert status == 0
    assert "1 done, 0 skipped, 0 failed; 65 frames" in capsys.readouterr().out
    assert_same_files(tmp_path, extracted[0], ["squats.frames.jsonl"])


@pytest.mark.parametrize(
    ("scheme", "client", "expected"),
    [
        ("tls", "outsider", "the scheduler closed the connection (it does not accept --dask-cert)"),
        ("tls", "wrong CA", "the scheduler's certificate is not signed by --dask-ca"),
        (
            "tcp",
            "no certificate",
            "the scheduler closed the connection (does it want tls:// and certificates?)",
        ),
    ],
)
def test_a_tls_scheduler_refuses_clients_it_cannot_verify(
    tmp_path: Path,
    tls_scheduler: str,
    certificates: Path,
    capsys: pytest.CaptureFixture[str],
    scheme: str,
    client: str,
    expected: str,
) -> None:
    address = tls_scheduler.replace("tls://", f"{scheme}://")
    options = {
        "outsider": ["--dask-ca", "ca.pem", "--dask-cert", "outsider.pem", "--dask-key", "outsider.key"],
        "wrong CA": ["--dask-ca", "other-ca.pem", "--dask-cert", "cluster.pem", "--dask-key", "cluster.key"],
        "no certificate": [],
    }[client]
    options = [str(certificates / o) if o.endswith((".pem", ".key")) else o for o in options]

    status = main(["extract", str(SQUATS), "--out", str(tmp_path / "out"), "--dask", address, *options])

    assert_usage_error(status, capsys.readouterr().err, f"--dask {address}: {expected}")
    assert not (tmp_path / "out").exists(), "nothing is written when the cluster cannot be used"


def test_dask_insecure_lets_tcp_reach_another_machine_and_a_silent_one_costs_the_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The flag is what stands between the refusal and a connection: with it, one is made. The peer
    accepts and never speaks, which distributed alone would wait for without end."""
    address = network_address()
    with socket.create_server((address, 0)) as listener:  # accepts (in its backlog), never speaks
        silent = f"tcp://{address}:{listener.getsockname()[1]}"
        options = ["--dask", silent, "--dask-insecure", "--dask-timeout", "1"]
        status = main(["extract", str(SQUATS), "--out", str(tmp_path / "out"), *options])
        listener.settimeout(0)
        listener.accept()[0].close()  # BlockingIOError if no connection was made

    assert_usage_error(status, capsys.readouterr().err, f"--dask {silent}: no Dask scheduler answers there")
