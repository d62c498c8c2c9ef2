"""Who can reach the embedded Redis: only loopback clients that know its random password, and
the password shows in no command line or file the server was started with."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from relayrl.cluster.embedded_redis import EmbeddedRedis


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    started = EmbeddedRedis(tmp_path / "redis").start()
    yield started
    started.stop()


def test_a_client_without_the_password_is_refused(server: EmbeddedRedis) -> None:
    anonymous = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    wrong = redis.Redis(host="127.0.0.1", port=server.port, password="guess", socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    assert redis.Redis.from_url(server.url).ping()


def test_each_server_draws_its_own_long_password(tmp_path: Path) -> None:
    first, second = EmbeddedRedis(tmp_path / "a"), EmbeddedRedis(tmp_path / "b")
    assert first.password != second.password
    assert min(len(first.password), len(second.password)) >= 24


def test_it_listens_on_loopback_only(server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(server.url)
    assert client.config_get("bind")["bind"].split() == ["127.0.0.1"]
    assert client.config_get("protected-mode")["protected-mode"] == "yes"
    # Nothing answers on this host's other addresses.
    others = {
        info[4][0]
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
        if not info[4][0].startswith("127.")
    }
    for address in others:
        with socket.socket() as probe, pytest.raises(OSError):
            probe.settimeout(2)
            probe.connect((address, server.port))


def test_the_password_travels_on_stdin_not_in_argv_or_a_file(server: EmbeddedRedis) -> None:
    assert server.pid is not None
    argv = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
    assert server.password.encode() not in b" ".join(argv)
    # redis-server read its config from "-": it has no config file to rewrite or leak.
    assert redis.Redis.from_url(server.url).info("server")["config_file"] == ""
    for path in server.data_dir.rglob("*"):
        if path.is_file():
            assert server.password.encode() not in path.read_bytes(), path
