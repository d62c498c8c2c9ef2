"""relayrl against TRL's GRPOTrainer on the identical task, one after another in one run.

The task (TRL's home ground, as measured in issue #11): SmolLM2-135M-Instruct in fp32,
"What is A + B?" with A, B in 0..99, reward 1 when the last integer of the reply is A + B,
8 prompts x 4 samples per step, at most 32 new tokens, lr 1e-5. TRL runs from its own venv
(`.cache/bench-venv-trl`, built on first use by benchmarks/memory.py's helper: torch pinned
first, then trl); TRL is not a dependency of relayrl. relayrl runs the same task through the
`arithmetic` env in these placements:

- default: relayrl's defaults, nothing set (`rollout.placement: auto` picks colocated on a
  box of up to 4 cores, separate otherwise; on-policy, k=0, transformers engine; one CPU
  learner rank at ZeRO-0 with 512-token micro-batches);
- bf16: the defaults with `model.dtype: bfloat16`, against `trl-bf16` (TRL with `bf16=True`,
  its own default: fp32 weights under bf16 autocast) rather than fp32 TRL;
- colocated: the learner and one in-process worker in one actor, taking turns;
- separate: the defaults with separate actors (two workers beside the learner);
- zero2-4096: the defaults with the learner settings that were the defaults before (ZeRO-2,
  4096-token micro-batches);
- separate-zero2-4096: separate actors with those learner settings;
- separate-threads: the quickstart's separate placement (two workers of one thread, a learner
  of two);
- one-worker: the defaults with one worker of one core;
- sync: on-policy (k=0), one worker;
- vllm: on-policy (k=0), one worker with the vLLM engine (the CPU build here).

TRL runs are `trl` (fp32, the task's precision) and `trl-bf16`. Per run: seconds per step
and completion tokens per second over the steps after the warm-up (completion tokens that
entered training per second of step wall time, the same definition on both sides), trained
tokens per second (prompt and completion), whole-tree peak PSS, and the mean reward of the
last two steps; ratios are to the TRL run of the same precision in the same invocation,
because this machine is shared and noisy.

    .venv/bin/python benchmarks/peer_trl.py [--steps 6] \
        [--runs trl,default,separate,sync,vllm,trl-bf16,bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

# The script's own folder is on sys.path: the PSS sampler and TRL's venv are memory.py's.
from memory import GB, ROOT, PssSampler, ensure_trl_venv, print_processes

PROMPTS = 8
GROUP_SIZE = 4
MAX_NEW_TOKENS = 32
MAX_OPERAND = 99
LR = 1e-5
SYSTEM_PROMPT = "Answer with just the number."
WARMUP_STEPS = 1
# TRL's runs and whether each is bf16; ratios compare runs of one precision, so each relayrl
# run is taken against the TRL run of its own.
TRL_RUNS = {"trl": False, "trl-bf16": True}
BF16_RUNS = {"bf16", "trl-bf16"}

# The learner settings that were the defaults before the one-rank CPU ones (BENCHMARKS.md,
# Memory): ZeRO-2 and 4096-token micro-batches whatever the rank count and device.
ZERO2_4096 = ["learner.zero_stage=2", "learner.micro_batch_tokens=4096"]

PLACEMENTS: dict[str, list[str]] = {
    "default": [],
    "colocated": ["rollout.placement=colocated"],
    "separate": ["rollout.placement=separate"],
    "zero2-4096": ZERO2_4096,
    "separate-zero2-4096": ["rollout.placement=separate", *ZERO2_4096],
    "separate-threads": [
        "rollout.placement=separate",
        "learner.torch_threads=2",
        "rollout.torch_threads=1",
    ],
    "one-worker": ["rollout.num_workers=1", "rollout.cpus_per_worker=1"],
    "sync": ["trainer.max_staleness=0", "rollout.num_workers=1", "rollout.cpus_per_worker=1"],
    "bf16": ["model.dtype=bfloat16"],
    "vllm": [
        "trainer.max_staleness=0",
        "rollout.engine=vllm",
        "rollout.num_workers=1",
        "rollout.cpus_per_worker=1",
    ],
}


def steady(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    return rows[WARMUP_STEPS:] or rows


def summarize(rows: list[dict[str, float]], peak_pss: float, wall: float) -> dict[str, float]:
    """Figures from per-step rows of {step_s, completion_tokens, tokens, reward}."""
    kept = steady(rows)
    seconds = sum(r["step_s"] for r in kept)
    return {
        "s_per_step": statistics.mean(r["step_s"] for r in kept),
        "completion_tok_s": sum(r["completion_tokens"] for r in kept) / seconds,
        "trained_tok_s": sum(r["tokens"] for r in kept) / seconds,
        "peak_pss_gb": peak_pss / GB,
        "reward_end": statistics.mean(r["reward"] for r in rows[-2:]),
        "wall_s": wall,
    }


def run_relayrl(model: str, placement: str, steps: int, root: Path) -> dict[str, float]:
    from relayrl.cluster.job import run_job
    from relayrl.config_loader import load_config
    from relayrl.metrics import read_metrics

    config = load_config(
        None,
        [
            f"name=peer-trl-{placement}",
            f"model.path={model}",
            f"rollout.group_size={GROUP_SIZE}",
            f"rollout.sampling.max_new_tokens={MAX_NEW_TOKENS}",
            "rollout.sampling.temperature=1.0",
            "env.name=arithmetic",
            f"env.params.max_operand={MAX_OPERAND}",
            "env.params.operators=[+]",
            "env.params.answer_format=last_number",
            f"env.params.system_prompt={SYSTEM_PROMPT}",
            f"learner.lr={LR}",
            f"trainer.steps={steps}",
            f"trainer.prompts_per_step={PROMPTS}",
            f"output.dir={root}/{placement}",
            "output.tensorboard=false",
            "output.plot=false",
            *PLACEMENTS[placement],
        ],
    )
    started = time.perf_counter()
    with PssSampler(os.getpid()) as sampler:
        result = run_job(config)
    wall = time.perf_counter() - started
    records = read_metrics(result.metrics)
    print_processes(f"relayrl {placement}", sampler, wall)
    # Where a steady step's time goes: waiting for the batch (generation, when colocated) and
    # the learner's own work.
    for key in ("time/wait_batch_s", "time/train_s", "time/publish_s", "time/engine_drain_s"):
        figures = [r[key] for r in steady(records) if key in r]
        if figures:
            print(f"{placement} {key}: {statistics.mean(figures):.1f}")
    rows = [
        {
            "step_s": r["time/step_s"],
            "completion_tokens": r["batch/sampled_tokens"],
            "tokens": r["batch/total_tokens"],
            "reward": r["reward/mean"],
        }
        for r in records
    ]
    return summarize(rows, sampler.total_peak, wall)


def trl_run_for(name: str) -> str:
    return "trl-bf16" if name in BF16_RUNS else "trl"


def run_trl(model: str, steps: int, bf16: bool) -> dict[str, float]:
    python = ensure_trl_venv()
    command = [
        str(python),
        str(ROOT / "benchmarks" / "trl_grpo_task.py"),
        f"--model={model}",
        f"--steps={steps}",
        f"--prompts={PROMPTS}",
        f"--group-size={GROUP_SIZE}",
        f"--max-new-tokens={MAX_NEW_TOKENS}",
        f"--max-operand={MAX_OPERAND}",
        f"--lr={LR}",
        f"--system-prompt={SYSTEM_PROMPT}",
        *(["--bf16"] if bf16 else []),
    ]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    with PssSampler(process.pid) as sampler:
        stdout, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"TRL run failed with exit status {process.returncode}")
    wall = time.perf_counter() - started
    report = json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])
    rows, seen = [], 0.0
    for step in report["steps"]:
        rows.append(
            {
                "step_s": step["step_time"],
                "completion_tokens": step["completions/mean_length"] * PROMPTS * GROUP_SIZE,
                "tokens": step["num_tokens"] - seen,
                "reward": step["reward"],
            }
        )
        seen = step["num_tokens"]
    return summarize(rows, sampler.total_peak, wall)


def print_table(results: dict[str, dict[str, float]]) -> None:
    print(
        "| run | s/step | completion tok/s | vs TRL | trained tok/s | vs TRL "
        "| peak PSS GB | vs TRL | reward (last 2 steps) | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, row in results.items():
        trl = results.get(trl_run_for(name))

        def ratio(key: str, row: dict[str, float] = row, trl: dict[str, float] | None = trl) -> str:
            return f"{row[key] / trl[key]:.2f}x" if trl else "-"

        print(
            f"| {name} | {row['s_per_step']:.1f} | {row['completion_tok_s']:.1f} "
            f"| {ratio('completion_tok_s')} | {row['trained_tok_s']:.0f} "
            f"| {ratio('trained_tok_s')} | {row['peak_pss_gb']:.2f} | {ratio('peak_pss_gb')} "
            f"| {row['reward_end']:.2f} | {row['wall_s']:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--runs", default="trl,default,separate,sync,vllm")
    args = parser.parse_args()
    from relayrl.models import resolve_model

    model = resolve_model(args.model)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as root:
        for name in args.runs.split(","):
            print(f"[peer_trl] running {name}", flush=True)
            if name in TRL_RUNS:
                results[name] = run_trl(model, args.steps, bf16=TRL_RUNS[name])
            else:
                results[name] = run_relayrl(model, name, args.steps, Path(root))
            # Each run's figures as soon as it ends, so a run cut short keeps the earlier ones.
            print(f"[peer_trl] {name}: {json.dumps(results[name])}", flush=True)
    print_table(results)


if __name__ == "__main__":
    main()
