"""Connect to the Ray cluster named by RAY_ADDRESS, or start (and later stop) a local one."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import ray
from ray._private import ray_constants

from relayrl.models import cache_root

log = logging.getLogger(__name__)

# Named actors (a job's controller) live here, so `relayrl scale` can find them.
NAMESPACE = "relayrl"
# A local instance serves this machine only: nothing of it listens beyond loopback.
LOOPBACK = "127.0.0.1"
# Every relayrl actor gets a process of its own, so workers Ray starts ahead of use stay idle
# for the whole job (about 50 MB each, one per CPU): a local instance starts none.
LOCAL_SYSTEM_CONFIG = {"enable_worker_prestart": False, "prestart_worker_first_driver": False}


# The allocator settings below; a user's own values win.
MALLOC = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def actor_env_vars() -> dict[str, str]:
    """Environment every relayrl actor gets, wherever the cluster runs."""
    env = {
        "TOKENIZERS_PARALLELISM": "false",
        # DeepSpeed JIT-builds ops on first use; a per-project folder builds them once.
        "TORCH_EXTENSIONS_DIR": str(cache_root() / "torch_extensions"),
        # glibc keeps freed memory in its heap (both set, or it maps anything over 128 KiB
        # afresh): the learner frees its gradients every step, and faulting them in again
        # cost ~13% of a CPU step (BENCHMARKS.md).
        "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
        "MALLOC_TRIM_THRESHOLD_": str(16 << 30),
    }
    # RELAYRL_FAULT arms fault points (relayrl/faults.py) in the actors of a test's job.
    passed = ("DS_ACCELERATOR", "RELAYRL_CACHE", "HF_HUB_OFFLINE", "RELAYRL_FAULT", *MALLOC)
    for name in passed:
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def _keeping_signal_handlers(start: Callable[[], object]) -> None:
    """Ray's core worker installs crash handlers for SIGTERM that end the driver at once;
    put ours back so a stop signal unwinds the job and its cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        start()  # only the main thread may set handlers, and it keeps its own
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    start()
    for sig, handler in saved.items():
        if handler is not None:
            signal.signal(sig, handler)


@contextmanager
def _single_node_addresses() -> Iterator[None]:
    """Ray turns a loopback node address into the machine's own unless it runs as a
    single-node instance (its mode for laptops); only then do its servers bind loopback.
    The switch matters while the node starts; put it back so a later connection to a
    cluster in this process advertises a reachable address."""
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _start_local(num_cpus: int | None, env_vars: dict[str, str]) -> None:
    # "local" always starts a new instance: without it, a cluster file an earlier
    # `ray start` left in the Ray temp dir makes ray.init join that cluster instead.
    with _single_node_addresses():
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            _node_ip_address=LOOPBACK,
            runtime_env={"env_vars": env_vars},
            log_to_driver=True,
            configure_logging=False,
            namespace=NAMESPACE,
            _system_config=LOCAL_SYSTEM_CONFIG,
        )


def connect_to_job(address: str) -> None:
    """Join the Ray instance at `address` as a client of the job running there."""
    # A job's own local instance listens on loopback only: Ray must not swap that address for
    # the machine's, or the client waits on a port nothing listens on.
    loopback = address.rpartition(":")[0] == LOOPBACK
    with _single_node_addresses() if loopback else nullcontext():
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, configure_logging=False)


@contextmanager
def ray_session(num_cpus: int | None) -> Iterator[bool]:
    """Yields True when this process started the Ray instance it is connected to."""
    if ray.is_initialized():
        yield False
        return
    env_vars = actor_env_vars()
    Path(env_vars["TORCH_EXTENSIONS_DIR"]).mkdir(parents=True, exist_ok=True)
    if os.environ.get("RAY_ADDRESS"):
        _keeping_signal_handlers(
            lambda: ray.init(
                runtime_env={"env_vars": env_vars}, log_to_driver=True, namespace=NAMESPACE
            )
        )
        log.info("connected to Ray at %s", os.environ["RAY_ADDRESS"])
        try:
            yield False
        finally:
            ray.shutdown()
        return
    # A stray ~/.ray/auth_token would otherwise switch a private local cluster to token auth.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    _keeping_signal_handlers(lambda: _start_local(num_cpus, env_vars))
    log.info("started a local Ray instance (%s CPUs)", ray.cluster_resources().get("CPU"))
    try:
        yield True
    finally:
        ray.shutdown()
