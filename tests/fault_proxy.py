"""A loopback TCP proxy in front of Redis that stalls, resets or black-holes connections on
cue, so tests can break the network between a client and a real server."""

from __future__ import annotations

import select
import socket
import struct
import threading
from urllib.parse import urlsplit, urlunsplit


def _reset(sock: socket.socket) -> None:
    """Close with an RST, as a crashed peer or a middlebox would, not an orderly FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


class _Link:
    """One client connection and its upstream twin."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        # Set once the cued request went upstream: its reply is swallowed, then both reset.
        self.cut_reply = False
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            _reset(self.client)
            _reset(self.upstream)


class FaultProxy:
    """`127.0.0.1:port` forwards to `upstream`. Faults: `stall()` stops moving bytes (until
    `resume()`), `blackhole()` swallows them, `reset()` RSTs every open connection, and
    `cut_reply_after(marker)` lets the next request holding `marker` reach the server but
    resets the connection instead of returning its reply (a lost EXEC or XREADGROUP reply)."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self._swallowing = False
        self._cut_marker: bytes | None = None
        self._closing = threading.Event()
        self.connections = 0
        self.cuts = 0
        self.new_connection = threading.Event()
        self.cut_done = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    def url_for(self, url: str) -> str:
        """`url` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{self.port}" if credentials else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def start(self) -> FaultProxy:
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        self._flowing.set()
        self._listener.close()
        self.reset()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stall(self) -> None:
        self._flowing.clear()

    def blackhole(self) -> None:
        self._swallowing = True

    def resume(self) -> None:
        self._swallowing = False
        self._flowing.set()

    def reset(self) -> int:
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.close()
        return len(links)

    def cut_reply_after(self, marker: bytes) -> None:
        self.cut_done.clear()
        self._cut_marker = marker

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _reset(client)
                continue
            link = _Link(client, upstream)
            with self._lock:
                self._links.append(link)
                self.connections += 1
            self.new_connection.set()
            for source, target, upward in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(link, source, target, upward), daemon=True
                ).start()

    def _pump(self, link: _Link, source: socket.socket, target: socket.socket, up: bool) -> None:
        while not link.closed:
            self._flowing.wait()
            try:
                ready, _, _ = select.select([source], [], [], 0.05)
                if not ready:
                    continue
                if not self._flowing.is_set():
                    continue  # a stall began while waiting: leave the bytes unread
                data = source.recv(65536)
            except (OSError, ValueError):
                break
            if not data:
                break
            if self._swallowing:
                continue
            if up and self._cut_marker is not None and self._cut_marker in data:
                self._cut_marker = None
                link.cut_reply = True
            elif not up and link.cut_reply:
                # The server answered the cued request: it ran, and its reply is lost.
                self.cuts += 1
                link.close()
                self.cut_done.set()
                break
            try:
                target.sendall(data)
            except OSError:
                break
        link.close()
