from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Local test clusters never use token auth, whatever ~/.ray holds.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Where the install promises vLLM (CI sets RELAYRL_REQUIRE_VLLM), a broken vLLM must fail
    the run, not turn every vLLM test into a skip."""
    if os.environ.get("RELAYRL_REQUIRE_VLLM") != "1":
        return
    try:
        import vllm  # noqa: F401
    except Exception as error:
        message = f"RELAYRL_REQUIRE_VLLM=1 but vllm does not import: {error!r}"
        raise pytest.UsageError(message) from error


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    from relayrl.tiny_model import build_tiny_model

    target = tmp_path_factory.mktemp("tiny-model")
    build_tiny_model(target)
    return str(target)


@pytest.fixture(scope="module")
def ray_instance(request: pytest.FixtureRequest) -> Iterator[None]:
    """A local Ray for the tests of one module, stopped after them: `RAY_CPUS` CPUs where the
    module sets it, else two. The one Ray fixture of the suite, so every module starts and
    stops Ray the same way."""
    from relayrl.cluster.ray_runtime import ray_session

    with ray_session(getattr(request.module, "RAY_CPUS", 2)):
        yield


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator:
    from relayrl.cluster.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def observed_run(tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """The one short real job (tests/observed_run.py) that the metrics-contract, observability
    and Redis-password tests read, run once for the session."""
    from tests.observed_run import run_observed_job

    yield from run_observed_job(tiny_model_path, tmp_path_factory.mktemp("observed"))
