"""The systemd notify protocol (``sd_notify``) without a dependency.

With ``Type=notify`` systemd waits for ``READY=1``; with ``WatchdogSec`` it restarts the service
unless ``WATCHDOG=1`` arrives in time. Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends state lines to the socket systemd names in ``$NOTIFY_SOCKET``."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # an abstract socket
            address = "\0" + address[1:]
        self._address = address or None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=value`` lines; False when there is no socket or it is gone."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._address)
                sock.sendall("\n".join(lines).encode())
        except OSError:
            return False
        return True

    def watchdog_interval_s(self) -> float | None:
        """Half of systemd's watchdog timeout (``$WATCHDOG_USEC``), as systemd recommends."""
        usec = os.environ.get("WATCHDOG_USEC")
        return int(usec) / 2e6 if usec and usec.isdigit() else None
