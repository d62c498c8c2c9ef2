"""The embedded Redis binds a port it picked even when another process takes that port between
the pick and the bind: it picks again. A port the caller named is never silently moved."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import redis

import relayrl.cluster.embedded_redis as embedded
from relayrl.cluster.embedded_redis import EmbeddedRedis, RedisPortTakenError
from relayrl.ports import free_port


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another process (this test) listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_a_picked_port_taken_before_the_bind_is_picked_again(tmp_path, taken_port, monkeypatch):
    picks = iter([taken_port])  # the race, made certain: the first pick is already taken
    monkeypatch.setattr(embedded, "free_port", lambda: next(picks, None) or free_port())
    with EmbeddedRedis(tmp_path / "redis") as server:
        assert server.port != taken_port
        assert redis.Redis.from_url(server.url).ping()
        assert (
            f"127.0.0.1:{taken_port}: bind: Address already in use"
            in (tmp_path / "redis" / "redis.log").read_text()
        )


def test_a_named_port_that_is_taken_is_refused_not_moved(tmp_path, taken_port):
    server = EmbeddedRedis(tmp_path / "redis", port=taken_port)
    with pytest.raises(RedisPortTakenError, match=f"port {taken_port} is taken"):
        server.start()
    assert server.port == taken_port and server.pid is None
