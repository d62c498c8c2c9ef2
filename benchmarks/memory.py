"""Where a job's memory goes: the learner step phase by phase, every process of a real job,
and TRL's GRPOTrainer on the same task in the same run.

Three parts, each in fresh processes so their peaks do not mix:
- learner profile: one learner rank (DeepSpeed, gloo, no Ray) trains on made-up batches;
  RSS/PSS after each phase (model load, DeepSpeed init, first step, second step, publish) and
  the peak within it. Two micro-batch sizes give the per-token activation cost, from which
  the largest `learner.micro_batch_tokens` that fits `--budget-gb` is estimated.
- job: the quickstart (examples/quickstart.yaml) for `--steps` steps, once per placement of
  `--placements` (`rollout.placement`: separate actors, or the learner and its rollout
  engine colocated in one actor); the PSS of every process of the job (Ray actors by class,
  Redis, Ray's own services, the driver) is sampled twice a second, and the whole job's peak
  is the largest sum of one sample.
- TRL: its GRPOTrainer on the same task (benchmarks/trl_grpo_task.py) from its own venv
  (.cache/bench-venv-trl, built here on first use: torch pinned first, then trl), sampled
  the same way.

    .venv/bin/python benchmarks/memory.py [--steps 8] [--placements separate,colocated]
        [--skip-trl] [--skip-job]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from relayrl.process_memory import proc_field_bytes, pss_bytes, rss_bytes

ROOT = Path(__file__).resolve().parent.parent
TRL_VENV = ROOT / ".cache" / "bench-venv-trl"
TORCH_PIN = "torch==2.13.0"
TRL_PIN = "trl==1.16.0"
GB = 1 << 30


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def label(pid: int, driver: int) -> str:
    if pid == driver:
        return "driver"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    title = argv[0].decode(errors="replace")
    if title.startswith("ray::"):
        return title.removeprefix("ray::").split(".")[0].split(" ")[0]
    name = os.path.basename(title.split(" ")[0])
    if name.startswith("python"):
        script = next((a.decode() for a in argv[1:] if a.endswith(b".py")), "")
        return os.path.basename(script) or name
    return name


class PssSampler:
    """Samples the PSS of a process tree; keeps each process's peak and the tree's peak sum."""

    def __init__(self, root: int, period_s: float = 0.5) -> None:
        self.root, self.period_s = root, period_s
        self.peaks: dict[int, tuple[str, int]] = {}
        self.total_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        total = 0
        for pid in descendants(self.root):
            pss = pss_bytes(pid)
            if pss is None:
                continue
            total += pss
            name = label(pid, self.root)
            if name == "IDLE" and pid in self.peaks:
                name = self.peaks[pid][0]
            self.peaks[pid] = (name, max(pss, self.peaks.get(pid, ("", 0))[1]))
        self.total_peak = max(self.total_peak, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period_s)

    def by_label(self) -> dict[str, list[int]]:
        grouped: dict[str, list[int]] = defaultdict(list)
        for name, peak in self.peaks.values():
            grouped[name].append(peak)
        return {name: sorted(peaks, reverse=True) for name, peaks in sorted(grouped.items())}


# ---- learner profile (runs in its own process) ---------------------------------------------


def _phase_reset() -> None:
    # Writing 5 resets the process's peak RSS (VmHWM), so each phase gets its own peak.
    Path("/proc/self/clear_refs").write_text("5")


def _phase(name: str, rows: list[dict[str, float]], started: float) -> None:
    me = os.getpid()
    rows.append(
        {
            "phase": name,
            "rss_gb": (rss_bytes(me) or 0) / GB,
            "pss_gb": (pss_bytes(me) or 0) / GB,
            "peak_rss_gb": (proc_field_bytes(f"/proc/{me}/status", "VmHWM") or 0) / GB,
            "s": time.perf_counter() - started,
        }
    )
    _phase_reset()


def learner_profile(
    model: str,
    micro_tokens: int,
    sequences: int,
    length: int,
    checkpointing: bool,
    overrides: list[str],
) -> None:
    """One learner rank, `sequences` rows of `length` tokens per step; prints JSON rows."""

    import numpy as np
    import torch

    from relayrl.cluster.weights.codec import to_wire
    from relayrl.config_loader import load_config
    from relayrl.learner.batching import pad_rows
    from relayrl.learner.deepspeed_learner import DeepSpeedLearner
    from relayrl.learner.full_state import full_state_dict
    from relayrl.learner.micro_batches import rank_micro_batches
    from relayrl.learner.rewards import advantage_inputs
    from relayrl.ports import free_port
    from relayrl.trajectory import Trajectory
    from relayrl.weights import checksum

    rows: list[dict[str, float]] = []
    started = time.perf_counter()
    config = load_config(
        str(ROOT / "examples" / "quickstart.yaml"),
        [
            f"model.path={model}",
            f"learner.micro_batch_tokens={micro_tokens}",
            f"learner.gradient_checkpointing={str(checkpointing).lower()}",
            f"output.dir={tempfile.mkdtemp()}",
            *overrides,
        ],
    )
    _phase("imports", rows, started)
    learner = DeepSpeedLearner(config, model, 0, None, None)
    learner.setup("127.0.0.1", free_port())
    _phase("model load + DeepSpeed init", rows, started)
    rng = np.random.default_rng(0)
    vocab = learner.engine.module.config.vocab_size
    prompt = length // 3

    def batch() -> list[Trajectory]:
        made = []
        group_size = config.rollout.group_size
        for group in range(sequences // group_size):
            for _ in range(group_size):
                tokens = rng.integers(3, vocab, length)
                mask = np.r_[np.zeros(prompt), np.ones(length - prompt)].astype(np.uint8)
                made.append(
                    Trajectory(
                        group_id=f"g{group}",
                        tokens=tokens,
                        prompt_len=prompt,
                        loss_mask=mask,
                        logprobs=np.where(mask > 0, -2.0, 0.0),
                        versions=np.where(mask > 0, 0, -1),
                        reward=float(rng.integers(0, 2)),
                    )
                )
        return made

    assert learner.update is not None
    for step in (1, 2):
        trajectories = batch()
        plan = rank_micro_batches(trajectories, 0, 1, config.learner.resolved_micro_batch_tokens)
        full = pad_rows(trajectories, slice(None), learner.pad_id)
        algorithm = config.learner.algorithm
        estimate = learner.estimator(advantage_inputs(trajectories, full, {}, algorithm))
        metrics = learner.update.run(trajectories, plan, full, {}, estimate)
        assert metrics["grad_norm"] == metrics["grad_norm"], "the step trained nothing"
        _phase(f"train step {step} ({len(plan)} micro-batches)", rows, started)
    state = full_state_dict(learner.engine.module, config.learner.resolved_zero_stage, 0)
    checksum(state)
    wire = to_wire(state)
    _phase("publish (state dict + wire)", rows, started)
    del wire, state
    parameters = sum(p.numel() for p in learner.engine.module.parameters())
    print(json.dumps({"parameters": parameters, "rows": rows}))
    sys.stdout.flush()
    torch.distributed.destroy_process_group()


def run_learner_profile(
    model: str,
    micro: int,
    sequences: int,
    length: int,
    checkpointing: bool = False,
    overrides: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> dict:
    from relayrl.cluster.ray_runtime import actor_env_vars

    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--learner-profile",
            model,
            *map(str, (micro, sequences, length, checkpointing)),
            *overrides,
        ],
        capture_output=True,
        text=True,
        check=False,
        # The job's environment: DeepSpeed finds the ops it already built for the actors.
        env=os.environ | actor_env_vars() | (env or {}),
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"learner profile failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


# ---- job and TRL ---------------------------------------------------------------------------


def run_quickstart(
    model: str, steps: int, root: Path, placement: str
) -> tuple[PssSampler, float, list[dict]]:
    from relayrl.cluster.job import run_job
    from relayrl.config_loader import load_config
    from relayrl.metrics import read_metrics

    config = load_config(
        str(ROOT / "examples" / "quickstart.yaml"),
        [
            f"model.path={model}",
            f"trainer.steps={steps}",
            f"rollout.placement={placement}",
            f"output.dir={root}/job-{placement}",
            "output.tensorboard=false",
            "output.plot=false",
        ],
    )
    started = time.perf_counter()
    with PssSampler(os.getpid()) as sampler:
        result = run_job(config)
    return sampler, time.perf_counter() - started, read_metrics(result.metrics)


def ensure_trl_venv() -> Path:
    python = TRL_VENV / "bin" / "python"
    if not (TRL_VENV / ".ready").exists():
        TRL_VENV.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["python3", "-m", "venv", str(TRL_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        # torch first and pinned: trl alone would pull a multi-GB CUDA build.
        subprocess.run([*pip, TORCH_PIN], check=True)
        subprocess.run([*pip, TRL_PIN], check=True)
        (TRL_VENV / ".ready").write_text(f"{TORCH_PIN} {TRL_PIN}\n")
    return python


def run_trl(model: str, steps: int) -> tuple[PssSampler, float, dict]:
    python = ensure_trl_venv()
    script = ROOT / "benchmarks" / "trl_grpo_task.py"
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(python), str(script), "--model", model, "--steps", str(steps)],
        stdout=subprocess.PIPE,
        text=True,
    )
    with PssSampler(process.pid) as sampler:
        stdout, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"TRL run failed with exit status {process.returncode}")
    report = json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])
    return sampler, time.perf_counter() - started, report


# Learner settings compared on the quickstart's batch (24 x 64 tokens), each in a fresh process.
LEARNER_VARIANTS: list[tuple[str, int, tuple[str, ...], dict[str, str]]] = [
    ("ZeRO-2, micro-batch 2048 (the old quickstart)", 2048, ("learner.zero_stage=2",), {}),
    ("ZeRO-0, micro-batch 2048", 2048, ("learner.zero_stage=0",), {}),
    ("ZeRO-2, micro-batch 512", 512, ("learner.zero_stage=2",), {}),
    ("ZeRO-0, micro-batch 512", 512, ("learner.zero_stage=0",), {}),
    (
        "ZeRO-0, micro-batch 512, MALLOC_MMAP_THRESHOLD_=4 MiB",
        512,
        ("learner.zero_stage=0",),
        {"MALLOC_MMAP_THRESHOLD_": str(4 << 20)},
    ),
]


def compare_learner_variants(model: str) -> None:
    print("| learner setting | after init GB | step-2 peak RSS GB | step 2 s |")
    print("|---|---|---|---|")
    for name, micro, overrides, env in LEARNER_VARIANTS:
        profile = run_learner_profile(model, micro, 24, 64, overrides=overrides, env=env)
        rows = profile["rows"]
        init = next(r for r in rows if r["phase"].startswith("model load"))
        step2 = next(r for r in rows if r["phase"].startswith("train step 2"))
        step1 = next(r for r in rows if r["phase"].startswith("train step 1"))
        print(
            f"| {name} | {init['rss_gb']:.2f} | {step2['peak_rss_gb']:.2f} "
            f"| {step2['s'] - step1['s']:.1f} |",
            flush=True,
        )


def step_peak(profile: dict) -> float:
    return max(r["peak_rss_gb"] for r in profile["rows"] if r["phase"].startswith("train"))


def print_profile(name: str, profile: dict) -> None:
    print(f"\nlearner profile, {name} ({profile['parameters'] / 1e6:.1f}M parameters)")
    print("| phase | RSS GB after | PSS GB after | peak RSS GB within | s |")
    print("|---|---|---|---|---|")
    for row in profile["rows"]:
        print(
            f"| {row['phase']} | {row['rss_gb']:.2f} | {row['pss_gb']:.2f} "
            f"| {row['peak_rss_gb']:.2f} | {row['s']:.0f} |"
        )


def print_processes(name: str, sampler: PssSampler, wall: float) -> None:
    print(f"\n{name}: whole-tree peak PSS {sampler.total_peak / GB:.2f} GB ({wall:.0f} s)")
    print("| process | count | peak PSS GB each |")
    print("|---|---|---|")
    for process, peaks in sampler.by_label().items():
        print(f"| {process} | {len(peaks)} | {' + '.join(f'{p / GB:.2f}' for p in peaks)} |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--learner-profile":
        model, micro, sequences, length, checkpointing = sys.argv[2:7]
        overrides = sys.argv[7:]
        learner_profile(
            model, int(micro), int(sequences), int(length), checkpointing == "True", overrides
        )
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--budget-gb", type=float, default=8.0)
    parser.add_argument("--placements", default="separate,colocated")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--skip-job", action="store_true")
    parser.add_argument("--skip-profile", action="store_true")
    parser.add_argument(
        "--learner-variants",
        action="store_true",
        help="only compare learner settings (ZeRO stage, allocator, micro-batch) side by side",
    )
    args = parser.parse_args()
    from relayrl.models import resolve_model

    model = resolve_model(args.model)
    if args.learner_variants:
        compare_learner_variants(model)
        return
    if not args.skip_profile:
        # 24 sequences of 64 tokens (the quickstart's batch, rounded up), in one micro-batch
        # and then in micro-batches of 4 sequences: the difference is activations per token.
        large = run_learner_profile(model, 2048, 24, 64)
        small = run_learner_profile(model, 256, 24, 64)
        checkpointed = run_learner_profile(model, 2048, 24, 64, checkpointing=True)
        print_profile("micro_batch_tokens 2048 (one micro-batch of 24 x 64)", large)
        print_profile("micro_batch_tokens 256 (micro-batches of 4 x 64)", small)
        print_profile("micro_batch_tokens 2048, gradient_checkpointing", checkpointed)
        peak = {name: step_peak(p) for name, p in (("large", large), ("small", small))}
        per_token = (peak["large"] - peak["small"]) / (1536 - 256)
        fixed = peak["small"] - 256 * per_token
        per_token_checkpointed = (step_peak(checkpointed) - fixed) / 1536
        for name, cost in (("", per_token), (", gradient_checkpointing", per_token_checkpointed)):
            fits = int((args.budget_gb - fixed) / cost) if cost > 0 else 0
            print(
                f"\nper-token step cost{name} {cost * 1024**2:.0f} KiB (fixed {fixed:.2f} GB): "
                f"largest micro_batch_tokens in a {args.budget_gb:g} GB learner ~{fits}"
            )
    with tempfile.TemporaryDirectory() as root:
        for placement in [] if args.skip_job else args.placements.split(","):
            sampler, wall, records = run_quickstart(model, args.steps, Path(root), placement)
            print_processes(f"relayrl quickstart, {placement}, {args.steps} steps", sampler, wall)
            peaks = [r.get("memory/learner_peak_rss_gb") for r in records]
            if any(p is not None for p in peaks):
                print(f"learner peak RSS from the step metrics: {max(filter(None, peaks)):.2f} GB")
        if not args.skip_trl:
            try:
                sampler, wall, report = run_trl(model, args.steps)
            except (subprocess.CalledProcessError, RuntimeError) as error:
                print(f"\nTRL could not run here: {error}")
            else:
                print_processes(f"TRL GRPOTrainer, {args.steps} steps", sampler, wall)
                print(f"TRL peak RSS (its own getrusage): {report['peak_rss_gb']:.2f} GB")


if __name__ == "__main__":
    main()
