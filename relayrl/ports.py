"""The one way relayrl picks a TCP port nothing listens on."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"
# Every interface: for rendezvous ports other nodes connect to.
ALL_INTERFACES = ""


def free_port(host: str = LOOPBACK) -> int:
    """A port the OS just handed out on `host`, released again before the caller binds it: a
    process that takes it in between makes the caller's bind fail, never two share it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
