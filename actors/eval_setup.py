"""From a job config to an evaluation: its plan, its held-out tasks, and a run of it in this
process on the same engine and workflow a rollout worker builds (`relayrl eval`)."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import ValidationError
from transformers import AutoTokenizer

from relayrl.actors.eval_report import build_report
from relayrl.actors.evaluation import (
    EvalItem,
    EvalPlan,
    draw_eval_tasks,
    play_eval,
    workflow_players,
)
from relayrl.actors.rollout_worker import build_engine
from relayrl.actors.workflow import resolve_workflow
from relayrl.config import JobConfig
from relayrl.envs.registry import resolve_env
from relayrl.errors import JobConfigError
from relayrl.eval_config import EvalConfig


def eval_plan(config: JobConfig) -> EvalPlan:
    """The plan of `config.eval`, or of the defaults when the config has no eval section."""
    section = config.eval or EvalConfig()
    return EvalPlan(
        env_params={**config.env.params, **section.env_params},
        greedy=section.greedy,
        samples=section.samples,
        temperature=section.temperature or config.rollout.sampling.temperature,
        seed=section.seed,
        success_channel=section.success_channel,
        success_threshold=section.success_threshold,
        max_concurrent_episodes=section.max_concurrent_episodes,
    )


def held_out_items(config: JobConfig, plan: EvalPlan) -> list[EvalItem]:
    """The held-out tasks of `plan`, the same wherever they are drawn."""
    spec = resolve_env(config.env.name)
    try:
        params = spec.params_model.model_validate(plan.env_params)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise JobConfigError(
            f"eval.env_params (over env.params): {where}: {first['msg']}"
        ) from None
    section = config.eval or EvalConfig()
    items = draw_eval_tasks(spec.make_tasks(params), section.num_tasks, plan.seed)
    if not items:
        raise JobConfigError(f"env {config.env.name!r} gave no held-out tasks for eval.env_params")
    return items


async def _evaluate(config: JobConfig, model_path: str, label: str) -> dict[str, Any]:
    plan = eval_plan(config)
    items = held_out_items(config, plan)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    engine = build_engine(config, model_path, plan.seed, tokenizer)
    spec = resolve_env(config.env.name)
    workflow = resolve_workflow(config.rollout.workflow)
    try:
        players = workflow_players(workflow, tokenizer, config.rollout, "eval")
        episodes = await play_eval(plan, items, engine, spec, players, tokenizer)
    finally:
        await engine.close()
    return build_report(plan, items, episodes, label)


def evaluate_model(config: JobConfig, model_path: str, label: str) -> dict[str, Any]:
    """The JSON report of `config`'s evaluation of the Hugging Face model at `model_path`."""
    return asyncio.run(_evaluate(config, model_path, label))
