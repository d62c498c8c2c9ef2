"""Find an environment by registered name or by `package.module:attribute`."""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel, ValidationError

from relayrl.envs.base import EnvSpec, spec_from_class
from relayrl.errors import JobConfigError

_REGISTRY: dict[str, EnvSpec] = {}
_BUILTIN_MODULES = (
    "relayrl.envs.arithmetic",
    "relayrl.envs.countdown",
    "relayrl.envs.dataset_env",
    "relayrl.envs.math_feedback",
    "relayrl.envs.math_python",
    "relayrl.envs.text_to_sql",
)


class EnvConfigError(JobConfigError):
    """The environment name or its parameters are wrong; the message says which."""


def register_env(name: str, spec: EnvSpec) -> EnvSpec:
    if name in _REGISTRY and _REGISTRY[name] is not spec:
        raise ValueError(f"environment {name!r} is already registered")
    _REGISTRY[name] = spec
    return spec


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def resolve_env(name: str) -> EnvSpec:
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise EnvConfigError(f"env.name {name!r}: cannot import it ({exc})") from exc
        if isinstance(target, EnvSpec):
            return target
        if isinstance(target, type):
            try:
                return spec_from_class(target)
            except TypeError as exc:
                raise EnvConfigError(f"env.name {name!r}: {exc}") from exc
        raise EnvConfigError(
            f"env.name {name!r} is a {type(target).__name__}, not an EnvSpec or an Env class"
        )
    _load_builtins()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise EnvConfigError(f"env.name {name!r} is not registered (known: {known})")
    return _REGISTRY[name]


def validate_env_params(name: str, params: dict[str, Any]) -> BaseModel:
    spec = resolve_env(name)
    try:
        return spec.params_model.model_validate(params)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        raise EnvConfigError(f"env.params.{field}: {message}") from None
