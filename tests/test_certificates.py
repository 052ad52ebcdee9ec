"""Self-signed kiosk certificates: a real TLS client trusts exactly them, and pins them by fingerprint."""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509

from device.certificates import fingerprint, fingerprint_der, make_self_signed


@contextmanager
def tls_server(
    tmp_path: Path, key_pem: bytes, cert_pem: bytes, family: int = socket.AF_INET
) -> Iterator[int]:
    """A loopback TLS listener that completes handshakes for as long as the block runs; yields its port."""
    (tmp_path / "key.pem").write_bytes(key_pem)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    listener = socket.socket(family)
    listener.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            raw.settimeout(5)
            try:
                with context.wrap_socket(raw, server_side=True) as conn:
                    conn.sendall(b"ok")
            except (ssl.SSLError, OSError):
                raw.close()

    thread = threading.Thread(target=serve, name="test-tls-server", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def strict_client(cert_pem: bytes) -> ssl.SSLContext:
    """A client that trusts only this certificate, with OpenSSL's strict X.509 checks on."""
    context = ssl.create_default_context(cadata=cert_pem.decode())
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def handshake(port: int, host: str, server_hostname: str, context: ssl.SSLContext) -> tuple[bytes, bytes]:
    """Connect, verify, and return (the server's DER certificate, the first bytes it sent)."""
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der, tls.recv(2)


@pytest.mark.parametrize(
    ("host", "server_hostname"),
    [("127.0.0.1", "kiosk-3.local"), ("127.0.0.1", "KIOSK-3.local"), ("127.0.0.1", "127.0.0.1")],
)
def test_a_client_that_trusts_only_the_certificate_verifies_each_of_its_names(
    tmp_path: Path, host: str, server_hostname: str
) -> None:
    key_pem, cert_pem = make_self_signed("kiosk-3", ["kiosk-3.local", "127.0.0.1", "[::1]"])
    with tls_server(tmp_path, key_pem, cert_pem) as port:
        der, greeting = handshake(port, host, server_hostname, strict_client(cert_pem))
    assert greeting == b"ok"
    assert fingerprint_der(der) == fingerprint(cert_pem)


def test_a_bracketed_ipv6_host_verifies_over_ipv6(tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    key_pem, cert_pem = make_self_signed("kiosk-3", ["[::1]"])
    with tls_server(tmp_path, key_pem, cert_pem, socket.AF_INET6) as port:
        _, greeting = handshake(port, "::1", "::1", strict_client(cert_pem))
    assert greeting == b"ok"


def test_a_name_outside_the_hosts_is_refused_by_the_client(tmp_path: Path) -> None:
    key_pem, cert_pem = make_self_signed("kiosk-3", ["kiosk-3.local"])
    with (
        tls_server(tmp_path, key_pem, cert_pem) as port,
        pytest.raises(ssl.SSLCertVerificationError, match="mismatch"),
    ):
        handshake(port, "127.0.0.1", "kiosk-4.local", strict_client(cert_pem))


def test_another_devices_certificate_is_not_trusted(tmp_path: Path) -> None:
    key_pem, cert_pem = make_self_signed("kiosk-3", ["kiosk-3.local"])
    _, other_pem = make_self_signed("kiosk-3", ["kiosk-3.local"])
    assert fingerprint(other_pem) != fingerprint(cert_pem)
    with tls_server(tmp_path, key_pem, cert_pem) as port, pytest.raises(ssl.SSLCertVerificationError):
        handshake(port, "127.0.0.1", "kiosk-3.local", strict_client(other_pem))


def test_hosts_become_dns_and_ip_alternative_names_without_duplicates() -> None:
    hosts = ["Kiosk-3.local", "kiosk-3.local", "10.0.0.7", "[fe80::1]", "fe80::1"]
    _, cert_pem = make_self_signed("kiosk-3", hosts)
    cert = x509.load_pem_x509_certificate(cert_pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["kiosk-3.local"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("fe80::1"),
    ]
    assert cert.subject.rfc4514_string() == "CN=kiosk-3"
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 3651


def test_the_fingerprint_is_what_openssl_prints(tmp_path: Path) -> None:
    _, cert_pem = make_self_signed("kiosk-3", ["kiosk-3.local"], days=30)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    out = subprocess.run(
        ["openssl", "x509", "-in", str(tmp_path / "cert.pem"), "-noout", "-fingerprint", "-sha256"],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout
    expected = out.split("=", 1)[1].strip().replace(":", "").lower()
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprint(cert_pem))
    assert fingerprint(cert_pem) == expected


@pytest.mark.parametrize(
    ("hosts", "days", "message"),
    [([], 30, "at least one host"), (["  "], 30, "empty host"), (["a.local"], 0, "at least 1 day")],
)
def test_unusable_arguments_are_refused_with_a_reason(hosts: list[str], days: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_self_signed("kiosk-3", hosts, days=days)
