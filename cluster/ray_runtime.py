"""Connect to the Ray cluster named by RAY_ADDRESS, or start (and later stop) a local one."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

from relayrl.models import cache_root

log = logging.getLogger(__name__)

# Named actors (a job's controller) live here, so `relayrl scale` can find them.
NAMESPACE = "relayrl"


def actor_env_vars() -> dict[str, str]:
    """Environment every relayrl actor gets, wherever the cluster runs."""
    env = {
        "TOKENIZERS_PARALLELISM": "false",
        # DeepSpeed JIT-builds ops on first use; a per-project folder builds them once.
        "TORCH_EXTENSIONS_DIR": str(cache_root() / "torch_extensions"),
    }
    for name in ("DS_ACCELERATOR", "RELAYRL_CACHE", "HF_HUB_OFFLINE"):
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
    _keeping_signal_handlers(
        lambda: ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            runtime_env={"env_vars": env_vars},
            log_to_driver=True,
            configure_logging=False,
            namespace=NAMESPACE,
        )
    )
    log.info("started a local Ray instance (%s CPUs)", ray.cluster_resources().get("CPU"))
    try:
        yield True
    finally:
        ray.shutdown()
