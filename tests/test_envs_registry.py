"""Environments by name, by `module:SPEC`, or by `module:Class`; every example's params valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayrl.config_loader import load_config
from relayrl.envs.registry import EnvConfigError, resolve_env, validate_env_params
from tests.agent_plugin_envs import PythonEveryTurn, PythonEveryTurnParams

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


class NotAnEnv:
    """A class that names no params model or task source."""


def test_an_env_class_plugs_in_by_module_and_class() -> None:
    spec = resolve_env("tests.agent_plugin_envs:PythonEveryTurn")
    assert spec.params_model is PythonEveryTurnParams
    assert spec.make_env is PythonEveryTurn
    assert spec.stop_strings(PythonEveryTurnParams()) == ()
    params = validate_env_params("tests.agent_plugin_envs:PythonEveryTurn", {"tool_turns": 1})
    assert isinstance(spec.make_env(params), PythonEveryTurn)


def test_a_class_without_the_protocol_is_named() -> None:
    with pytest.raises(EnvConfigError, match="NotAnEnv lacks params_model, make_tasks"):
        resolve_env("tests.test_envs_registry:NotAnEnv")
    with pytest.raises(EnvConfigError, match="not an EnvSpec or an Env class"):
        resolve_env("tests.test_envs_registry:EXAMPLES")


@pytest.mark.parametrize(
    "name", ["arithmetic", "countdown", "math-feedback", "math-python", "text-to-sql"]
)
def test_builtin_environments_are_registered(name: str) -> None:
    spec = resolve_env(name)
    assert spec.make_tasks(spec.params_model()) is not None


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_names_a_valid_environment(example: str) -> None:
    config = load_config(EXAMPLES / example)
    validate_env_params(config.env.name, config.env.params)


@pytest.mark.parametrize(
    "name", ["arithmetic", "countdown", "math-feedback", "math-python", "text-to-sql"]
)
@pytest.mark.parametrize("weight", [float("nan"), float("inf"), "-inf"])
def test_a_non_finite_reward_weight_is_refused_at_load(name: str, weight: object) -> None:
    with pytest.raises(EnvConfigError, match=r"reward_weights\.correct: .*finite number"):
        validate_env_params(name, {"reward_weights": {"correct": weight}})
