"""Held-out evaluation in one process on the real tiny model: the same engine and agent loop
a rollout worker builds, the figures it reports, seeded reproducibility, and `relayrl eval`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from relayrl.actors.agent_loop import AgentLoop
from relayrl.actors.engine import Completion, SamplingSettings
from relayrl.actors.eval_report import pass_at_k, summarize
from relayrl.actors.eval_setup import eval_plan, evaluate_model, held_out_items
from relayrl.actors.evaluation import EvalEpisode, play_eval, workflow_players
from relayrl.chat_format import prompt_token_ids
from relayrl.cli import main
from relayrl.config_loader import load_config
from relayrl.envs.registry import resolve_env
from relayrl.trajectory import EpisodeEnd

TINY_EVAL = [
    "eval.num_tasks=3",
    "eval.samples=2",
    "rollout.sampling.max_new_tokens=6",
]


def tiny_config(model: str, tmp_path: Path, *extra: str):
    return load_config(
        None, [f"model.path={model}", f"output.dir={tmp_path}/run", *TINY_EVAL, *extra]
    )


def episode(index: int, mode: str, solved: bool, calls: int = 0, ok: int = 0) -> EvalEpisode:
    return EvalEpisode(
        index=index,
        task_id=f"t{index}",
        mode=mode,  # type: ignore[arg-type]
        sample=0,
        solved=solved,
        reward=float(solved),
        reward_channels={"correct": float(solved)},
        tool_calls=calls,
        tool_successes=ok,
        turns=1 + calls,
        response_tokens=10,
        finish_reason="stop",
        error=None,
        transcript="",
        versions=(3, 3),
    )


def test_pass_at_k_is_the_unbiased_estimator() -> None:
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 1, 1) == 0.25
    assert pass_at_k(4, 1, 4) == 1.0
    # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert abs(pass_at_k(5, 2, 2) - 0.7) < 1e-12


def test_summary_counts_tasks_modes_and_tools(tiny_model_path, tmp_path) -> None:
    plan = eval_plan(tiny_config(tiny_model_path, tmp_path))
    episodes = [
        episode(0, "greedy", True, calls=2, ok=1),
        episode(1, "greedy", False),
        episode(0, "sampled", True, calls=1, ok=1),
        episode(0, "sampled", False),
        episode(1, "sampled", False),
        episode(1, "sampled", False),
    ]
    metrics = summarize(plan, episodes)
    assert metrics["eval/greedy/pass@1"] == 0.5
    assert metrics["eval/accuracy"] == 0.5
    assert metrics["eval/sampled/pass@1"] == 0.25
    assert metrics["eval/sampled/pass@2"] == 0.5
    assert metrics["eval/greedy/tool_call_rate"] == 0.5
    assert metrics["eval/greedy/tool_success_rate"] == 0.5
    assert metrics["eval/sampled/tool_success_rate"] == 1.0
    assert metrics["eval/sampled/reward/correct"] == 0.25
    assert metrics["eval/tasks"] == 2
    assert metrics["eval/policy_version"] == 3


def test_held_out_tasks_are_distinct_and_fixed_by_the_seed(tiny_model_path, tmp_path) -> None:
    config = tiny_config(tiny_model_path, tmp_path, "eval.num_tasks=20")
    first = held_out_items(config, eval_plan(config))
    again = held_out_items(config, eval_plan(config))
    assert [i.task.id for i in first] == [i.task.id for i in again]
    assert len({i.task.id for i in first}) == 20
    other = tiny_config(tiny_model_path, tmp_path, "eval.num_tasks=20", "eval.seed=1")
    assert [i.task.id for i in held_out_items(other, eval_plan(other))] != [
        i.task.id for i in first
    ]


def test_same_seed_same_report_and_greedy_is_the_argmax(tiny_model_path, tmp_path) -> None:
    config = tiny_config(tiny_model_path, tmp_path)
    first = evaluate_model(config, tiny_model_path, "base")
    second = evaluate_model(config, tiny_model_path, "base")
    assert first == second
    assert first["metrics"]["eval/greedy/episodes"] == 3
    assert first["metrics"]["eval/sampled/episodes"] == 6
    reseeded = evaluate_model(
        tiny_config(tiny_model_path, tmp_path, "eval.seed=5"), tiny_model_path, "base"
    )
    sampled = [
        [e["transcript"] for e in task["episodes"] if e["mode"] == "sampled"]
        for report in (first, reseeded)
        for task in report["tasks"]
    ]
    assert sampled[:3] != sampled[3:]

    # The greedy episode is what transformers' own greedy decoding produces.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    item = held_out_items(config, eval_plan(config))[0]
    prompt = prompt_token_ids(tokenizer, item.task.messages)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=6, do_sample=False, eos_token_id=None
        )
    expected = tokenizer.decode(out[0, len(prompt) :].tolist())
    greedy = next(e for e in first["tasks"][0]["episodes"] if e["mode"] == "greedy")
    # The engine may stop early at an end-of-sequence token that generate() runs past.
    assert greedy["transcript"] and expected.startswith(greedy["transcript"])


def test_cli_evaluates_a_checkpoint_folder_into_a_json_report(
    tiny_model_path, tmp_path, capsys
) -> None:
    checkpoint = tmp_path / "checkpoints" / "step_000002"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    model.save_pretrained(checkpoint / "hf")
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(checkpoint / "hf")
    args = [
        f"--set={o}"
        for o in [f"model.path={tiny_model_path}", f"output.dir={tmp_path}/run", *TINY_EVAL]
    ]
    assert main(["eval", "/dev/null", "--checkpoint", str(checkpoint), *args]) == 0
    report = json.loads((tmp_path / "run" / "eval" / "step_000002.json").read_text())
    assert report["model"] == "step_000002"
    assert len(report["tasks"]) == 3
    assert "step_000002: 3 tasks accuracy=" in capsys.readouterr().out
    assert main(["eval", "/dev/null", "--checkpoint", str(tmp_path), *args]) == 2


class ReplyEngine:
    """Writes the model's side of a math-python episode: Python first, then a boxed 42.
    The code depends on the question, so one task's tool call succeeds and the other's fails;
    everything else (agent loop, env, sandbox, verifier, report) is the real thing."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.version = 0

    async def generate(
        self, prompt_ids: list[int], settings: SamplingSettings, n: int
    ) -> list[Completion]:
        prompt = self.tokenizer.decode(prompt_ids)
        if prompt.count("<|im_start|>assistant") > 1:  # the tool has answered
            reply = "So \\boxed{42}."
        elif "6 * 7" in prompt:
            reply = "```python\nprint(6 * 7)\n```\n"
        else:
            reply = "```python\nprint(1 / 0)\n```\n"
        ids = self.tokenizer.encode(reply, add_special_tokens=False)
        return [Completion(ids, [0.0] * len(ids), EpisodeEnd.STOP, [0] * len(ids))] * n

    async def update_weights(self, state: Any, version: int) -> None:
        raise AssertionError("not used")

    async def close(self) -> None:
        """Nothing to release."""


def test_tool_calls_and_their_outcomes_are_counted_per_episode(tiny_model_path, tmp_path) -> None:
    tasks = tmp_path / "heldout.jsonl"
    tasks.write_text(
        '{"question": "What is 6 * 7?", "answer": "42"}\n'
        '{"question": "What is 1 / 0?", "answer": "undefined"}\n'
    )
    config = tiny_config(
        tiny_model_path,
        tmp_path,
        "env.name=math-python",
        f"eval.env_params.tasks_file={tasks}",
        "eval.samples=1",
        "rollout.sampling.max_new_tokens=32",
    )
    plan = eval_plan(config)
    items = held_out_items(config, plan)
    assert sorted(item.task.answer for item in items) == ["42", "undefined"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    players = workflow_players(AgentLoop, tokenizer, config.rollout, "test")
    spec = resolve_env("math-python")
    episodes = asyncio.run(play_eval(plan, items, ReplyEngine(tokenizer), spec, players, tokenizer))
    metrics = summarize(plan, episodes)
    for mode in ("greedy", "sampled"):
        assert metrics[f"eval/{mode}/tool_call_rate"] == 1.0
        assert metrics[f"eval/{mode}/tool_calls_per_episode"] == 1.0
        assert metrics[f"eval/{mode}/tool_success_rate"] == 0.5
        assert metrics[f"eval/{mode}/pass@1"] == 0.5
        assert metrics[f"eval/{mode}/reward/tool_success"] == 0.5
        assert metrics[f"eval/{mode}/turns_mean"] == 2.0
    solved = next(e for e in episodes if e.solved)
    assert "```output\n42\n```" in solved.transcript and solved.tool_successes == 1
