"""A kiosk's HTTPS files for tests: a self-signed certificate for the loopback names, and clients.

``TlsFiles.make(folder)`` writes a certificate and key as ``init-device`` would (via
:mod:`device.certificates`); ``server()`` is the context the kiosk serves with and ``client()`` a
client context that trusts exactly that certificate, with host name checking on, as a pinned
provisioning client or a browser told to trust the kiosk would be.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from device.certificates import make_self_signed, server_context


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    pem: bytes

    @classmethod
    def make(cls, folder: Path) -> TlsFiles:
        key_pem, cert_pem = make_self_signed("kiosk-test", ["localhost", "127.0.0.1", "::1"])
        cert, key = folder / "kiosk.crt", folder / "kiosk.key"
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        key.chmod(0o600)
        return cls(cert, key, cert_pem)

    def server(self) -> ssl.SSLContext:
        return server_context(self.cert, self.key)

    def client(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.pem.decode())

    def wrap(self, sock: socket.socket) -> ssl.SSLSocket:
        """``sock`` (connected to the kiosk on 127.0.0.1) after a verified handshake."""
        return self.client().wrap_socket(sock, server_hostname="127.0.0.1")
