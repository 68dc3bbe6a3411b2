"""Readiness for a service manager: systemd's notify protocol (`Type=notify`), without libsystemd.

One job: send state lines (``READY=1``, ``STATUS=...``, ``STOPPING=1``) to the
datagram socket named by ``$NOTIFY_SOCKET``, if there is one (an ``@`` at its
start names an abstract socket). Without the variable nothing is sent.

Invariants:
- Never raises: a manager that went away must not stop the daemon; a failure
  is logged once per call.
- `ready` is sent by the daemon only once every volume is protected and the
  browser serves them (design §9.4).
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def send(*lines: str) -> bool:
    """Send `lines` to $NOTIFY_SOCKET; True if there is one and the send succeeded."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    target: str | bytes = address
    if address.startswith("@"):
        target = b"\0" + address[1:].encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(lines).encode(), target)
    except OSError as exc:
        log.warning("could not notify the service manager at %s: %s", address, exc)
        return False
    return True


def ready(status: str) -> bool:
    return send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")


def stopping() -> bool:
    return send("STOPPING=1")
