"""Self-signed TLS certificates for a kiosk, and the fingerprints that pin them.

A kiosk in a clinic has no public DNS name, so no public CA can vouch for it. Instead the
provisioning tool makes a self-signed certificate per device and records its SHA-256
fingerprint; clients then pin that fingerprint (or trust exactly that certificate) instead of
trusting any CA. The key is EC P-256: small, fast to handshake on a Raspberry Pi, and accepted
by every TLS client that matters (browsers, curl, Python's ``ssl``, Prometheus).

Browsers and Python ignore the subject's common name when checking the host name, so every
name or address a client may use must be in the subject alternative names: ``hosts`` takes
DNS names and IP addresses (IPv6 with or without brackets) and each goes in as the right kind.
The certificate is a leaf (``CA:FALSE``, server authentication only) that is its own issuer,
with key identifiers, so that a client given it as its only trust anchor verifies it even
under OpenSSL's strict X.509 checks.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Browsers, curl and Python all speak TLS 1.2 or 1.3; older versions have known breaks.
_MINIMUM_TLS = ssl.TLSVersion.TLSv1_2

# A clock that is wrong by a few hours (a Pi without a real-time clock before NTP) must not
# make a fresh certificate "not yet valid" for the client that just received it.
_BACKDATE = datetime.timedelta(days=1)


def _alternative_name(host: str) -> x509.GeneralName:
    """One SAN entry: an IP address when ``host`` parses as one, a DNS name otherwise."""
    bare = host.strip()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    if not bare:
        raise ValueError(f"empty host name in certificate hosts: {host!r}")
    try:
        return x509.IPAddress(ipaddress.ip_address(bare))
    except ValueError:
        return x509.DNSName(bare.lower())


def make_self_signed(
    common_name: str, hosts: Sequence[str], days: int = 3650
) -> tuple[bytes, bytes]:
    """Return ``(key_pem, cert_pem)`` for a new P-256 key and a certificate naming ``hosts``.

    The key is PKCS#8 PEM without a passphrase: the daemon starts unattended, and the file's
    permissions (0600, the service user) are what protect it.
    """
    if days < 1:
        raise ValueError(f"certificate validity must be at least 1 day, got {days}")
    names: list[x509.GeneralName] = []
    for host in hosts:
        name = _alternative_name(host)
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError("a certificate needs at least one host name or address")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def fingerprint_der(der: bytes) -> str:
    """Lowercase hex SHA-256 of a DER certificate, as ``ssl.SSLSocket.getpeercert(True)`` gives it."""
    return hashlib.sha256(der).hexdigest()


def fingerprint(cert_pem: bytes) -> str:
    """Lowercase hex SHA-256 (64 characters, no colons) of a PEM certificate's DER encoding."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return fingerprint_der(cert.public_bytes(serialization.Encoding.DER))


class CertificateError(ValueError):
    """A certificate or key file the server cannot use; ``which`` is ``"cert"`` or ``"key"``."""

    def __init__(self, which: str, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.which, self.path, self.reason = which, path, reason


def _read(which: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(which, path, exc.strerror or str(exc)) from None


def check_server_pair(cert_path: Path, key_path: Path) -> x509.Certificate:
    """The certificate, once it and the key are readable PEM, belong together and it has not expired.

    Each failure names the file at fault, which OpenSSL's own errors (``[SSL] PEM lib``) do not.
    """
    try:
        cert = x509.load_pem_x509_certificate(_read("cert", cert_path))
    except ValueError:
        raise CertificateError("cert", cert_path, "not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(_read("key", key_path), password=None)
    except (ValueError, TypeError):  # TypeError: it is encrypted
        raise CertificateError("key", key_path, "not a PEM private key without a passphrase") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != cert.public_key().public_bytes(
        serialization.Encoding.DER, public
    ):
        raise CertificateError("key", key_path, f"is not the key of the certificate {cert_path}")
    expires = cert.not_valid_after_utc
    if expires < datetime.datetime.now(datetime.UTC):
        raise CertificateError("cert", cert_path, f"expired on {expires:%Y-%m-%d}")
    return cert


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """The TLS context the kiosk serves HTTPS with: TLS 1.2 or newer, HTTP/1.1 by ALPN."""
    check_server_pair(cert_path, key_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _MINIMUM_TLS
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(cert_path, key_path)
    return context
