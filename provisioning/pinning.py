"""How the workstation reaches a kiosk without handing its token to anyone else.

A kiosk has no name a public CA could vouch for, so ``init-device`` makes it a self-signed
certificate and records the certificate's SHA-256 fingerprint in fleet.toml. Connecting, the
workstation completes the TLS handshake without judging the certificate (there is no CA to ask),
hashes the DER certificate the peer presented and compares it with the pinned fingerprint; only
then is the request — with its ``Authorization`` header — written. A different certificate (a
fake kiosk that took over the name ``kiosk-1.local``, a machine in the middle) gets the
handshake and nothing else: :class:`PinMismatch` is raised before a byte of the request exists
on the wire, and it is never retried.

An ``https://`` URL without a fingerprint is verified the ordinary way (the system's CAs and the
host name), for kiosks whose certificate a real CA signed. Plain ``http://`` is for loopback
(tests, the demo, a tool on the kiosk itself): :func:`trainer.cluster.is_loopback` decides it,
as it does for a Dask scheduler.
"""

from __future__ import annotations

import hmac
import http.client
import ssl

from device.certificates import fingerprint_der


class PinMismatch(Exception):
    """The peer's certificate is not the pinned one; the connection was closed before any request."""

    def __init__(self, presented: str, pinned: str) -> None:
        super().__init__(
            f"certificate fingerprint {presented[:16]}… is not the pinned {pinned[:16]}…; nothing sent "
            "(a different machine, or the kiosk has a new certificate: check, then update fleet.toml)"
        )
        self.presented = presented


def _pinning_context() -> ssl.SSLContext:
    """TLS 1.2+ that accepts any certificate: the fingerprint check after the handshake decides."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An ``HTTPSConnection`` that talks only to the peer whose certificate has ``fingerprint``.

    ``http.client`` connects lazily, inside the first ``request()``, and writes the request only
    after :meth:`connect` returned; checking here is therefore checking before anything is sent.
    """

    def __init__(self, host: str, port: int | None, fingerprint: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=_pinning_context())
        self._fingerprint = fingerprint

    def connect(self) -> None:
        super().connect()  # TCP and the complete TLS handshake
        assert isinstance(self.sock, ssl.SSLSocket)
        der = self.sock.getpeercert(binary_form=True)
        presented = fingerprint_der(der) if der else "(no certificate)"
        if not hmac.compare_digest(presented, self._fingerprint):
            self.close()
            raise PinMismatch(presented, self._fingerprint)
