"""A local run starts its own Ray instance whatever cluster file an earlier `ray start` left,
and that instance listens on loopback only."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import ray
from ray._private import ray_constants

from relayrl.cluster.ray_runtime import ray_session

pytestmark = pytest.mark.slow

# What `ray start` records as the current cluster; nothing listens on port 1.
STALE_ADDRESS = "127.0.0.1:1"


@pytest.fixture
def private_ray_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A Ray temp dir of this test's own (short: Ray puts Unix sockets under it), holding a
    stale current-cluster file; the machine's /tmp/ray and other Ray instances stay untouched."""
    root = Path(tempfile.mkdtemp(prefix="rr-", dir="/tmp"))
    (root / "ray").mkdir()
    (root / "ray" / "ray_current_cluster").write_text(STALE_ADDRESS)
    monkeypatch.setenv("RAY_TMPDIR", str(root))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _listening_sockets(root: psutil.Process) -> set[tuple[int, str, int]]:
    """(pid, ip, port) of every listening TCP socket of `root` and its descendants."""
    pids = {root.pid} | {child.pid for child in root.children(recursive=True)}
    return {
        (conn.pid, conn.laddr.ip, conn.laddr.port)
        for conn in psutil.net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids
    }


def _by_process_name(sockets: set[tuple[int, str, int]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for pid, ip, _ in sockets:
        found.setdefault(psutil.Process(pid).name(), set()).add(ip)
    return found


def test_local_run_ignores_a_stale_cluster_file_and_binds_loopback(
    private_ray_tmp: Path,
) -> None:
    assert not ray.is_initialized()
    # What this test process listened on before (an earlier test's torch TCPStore, say).
    before = _listening_sockets(psutil.Process())
    with ray_session(1) as started:
        assert started
        gcs = ray.get_runtime_context().gcs_address
        assert gcs != STALE_ADDRESS and gcs.startswith("127.0.0.1:")
        # The instance lives under the private temp dir, not beside other Ray instances.
        assert list((private_ray_tmp / "ray").glob("session_*"))

        @ray.remote(num_cpus=1)
        def node_address() -> str:
            return ray.util.get_node_ip_address()

        assert ray.get(node_address.remote(), timeout=120) == "127.0.0.1"
        listening = _by_process_name(_listening_sockets(psutil.Process()) - before)
        assert "gcs_server" in listening and "raylet" in listening
        exposed = {
            name: ips
            for name, ips in listening.items()
            if not ips <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
        }
        assert not exposed, exposed
    assert not ray.is_initialized()
    # A later connection to a real cluster from this process advertises a reachable address.
    assert ray_constants.ENABLE_RAY_CLUSTER
