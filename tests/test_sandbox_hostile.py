"""Hostile programs through the sandbox CLI: each is contained, the host untouched, typed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relayrl.envs.sandbox.confinement import host_confinements
from tests.sandbox_processes import host_processes_with, spawn_marked_sleeper

# The one place that knows how the CLI is invoked (to become `relayrl sandbox` once wired).
SANDBOX_CLI = [sys.executable, "-m", "relayrl.cli", "sandbox"]
# Interpreter start-up, the host check and a loaded 2-core machine, on top of --timeout.
CLI_MARGIN_S = 5.0
DEFAULT_MAX_PROCESSES = 32
DEFAULT_OUTPUT_CAP = 1024 * 1024
SCRATCH_CAP = 64 * 1024 * 1024


def run_sandbox_cli(
    tmp_path: Path,
    code: str,
    *options: str,
    timeout_s: float = 5.0,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    program = tmp_path / f"program-{uuid.uuid4().hex[:8]}.py"
    program.write_text(textwrap.dedent(code))
    # A CLI that hangs past its own timeout fails here (TimeoutExpired), whatever the host's speed.
    completed = subprocess.run(
        [*SANDBOX_CLI, "run", "--timeout", str(timeout_s), *options, str(program)],
        capture_output=True,
        text=True,
        timeout=timeout_s + CLI_MARGIN_S,
        env=env,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert len(lines) == 1, "the CLI prints exactly one JSON object"
    result = json.loads(lines[0])
    assert set(result) == {"status", "exit_code", "stdout", "stderr", "duration_s"}
    assert result["duration_s"] < timeout_s + 1.0
    return result


@pytest.fixture
def marker() -> str:
    return f"relayrl-hostile-{uuid.uuid4().hex}"


@pytest.fixture
def host_sentinel() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated host process that signals from inside the sandbox must not reach."""
    sentinel = subprocess.Popen(["sleep", "60"])
    yield sentinel
    sentinel.kill()
    sentinel.wait()


def test_fork_bomb_is_capped(tmp_path: Path) -> None:
    result = run_sandbox_cli(
        tmp_path,
        """
        import os, time
        started = 0
        try:
            while True:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                started += 1
        except BlockingIOError:
            print(started)
        """,
    )
    assert result["status"] == "ok"
    assert 0 < int(result["stdout"]) < DEFAULT_MAX_PROCESSES


def test_recursive_fork_bomb_ends_typed(tmp_path: Path) -> None:
    result = run_sandbox_cli(tmp_path, "import os\nwhile True:\n    os.fork()\n", timeout_s=3.0)
    assert (result["status"], result["exit_code"]) == ("error", 1)
    assert "BlockingIOError" in result["stderr"]


def test_thread_bomb_is_capped(tmp_path: Path) -> None:
    result = run_sandbox_cli(
        tmp_path,
        """
        import threading
        stop = threading.Event()
        started = 0
        try:
            while True:
                threading.Thread(target=stop.wait, daemon=True).start()
                started += 1
        except RuntimeError:
            print(started)
        stop.set()
        """,
    )
    assert result["status"] == "ok"
    assert 0 < int(result["stdout"]) < DEFAULT_MAX_PROCESSES


def test_memory_bomb_reports_memory(tmp_path: Path) -> None:
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(16 * 2**20))\n"
    result = run_sandbox_cli(tmp_path, code, "--memory-mb", "128")
    assert result["status"] == "memory"
    assert result["exit_code"] == 1


def test_memory_bomb_in_children_is_capped_in_total(tmp_path: Path) -> None:
    memory = next(found for found in host_confinements() if found.name == "cgroup memory")
    if not memory.active:
        pytest.skip(f"only a memory cgroup caps the total, and this host has none: {memory.detail}")
    # Each child stays under the per-process cap; together they pass it.
    result = run_sandbox_cli(
        tmp_path,
        """
        import os
        children = []
        for _ in range(6):
            pid = os.fork()
            if pid == 0:
                block = bytearray(100 * 2**20)
                block[::4096] = b"x" * len(block[::4096])
                os._exit(0)
            children.append(pid)
        print(sorted(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children))
        """,
        "--memory-mb",
        "128",
    )
    assert result["status"] == "memory", result


def test_infinite_loop_times_out(tmp_path: Path) -> None:
    result = run_sandbox_cli(tmp_path, "while True:\n    pass\n", timeout_s=2.0)
    assert result["status"] == "timeout"
    assert result["exit_code"] in {None, -signal.SIGXCPU}


def test_sleep_forever_times_out_and_leaves_nothing(tmp_path: Path, marker: str) -> None:
    sleeper = spawn_marked_sleeper(marker)
    code = f"import os, time\nif os.fork() == 0:\n    {sleeper}\ntime.sleep(3600)\n"
    result = run_sandbox_cli(tmp_path, code, timeout_s=1.5)
    assert (result["status"], result["exit_code"]) == ("timeout", None)
    assert result["duration_s"] >= 1.5
    assert host_processes_with(marker) == []


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_huge_output_is_cut_at_the_cap(tmp_path: Path, stream: str) -> None:
    code = f"import sys\nwhile True:\n    sys.{stream}.write('x' * 65536)\n"
    result = run_sandbox_cli(tmp_path, code)
    assert (result["status"], result["exit_code"]) == ("output_limit", None)
    assert result[stream] == "x" * DEFAULT_OUTPUT_CAP


def test_disk_fill_stops_at_the_scratch_cap(tmp_path: Path) -> None:
    result = run_sandbox_cli(
        tmp_path,
        """
        import errno
        written, chunk = 0, b"x" * 2**20
        try:
            for index in range(1000):
                with open(f"fill-{index}", "wb") as fill:
                    for _ in range(16):
                        written += fill.write(chunk)
        except OSError as error:
            print(written, errno.errorcode[error.errno])
        """,
    )
    written, error = result["stdout"].split()
    assert result["status"] == "ok"
    assert 0 < int(written) <= SCRATCH_CAP
    assert error == "ENOSPC"


def test_host_files_cannot_be_written_or_deleted(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    targets = [str(victim), "/usr/bin/python3", "/etc/hostname", "/tmp/relayrl-evil", "/evil"]
    targets += ["/dev/shm/fill", "/scratch/../escape"]
    result = run_sandbox_cli(
        tmp_path,
        f"""
        import os
        for path in {targets!r}:
            for attempt in (lambda: open(path, "w").write("pwned"), lambda: os.remove(path)):
                try:
                    attempt()
                    print("DID", path)
                except OSError as error:
                    print("denied", type(error).__name__)
        """,
    )
    assert result["status"] == "ok"
    assert "DID" not in result["stdout"]
    assert result["stdout"].count("denied") == 2 * len(targets)
    assert victim.read_text() == "original"
    assert os.path.exists("/usr/bin/python3")
    assert not os.path.exists("/tmp/relayrl-evil") and not os.path.exists("/evil")


def test_secrets_of_the_caller_stay_hidden(tmp_path: Path) -> None:
    env_secret, file_secret = f"env-{uuid.uuid4().hex}", f"file-{uuid.uuid4().hex}"
    home_file = Path.home() / f".relayrl-sandbox-secret-{uuid.uuid4().hex[:8]}"
    home_file.write_text(file_secret)
    try:
        result = run_sandbox_cli(
            tmp_path,
            f"""
            import glob, os
            print(dict(os.environ))
            for path in glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline"):
                try:
                    print(path, open(path, "rb").read())
                except OSError as error:
                    print(path, error)
            for path in [{str(home_file)!r}, {str(Path.home())!r}, "/root", "/home"]:
                try:
                    print(path, open(path).read() if os.path.isfile(path) else os.listdir(path))
                except OSError as error:
                    print(path, type(error).__name__)
            """,
            env={**os.environ, "RELAYRL_TEST_SECRET": env_secret},
        )
    finally:
        home_file.unlink()
    assert result["status"] == "ok"
    output = result["stdout"] + result["stderr"]
    assert "/proc/1/environ" in output  # the scan did run
    assert env_secret not in output and "RELAYRL_TEST_SECRET" not in output
    assert file_secret not in output
    assert f"{home_file} FileNotFoundError" in output


def test_loopback_tcp_to_the_host_is_refused(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        result = run_sandbox_cli(
            tmp_path,
            f"""
            import socket
            print(sorted(name for _index, name in socket.if_nameindex()))
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2)
                print("CONNECTED")
            except OSError as error:
                print(type(error).__name__)
            """,
        )
        listener.settimeout(0.5)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert result["status"] == "ok"
    assert result["stdout"] == "['lo']\nConnectionRefusedError\n"


def test_dns_does_not_resolve(tmp_path: Path) -> None:
    code = """
    import socket
    try:
        print(socket.getaddrinfo("example.com", 80))
    except OSError as error:
        print(type(error).__name__)
    """
    result = run_sandbox_cli(tmp_path, code)
    assert (result["status"], result["stdout"]) == ("ok", "gaierror\n")


def test_udp_to_the_host_never_arrives(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        port = receiver.getsockname()[1]
        code = f"""
        import socket
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(10):
            sender.sendto(b"leak", ("127.0.0.1", {port}))
        print("sent")
        """
        result = run_sandbox_cli(tmp_path, code)
        receiver.settimeout(0.5)
        with pytest.raises(TimeoutError):
            receiver.recvfrom(100)
    assert result["status"] == "ok"


def test_daemon_does_not_outlive_the_sandbox(tmp_path: Path, marker: str) -> None:
    result = run_sandbox_cli(
        tmp_path,
        f"""
        import os, signal
        if os.fork() == 0:
            os.setsid()
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            if os.fork() == 0:
                os.closerange(0, 3)
                {spawn_marked_sleeper(marker)}
            os._exit(0)
        os.wait()
        print("daemonized")
        """,
    )
    assert (result["status"], result["stdout"]) == ("ok", "daemonized\n")
    assert host_processes_with(marker) == []


def test_killing_the_parent_reaches_nothing_outside(
    tmp_path: Path, host_sentinel: subprocess.Popen[bytes]
) -> None:
    code = "import os\nos.kill(os.getppid(), 9)\nprint('still here', os.getppid())\n"
    result = run_sandbox_cli(tmp_path, code)
    assert (result["status"], result["stdout"]) == ("ok", "still here 1\n")
    assert host_sentinel.poll() is None


def test_signalling_every_process_reaches_nothing_outside(
    tmp_path: Path, host_sentinel: subprocess.Popen[bytes]
) -> None:
    code = """
    import os, time
    child = os.fork()
    if child == 0:
        time.sleep(60)
    os.kill(-1, 9)
    print("still here; child", os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]))
    """
    result = run_sandbox_cli(tmp_path, code)
    assert (result["status"], result["stdout"]) == ("ok", "still here; child -9\n")
    assert host_sentinel.poll() is None


def test_new_namespaces_are_refused(tmp_path: Path) -> None:
    result = run_sandbox_cli(
        tmp_path,
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
        for flag in (CLONE_NEWUSER, CLONE_NEWNET):
            print(libc.unshare(flag), os.strerror(ctypes.get_errno()) != "Success")
        """,
    )
    assert (result["status"], result["stdout"]) == ("ok", "-1 True\n-1 True\n")


def test_killed_cli_leaves_no_process(tmp_path: Path, marker: str) -> None:
    program = tmp_path / "sleeper.py"
    program.write_text(f"import os\n{spawn_marked_sleeper(marker)}\n")
    cli = subprocess.Popen([*SANDBOX_CLI, "run", "--timeout", "60", str(program)])
    try:
        deadline = time.monotonic() + 10
        while not host_processes_with(marker):
            assert time.monotonic() < deadline, "the sandboxed sleeper never started"
            time.sleep(0.05)
    finally:
        cli.kill()
        cli.wait()
    deadline = time.monotonic() + 3
    while host_processes_with(marker):
        assert time.monotonic() < deadline, "the sandbox outlived its launcher"
        time.sleep(0.05)
