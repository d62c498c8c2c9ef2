"""One learner step on TRL's task, timed phase by phase, against the fp32/bf16 GEMM ceiling.

The batch is TRL's: SmolLM2-135M-Instruct, 8 prompts "What is A + B?" (A, B in 0..99) x 4
samples of at most 32 new tokens, sampled once per dtype by relayrl's transformers engine and
reused by every variant. Each variant is a fresh process that builds one learner rank
(DeepSpeed ZeRO-0, 512-token micro-batches unless told, 2 torch threads, no Ray), runs a
warm-up step on one group and `--steps` timed `train_step`s on the same batch, and measures a
torch matmul on the same threads in the same process. `--before REV` also runs the learner code
of commit REV (its `git archive`, imported ahead of the working tree), so before and after
share one run.

Training tok/s counts the batch's real tokens; the ceiling is the GEMM rate divided by the
step's matrix FLOPs per token: 6 x parameters (forward and backward, output head included) +
2 x the head (its logits are recomputed in backward). With shared-prompt packing each prompt
runs once for its samples, so the step can beat this per-token ceiling of the padded batch.

    .venv/bin/python benchmarks/learner_step.py [--before REV] [--dtypes float32,bfloat16]
        [--micro-batch-tokens 512,1024,4096]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROMPTS, SAMPLES, MAX_NEW_TOKENS, THREADS = 8, 4, 32, 2


# ---- the batch (sampled once per dtype) ------------------------------------------------------


def make_batch(model: str, dtype: str, path: Path) -> None:
    """TRL's task sampled by relayrl's transformers engine; tokens and engine log-probs."""
    import random

    import numpy as np
    from transformers import AutoTokenizer

    from relayrl.actors.engine import SamplingSettings
    from relayrl.actors.hf_engine import TransformersEngine, TransformersSettings

    tokenizer = AutoTokenizer.from_pretrained(model)
    engine = TransformersEngine(
        TransformersSettings(model, dtype=dtype, torch_threads=THREADS, seed=0),
        (tokenizer.eos_token_id,),
    )
    rng = random.Random(0)
    prompts = []
    for _ in range(PROMPTS):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        question = f"What is {a}+{b}? Answer with just the number."
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        prompts.append(tokenizer(text, add_special_tokens=False).input_ids)

    async def sample() -> list[Any]:
        settings = SamplingSettings(max_new_tokens=MAX_NEW_TOKENS, temperature=1.0)
        return await asyncio.gather(*(engine.generate(p, settings, SAMPLES) for p in prompts))

    groups = asyncio.run(sample())
    asyncio.run(engine.close())
    rows = []
    for prompt, completions in zip(prompts, groups, strict=True):
        for completion in completions:
            rows.append((prompt, completion.token_ids, completion.logprobs))
    np.savez(
        path,
        **{f"prompt{i}": np.array(p) for i, (p, _, _) in enumerate(rows)},
        **{f"completion{i}": np.array(c) for i, (_, c, _) in enumerate(rows)},
        **{f"logprobs{i}": np.array(lp, dtype=np.float32) for i, (_, _, lp) in enumerate(rows)},
    )


def load_trajectories(path: Path) -> list[Any]:
    import numpy as np

    from relayrl.trajectory import Trajectory

    data = np.load(path)
    made = []
    for i in range(PROMPTS * SAMPLES):
        prompt, completion = data[f"prompt{i}"], data[f"completion{i}"]
        mask = np.r_[np.zeros(len(prompt)), np.ones(len(completion))].astype(np.uint8)
        made.append(
            Trajectory(
                group_id=f"g{i // SAMPLES}",
                tokens=np.r_[prompt, completion].astype(np.int32),
                prompt_len=len(prompt),
                loss_mask=mask,
                logprobs=np.r_[np.zeros(len(prompt)), data[f"logprobs{i}"]].astype(np.float32),
                versions=np.where(mask > 0, 0, -1).astype(np.int32),
                # Rewards that vary inside every group, so every sequence has an advantage.
                reward=float((i * 7 + i // SAMPLES) % 3 == 0),
            )
        )
    return made


# ---- one variant (runs in its own process) ---------------------------------------------------


def gemm_rate(dtype: Any, size: int = 2048, repeats: int = 8) -> float:
    """FLOP/s of a square matmul on this process's torch threads."""
    import torch

    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started)


# Phase name -> the DeepSpeed engine method it times.
PHASES = {"forward": "forward", "backward": "backward", "optimizer step": "step"}


class PhaseClock:
    """Wall seconds inside the engine's forward, backward and step calls."""

    def __init__(self, engine: Any) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        for name, attr in PHASES.items():
            setattr(engine, attr, self._timed(name, getattr(engine, attr)))

    def _timed(self, name: str, call: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started

        return timed

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)


def op_table(learner: Any, rows: int = 14) -> list[tuple[str, float]]:
    """One more step under torch.profiler: the ops with the most self CPU seconds."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        learner.train_step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / 1e6) for e in events[:rows]]


def run_variant(
    model: str, dtype: str, batch: Path, steps: int, with_ops: bool, micro_tokens: int
) -> dict[str, Any]:
    import torch

    from relayrl.config_loader import load_config
    from relayrl.learner.batching import pad_rows
    from relayrl.learner.deepspeed_learner import DeepSpeedLearner
    from relayrl.ports import free_port

    config = load_config(
        str(ROOT / "examples" / "quickstart.yaml"),
        [
            f"model.path={model}",
            f"model.dtype={dtype}",
            "learner.zero_stage=0",
            f"learner.micro_batch_tokens={micro_tokens}",
            f"learner.torch_threads={THREADS}",
            "learner.lr=1e-5",
            f"rollout.group_size={SAMPLES}",
            f"trainer.prompts_per_step={PROMPTS}",
            f"output.dir={tempfile.mkdtemp()}",
        ],
    )
    learner = DeepSpeedLearner(config, model, 0, None, None)
    learner.setup("127.0.0.1", free_port())
    trajectories = load_trajectories(batch)
    assert learner.update is not None
    # The engine's sampled log-probs against the learner's, on the policy that sampled them.
    padded = pad_rows(trajectories, slice(None), learner.pad_id)
    recomputed = learner.update.policy_logprobs(padded).float()
    on = padded.loss_mask > 0
    gap = (recomputed - padded.old_logprobs).abs()[on]
    clock = PhaseClock(learner.engine)
    # A warm-up step on one group allocates the optimizer state and the step's buffers.
    learner._shared_batch = lambda: (trajectories[:SAMPLES], [])  # type: ignore[method-assign]
    learner.train_step()
    clock.reset()
    learner._shared_batch = lambda: (trajectories, [])  # type: ignore[method-assign]
    seconds = []
    for _ in range(steps):
        metrics = learner.train_step()
        seconds.append(metrics["time/train_s"])
    parameters = sum(p.numel() for p in learner.engine.module.parameters())
    head = learner.engine.module.get_output_embeddings().weight.numel()
    tokens = sum(len(t.tokens) for t in trajectories)
    step_s = sum(seconds) / len(seconds)
    flops_per_token = 6 * parameters + 2 * head
    ops = op_table(learner) if with_ops else []
    rate = gemm_rate(torch.bfloat16 if dtype == "bfloat16" else torch.float32)
    torch.distributed.destroy_process_group()
    return {
        "step_s": step_s,
        "phases_s": {k: v / steps for k, v in clock.seconds.items()},
        "tokens": tokens,
        "completion_tokens": int(padded.loss_mask.sum()),
        "tok_s": tokens / step_s,
        "ceiling_tok_s": rate / flops_per_token,
        "gemm_gflops": rate / 1e9,
        "logprob_gap_mean": float(gap.mean()),
        "logprob_gap_max": float(gap.max()),
        "loss": metrics.get("loss/total"),
        "ops": ops,
    }


# ---- the driver ------------------------------------------------------------------------------


def before_tree(rev: str, into: Path) -> Path:
    """The package of commit `rev` laid out as the installed one (pyproject's package-dir)."""
    import tomllib

    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True
    ).stdout
    source = into / "source"
    source.mkdir()
    with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
        tar.extractall(source, filter="data")
    mapping = tomllib.loads((source / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    packages = into / "packages"
    for name, folder in sorted(mapping.items()):
        target = packages / name.replace(".", "/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(source / folder)
    return packages


def spawn(label: str, args: list[str], pythonpath: Path | None) -> dict[str, Any]:
    from relayrl.cluster.ray_runtime import actor_env_vars

    env = os.environ | actor_env_vars()
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=False
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{label} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--variant":
        model, dtype, batch, steps, ops, micro = sys.argv[2:8]
        result = run_variant(model, dtype, Path(batch), int(steps), ops == "ops", int(micro))
        print(json.dumps(result), flush=True)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--make-batch":
        make_batch(sys.argv[2], sys.argv[3], Path(sys.argv[4]))
        print("{}", flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--before", help="also run the learner of this commit")
    parser.add_argument("--ops", action="store_true", help="print each run's top ops")
    parser.add_argument("--batch-dir", help="keep the sampled batches here and reuse them")
    parser.add_argument(
        "--micro-batch-tokens", default="512", help="comma list: one 'now' run per budget"
    )
    args = parser.parse_args()
    from relayrl.models import resolve_model

    model = resolve_model(args.model)
    with tempfile.TemporaryDirectory() as root:
        before = before_tree(args.before, Path(root)) if args.before else None
        reports: list[tuple[str, list[Any]]] = []
        print(
            "| dtype | code | micro-batch tokens | step s | forward / backward / optimizer s |"
            " tokens | tok/s | ceiling tok/s | % of ceiling | GEMM GFLOP/s |"
            " log-prob gap mean / max |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for dtype in args.dtypes.split(","):
            batch = Path(args.batch_dir or root) / f"batch-{dtype}.npz"
            if not batch.exists():
                batch.parent.mkdir(parents=True, exist_ok=True)
                spawn("batch", ["--make-batch", model, dtype, str(batch)], None)
            budgets = args.micro_batch_tokens.split(",")
            runs = [("before", before, budgets[0])] if before is not None else []
            for code, path, micro in [*runs, *(("now", None, b) for b in budgets)]:
                ops = "ops" if args.ops else "-"
                variant = ["--variant", model, dtype, str(batch), str(args.steps), ops, micro]
                r = spawn(code, variant, path)
                p = r["phases_s"]
                print(
                    f"| {dtype} | {code} | {micro} | {r['step_s']:.2f} | {p['forward']:.2f} / "
                    f"{p['backward']:.2f} / {p['optimizer step']:.2f} | {r['tokens']} "
                    f"| {r['tok_s']:.0f} | {r['ceiling_tok_s']:.0f} "
                    f"| {100 * r['tok_s'] / r['ceiling_tok_s']:.0f}% | {r['gemm_gflops']:.0f} "
                    f"| {r['logprob_gap_mean']:.2e} / {r['logprob_gap_max']:.2e} |",
                    flush=True,
                )
                reports.append((f"{dtype}, {code}", r["ops"]))
        for name, ops in reports if args.ops else []:
            print(f"\ntop ops by self CPU s, one step ({name}):")
            print("; ".join(f"{op} {seconds:.2f}" for op, seconds in ops))


if __name__ == "__main__":
    main()
