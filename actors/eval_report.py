"""An evaluation's figures (`eval/*` metrics) and its JSON report, from its episodes."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from relayrl.actors.evaluation import EvalEpisode, EvalItem, EvalPlan, Mode
from relayrl.trajectory import NO_VERSION

PREFIX = "eval/"


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of a task with `c` solved episodes out of `n` (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _mode_metrics(mode: Mode, episodes: Sequence[EvalEpisode], k: int) -> dict[str, float]:
    by_task: dict[int, list[EvalEpisode]] = defaultdict(list)
    for episode in episodes:
        by_task[episode.index].append(episode)
    solved = [[e.solved for e in task] for task in by_task.values()]
    count = len(episodes)
    calls = sum(e.tool_calls for e in episodes)
    channels = sorted({name for e in episodes for name in e.reward_channels})
    base = f"{PREFIX}{mode}/"
    metrics = {
        f"{base}pass@1": sum(sum(s) / len(s) for s in solved) / len(solved),
        f"{base}reward/mean": sum(e.reward for e in episodes) / count,
        f"{base}tool_call_rate": sum(e.tool_calls > 0 for e in episodes) / count,
        f"{base}tool_calls_per_episode": calls / count,
        # No call made: nothing failed, but nothing succeeded either.
        f"{base}tool_success_rate": sum(e.tool_successes for e in episodes) / calls
        if calls
        else 0.0,
        f"{base}response_tokens_mean": sum(e.response_tokens for e in episodes) / count,
        f"{base}turns_mean": sum(e.turns for e in episodes) / count,
        f"{base}errors": float(sum(e.error is not None for e in episodes)),
        f"{base}episodes": float(count),
    }
    for name in channels:
        metrics[f"{base}reward/{name}"] = (
            sum(e.reward_channels.get(name, 0.0) for e in episodes) / count
        )
    if mode == "sampled" and k > 1:
        metrics[f"{base}pass@{k}"] = sum(pass_at_k(len(s), sum(s), k) for s in solved) / len(solved)
    return metrics


def summarize(plan: EvalPlan, episodes: Sequence[EvalEpisode]) -> dict[str, float]:
    """`eval/<mode>/...` per mode played, `eval/accuracy` (greedy pass@1 when greedy was
    played, else sampled pass@1), the task count and the newest policy version played."""
    metrics: dict[str, float] = {}
    for mode in ("greedy", "sampled"):
        played = [e for e in episodes if e.mode == mode]
        if played:
            metrics.update(_mode_metrics(mode, played, plan.samples))
    headline = "greedy" if plan.greedy else "sampled"
    metrics[f"{PREFIX}accuracy"] = metrics.get(f"{PREFIX}{headline}/pass@1", 0.0)
    metrics[f"{PREFIX}tasks"] = float(len({e.index for e in episodes}))
    metrics[f"{PREFIX}policy_version"] = float(
        max((e.versions[1] for e in episodes), default=NO_VERSION)
    )
    return metrics


def build_report(
    plan: EvalPlan, items: Sequence[EvalItem], episodes: Sequence[EvalEpisode], model: str
) -> dict[str, Any]:
    """The JSON report: what was evaluated, the figures, and every episode by task."""
    by_task: dict[int, list[EvalEpisode]] = defaultdict(list)
    for episode in sorted(episodes, key=lambda e: (e.index, e.mode, e.sample)):
        by_task[episode.index].append(episode)
    return {
        "model": model,
        "plan": asdict(plan),
        "metrics": summarize(plan, episodes),
        "tasks": [
            {
                "index": item.index,
                "id": item.task.id,
                "answer": item.task.answer,
                "episodes": [_episode_record(e) for e in by_task[item.index]],
            }
            for item in items
        ],
    }


def _episode_record(episode: EvalEpisode) -> dict[str, Any]:
    record = asdict(episode)
    for field in ("index", "task_id"):
        record.pop(field)
    return record
