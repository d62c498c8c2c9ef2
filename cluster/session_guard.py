"""Nothing of a local Ray instance outlives the driver that started it.

Ray's head processes die with the driver, but the raylet's agents (`ray::DashboardAgent`,
`ray::RuntimeEnvAgent`) outlive a SIGKILLed driver. A guard process, in its own session so
no terminal signal reaches it, holds the read end of a pipe only the driver writes to: when
the driver is gone, for whatever reason, it reads end-of-file and ends every process that
still has a file open in the Ray session's folder. The session is also recorded in the
output dir, so the next start of the job ends what is left if the guard itself was killed."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from relayrl.cluster.stray_processes import end_process, is_running, pids_where, start_time

log = logging.getLogger(__name__)

SESSION_RECORD = "ray_session.json"


def _holds_files_in(pid: int, folder: str) -> bool:
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for name in descriptors:
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith(folder):
                return True
        except OSError:
            continue
    return False


def local_session_dir() -> str:
    """The session folder of the Ray instance this process started and is connected to."""
    import ray._private.worker  # here, so the guard process never pays for importing Ray

    return str(ray._private.worker._global_node.get_session_dir_path())


def session_processes(session_dir: str) -> list[int]:
    """Processes that name the session folder on their command line or hold a file in it
    (its agents rename themselves `ray::...`, but keep their logs there open)."""
    folder = session_dir.rstrip("/") + "/"
    return pids_where(
        lambda pid, argv: any(folder in arg for arg in argv) or _holds_files_in(pid, folder)
    )


def end_session(session_dir: str, spare: int | None = None) -> list[int]:
    ended = [pid for pid in session_processes(session_dir) if pid != spare]
    for pid in ended:
        end_process(pid, timeout_s=5.0)
    return ended


def end_session_left_behind(output_dir: Path) -> list[int]:
    """End the processes of the Ray session a previous, now dead, driver of this output dir
    started; nothing if that driver still runs."""
    record_path = output_dir / SESSION_RECORD
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return []
    driver = record.get("driver_pid")
    if (
        isinstance(driver, int)
        and is_running(driver)
        and start_time(driver) == record.get("driver_start_time")
    ):
        return []
    ended = end_session(str(record["session_dir"]))
    if ended:
        log.warning("ended %d process(es) left by the Ray session of a dead driver", len(ended))
    record_path.unlink(missing_ok=True)
    return ended


class RaySessionGuard:
    """Enter before the local Ray starts, `watch` it once started, exit after Ray shut down."""

    def __init__(self, output_dir: Path) -> None:
        self.record_path = output_dir / SESSION_RECORD
        self._pipe: int | None = None
        self._guard: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RaySessionGuard:
        read_end, self._pipe = os.pipe()  # both close-on-exec: no other child holds them
        self._guard = subprocess.Popen(
            [sys.executable, "-m", "relayrl.cluster.session_guard"],
            stdin=read_end,
            start_new_session=True,
        )
        os.close(read_end)
        return self

    def watch(self, session_dir: str) -> None:
        assert self._pipe is not None
        os.write(self._pipe, f"{session_dir}\n".encode())
        me = os.getpid()
        record = {"session_dir": session_dir, "driver_pid": me, "driver_start_time": start_time(me)}
        self.record_path.write_text(json.dumps(record))

    def __exit__(self, *exc_info: object) -> None:
        if self._pipe is not None:
            os.close(self._pipe)
            self._pipe = None
        if self._guard is not None:
            self._guard.wait()
            self._guard = None
        self.record_path.unlink(missing_ok=True)


def _guard() -> None:
    driver = os.getppid()
    session_dir = sys.stdin.readline().strip()
    sys.stdin.read()  # returns at end-of-file: the driver closed the pipe or died
    if session_dir:
        end_session(session_dir, spare=driver)  # a driver at its clean exit may hold a log


if __name__ == "__main__":
    _guard()
