"""The embedded Redis cannot outlive its owner or run twice on one data directory, and its
watchdog survives a restart slower than its wait."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from relayrl.cluster.embedded_redis import (
    PIDFILE,
    EmbeddedRedis,
    RedisDataDirBusyError,
    RedisUnavailableError,
    _servers_in,
    find_redis_server,
)
from relayrl.cluster.stray_processes import end_process, is_running
from relayrl.ports import free_port

ROOT = Path(__file__).resolve().parents[1]

OWNER = """
import sys, time
import redis
import relayrl.cluster.embedded_redis as embedded
if sys.argv[2] == "no-parent-death-signal":  # how a job before the fix left its server
    embedded.die_with_parent = lambda: None
server = embedded.EmbeddedRedis(sys.argv[1]).start()
redis.Redis.from_url(server.url).set("written-by", "first owner")
print(server.pid, flush=True)
time.sleep(600)
"""


def wait_for(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)


@pytest.fixture
def owner_process(tmp_path: Path) -> Iterator:
    started: list[subprocess.Popen] = []

    def launch(data_dir: Path, mode: str) -> tuple[subprocess.Popen, int]:
        proc = subprocess.Popen(
            [sys.executable, "-c", OWNER, str(data_dir), mode],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        assert proc.stdout is not None
        return proc, int(proc.stdout.readline())

    yield launch
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_second_owner_of_a_data_dir_is_refused(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as first:
        with pytest.raises(RedisDataDirBusyError, match=f"pid {os.getpid()}"):
            EmbeddedRedis(tmp_path / "redis").start()
        assert redis.Redis.from_url(first.url).ping()
        assert _servers_in((tmp_path / "redis").resolve()) == [first.pid]
    assert not (tmp_path / "redis" / PIDFILE).exists()
    # A clean stop hands the directory on.
    with EmbeddedRedis(tmp_path / "redis") as second:
        assert redis.Redis.from_url(second.url).ping()


def test_the_server_dies_with_its_owner_and_keeps_its_data(tmp_path, owner_process):
    data = tmp_path / "redis"
    owner, server_pid = owner_process(data, "default")
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    wait_for(lambda: not is_running(server_pid))
    with EmbeddedRedis(data) as server:
        assert redis.Redis.from_url(server.url).get("written-by") == b"first owner"


def test_a_server_left_by_a_dead_owner_is_ended_not_doubled(tmp_path, owner_process):
    data = tmp_path / "redis"
    owner, orphan = owner_process(data, "no-parent-death-signal")
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert is_running(orphan)  # the situation the pidfile exists for
    try:
        with EmbeddedRedis(data) as server:
            assert not is_running(orphan)
            assert _servers_in(data.resolve()) == [server.pid]
            assert redis.Redis.from_url(server.url).get("written-by") == b"first owner"
    finally:
        end_process(orphan)


def test_a_server_relayrl_did_not_start_is_refused_and_left_alone(tmp_path):
    data = tmp_path / "redis"
    data.mkdir()
    stranger = subprocess.Popen(
        [find_redis_server(), "--port", str(free_port()), "--save", ""],
        cwd=data,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _servers_in(data.resolve()) == [stranger.pid])
        with pytest.raises(RedisDataDirBusyError, match=f"pid {stranger.pid}"):
            EmbeddedRedis(data).start()
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
    # Refusing left the directory free for the next owner.
    with EmbeddedRedis(data) as server:
        assert redis.Redis.from_url(server.url).ping()


def test_a_pidfile_naming_a_reused_pid_kills_nothing(tmp_path):
    data = tmp_path / "redis"
    data.mkdir()
    bystander = subprocess.Popen(["sleep", "600"], cwd=data)
    try:
        (data / PIDFILE).write_text(json.dumps({"pid": bystander.pid, "start_time": 1}))
        with EmbeddedRedis(data) as server:
            assert redis.Redis.from_url(server.url).ping()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


class _Seen(logging.Handler):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.count = 0
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.count += 1
            self.event.set()


def test_a_restart_slower_than_its_wait_is_reported_and_never_deadlocks(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("kept", "yes")
        first = server.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        # A zero wait stands for a start slower than the watchdog allows (a big AOF); until
        # the server is seen dead, restart_if_dead does nothing and says so.
        with pytest.raises(RedisUnavailableError, match="has not answered"):
            wait_for(lambda: server.restart_if_dead(wait_s=0.0))
        restarted = server.pid
        assert restarted not in (None, first)
        # The slow server is left to finish, not started a second time.
        assert server.restart_if_dead(wait_s=0.0) is False
        wait_for(lambda: _answers(client))
        assert server.pid == restarted
        assert client.get("kept") == b"yes"
    finally:
        server.stop()
    assert not is_running(restarted)


def test_the_watchdog_keeps_watching_after_a_slow_restart(tmp_path):
    slow = _Seen("has not answered")
    restarted = _Seen("restarted it on the same data")
    logger = logging.getLogger("relayrl.cluster.embedded_redis")
    logger.addHandler(slow)
    logger.addHandler(restarted)
    server = EmbeddedRedis(tmp_path / "redis", watchdog_s=0.05, restart_wait_s=0.0).start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("kept", "yes")
        for _ in range(2):
            slow.event.clear()
            dead = server.pid
            assert dead is not None
            os.kill(dead, signal.SIGKILL)
            assert slow.event.wait(30), "the watchdog never tried a restart"
            wait_for(lambda: _answers(client))
            assert server.pid != dead
        assert slow.count == 2
        assert restarted.count == 0
        assert client.get("kept") == b"yes"
        last = server.pid
    finally:
        server.stop()
        logger.removeHandler(slow)
        logger.removeHandler(restarted)
    assert last is not None and not is_running(last)
    assert not _servers_in((tmp_path / "redis").resolve())


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_stopping_a_refused_instance_leaves_the_owner_alone(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as owner:
        refused = EmbeddedRedis(tmp_path / "redis")
        with pytest.raises(RedisDataDirBusyError):
            refused.start()
        refused.stop()
        assert (tmp_path / "redis" / PIDFILE).exists()
        assert redis.Redis.from_url(owner.url).ping()
