"""A Ray cluster of several nodes on this machine, each started with `ray start --block` on ports
of its own: the head (with the dashboard, so `ray job submit` works) and worker nodes joining it,
each with its own CPUs and a custom resource naming it. A node can be started on another
loopback address (127.0.0.2 looks like a second machine) and killed alone, as a lost machine is.
Every process belongs to a node started here and is ended by its pid; nothing else is touched."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ray.util.state import list_nodes

from relayrl.cluster.stray_processes import die_with_parent, is_running, pids_where
from relayrl.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
RAY = str(ROOT / ".venv" / "bin" / "ray")
START_S = 120
LOG_TAIL_CHARS = 3000


@dataclass
class Node:
    name: str
    ip: str
    process: subprocess.Popen[bytes]


@dataclass
class LocalCluster:
    """Nodes joined to one head; `stop()` ends every process any of them started."""

    temp_dir: Path
    logs: Path
    nodes: dict[str, Node] = field(default_factory=dict)
    gcs_port: int = 0
    dashboard_port: int = 0

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(ROOT),  # rollout workers import the tests' plugin envs
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            # A killed node is declared dead in seconds, not the default half minute.
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
            "RAY_health_check_initial_delay_ms": "1000",
        }

    def _ports(self) -> list[str]:
        named = [
            "--node-manager-port",
            "--object-manager-port",
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port",
            "--metrics-export-port",
        ]
        return [f"{flag}={free_port()}" for flag in named]

    def _start(self, name: str, ip: str, cpus: int, role: list[str]) -> Node:
        """Start a node; one whose `ray start` exits at once is started again on fresh ports,
        since `free_port` only promises a port was free a moment ago (another process on this
        machine may bind it first). A second early exit fails with the end of its log."""
        node = self._launch(name, ip, cpus, role)
        if not self._wait_until_alive(node):
            node = self._launch(name, ip, cpus, role)
            if not self._wait_until_alive(node):
                raise AssertionError(
                    f"ray start of {name} exited {node.process.returncode}:\n{self._log_tail(name)}"
                )
        return node

    def _launch(self, name: str, ip: str, cpus: int, role: list[str]) -> Node:
        log = self._log_path(name).open("ab")
        args = [
            RAY, "start", "--block", "--disable-usage-stats",
            f"--node-ip-address={ip}", f"--num-cpus={cpus}", "--num-gpus=0",
            f"--resources={json.dumps({f'rehearsal_{name}': 1})}",
            "--object-store-memory=100000000", f"--temp-dir={self.temp_dir}",
            *self._ports(), *role,
        ]  # fmt: skip
        process = subprocess.Popen(
            args, cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed alone, as a lost host is
            preexec_fn=die_with_parent(signal.SIGKILL),  # and never outlives a killed test run
        )  # fmt: skip
        node = Node(name, ip, process)
        self.nodes[name] = node
        return node

    def _log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def _log_tail(self, name: str) -> str:
        return self._log_path(name).read_text(errors="replace")[-LOG_TAIL_CHARS:]

    def start_head(self, cpus: int) -> Node:
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        role = [
            "--head", f"--port={self.gcs_port}", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}",
        ]  # fmt: skip
        return self._start("head", "127.0.0.1", cpus, role)

    def join(self, name: str, cpus: int, ip: str = "127.0.0.1") -> Node:
        return self._start(name, ip, cpus, [f"--address={self.gcs_address}"])

    def alive(self) -> dict[str, str]:
        """Node name -> Ray node id, for the nodes the head sees alive."""
        found = {}
        for state in list_nodes(address=self.dashboard, detail=True, raise_on_missing_output=False):
            if state.state != "ALIVE":
                continue
            for resource in state.resources_total:
                if resource.startswith("rehearsal_"):
                    found[resource.removeprefix("rehearsal_")] = state.node_id
        return found

    def _wait_until_alive(self, node: Node) -> bool:
        """True once the head sees the node alive; False if its `ray start` exited first."""
        deadline = time.monotonic() + START_S
        while True:
            if node.process.poll() is not None:
                for pid in self._processes_of(node):  # whatever it started before it failed
                    _signal(pid, signal.SIGKILL)
                self.nodes.pop(node.name, None)
                return False
            try:
                if node.name in self.alive():
                    return True
            except Exception:  # the dashboard is still starting
                pass
            assert time.monotonic() < deadline, f"node {node.name} never joined"
            time.sleep(0.5)

    def _processes_of(self, node: Node) -> list[int]:
        """`ray start` and every process of its group (raylet, agents, Ray workers)."""
        return pids_where(lambda pid, argv: _group(pid) == node.process.pid)

    def kill(self, name: str) -> None:
        """SIGKILL a node's whole process group, as a machine that loses power."""
        node = self.nodes.pop(name)
        for pid in self._processes_of(node) or [node.process.pid]:
            _signal(pid, signal.SIGKILL)
        node.process.wait()
        deadline = time.monotonic() + START_S
        while name in self.alive():
            assert time.monotonic() < deadline, f"the head never saw {name} die"
            time.sleep(0.5)

    def stop(self) -> list[int]:
        """End every node (SIGTERM, then SIGKILL what is left); returns what still runs."""
        nodes = list(self.nodes.values())
        self.nodes.clear()
        for node in reversed(nodes):  # worker nodes before the head
            for pid in self._processes_of(node):
                _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5  # `ray start --block` may ignore SIGTERM
        while any(node.process.poll() is None for node in nodes):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for node in nodes:
            for pid in [*self._processes_of(node), node.process.pid]:
                _signal(pid, signal.SIGKILL)
            node.process.wait()
        # Processes that left the groups but ran in this cluster's temp folder.
        marker = str(self.temp_dir)
        strays = pids_where(lambda pid, argv: any(marker in arg for arg in argv))
        for pid in strays:
            _signal(pid, signal.SIGKILL)
        return [pid for pid in strays if is_running(pid)]


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(OSError):  # already gone
        os.kill(pid, sig)
