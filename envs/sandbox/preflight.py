"""Refuse, before anything starts, a job whose env runs code in a sandbox weaker than asked."""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import BaseModel

from relayrl.config import JobConfig
from relayrl.envs.registry import EnvConfigError, validate_env_params
from relayrl.envs.sandbox.confinement import require_confinements
from relayrl.envs.sandbox.params import SandboxParams
from relayrl.envs.sandbox.tools import SandboxUnavailable
from relayrl.errors import JobConfigError


def sandbox_preflight(config: JobConfig) -> None:
    """Raise JobConfigError naming `env.params...allow_weaker` if the env sandboxes code and this
    host lacks a confinement; with allow_weaker true, log what is missing once instead."""
    try:
        params = validate_env_params(config.env.name, config.env.params)
    except EnvConfigError as error:
        raise JobConfigError(str(error)) from None
    for path, sandbox in _sandbox_params(params, "env.params"):
        try:
            require_confinements(sandbox.allow_weaker, f"{path}.allow_weaker")
        except SandboxUnavailable as error:
            message = f"env.name {config.env.name!r} needs the sandbox: {error}"
            raise JobConfigError(message) from None


def _sandbox_params(model: BaseModel, path: str) -> Iterator[tuple[str, SandboxParams]]:
    for name, value in model:
        if isinstance(value, SandboxParams):
            yield f"{path}.{name}", value
        elif isinstance(value, BaseModel):
            yield from _sandbox_params(value, f"{path}.{name}")
