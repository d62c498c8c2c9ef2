"""Finding the host processes sandboxed code leaves behind: a sleeper whose argv carries a
marker, and the host pids whose command line holds it."""

from __future__ import annotations

from pathlib import Path


def host_processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


def spawn_marked_sleeper(marker: str) -> str:
    """Sandbox code (one line, needs `os`) that becomes a long sleep whose argv carries `marker`."""
    argv = ["python3", "-c", "import time; time.sleep(120)", marker]
    return f"os.execv('/usr/bin/python3', {argv!r})"
