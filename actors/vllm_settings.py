"""Settings of one vLLM engine; plain data, importable without vLLM installed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

VLLMDtype = Literal["float32", "bfloat16", "float16"]

# "shared_memory": the worker sends a full state dict through tmpfs files (CPU and GPU);
# "nccl": the learner broadcasts into the engine with vLLM's weight-transfer API (GPU only).
WeightTransportKind = Literal["shared_memory", "nccl"]


@dataclass(frozen=True)
class VLLMSettings:
    model: str
    # Never "auto": vLLM's auto turns an fp32 checkpoint into bf16 on CPU.
    dtype: VLLMDtype
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    seed: int = 0
    weight_transport: WeightTransportKind = "shared_memory"
    # CPU only: the KV cache size (what VLLM_CPU_KVCACHE_SPACE sets, per engine instead).
    cpu_kv_cache_bytes: int = 1 << 30
    # Bucket size of staged weight files, and of packed NCCL broadcasts.
    weight_bucket_bytes: int = 256 << 20
    # Upper bound on each weight-sync call into the engine (pause, load, resume).
    weight_sync_timeout_s: float = 600.0
