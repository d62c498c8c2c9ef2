"""The settings of a rollout worker on the tiny test model, for tests that build workers."""

from __future__ import annotations

from typing import Any

from relayrl.actors.engine import SamplingSettings
from relayrl.actors.rollout_worker import WorkerSettings


def tiny_worker_settings(
    model_path: str,
    worker_id: str = "w0",
    group_size: int = 2,
    max_new_tokens: int = 4,
    **overrides: Any,
) -> WorkerSettings:
    """One thread, fp32, the transformers engine on `arithmetic` unless `overrides` say so."""
    fields: dict[str, Any] = {
        "engine": "transformers",
        "dtype": "float32",
        "torch_threads": 1,
        "env_name": "arithmetic",
        **overrides,
    }
    return WorkerSettings(
        worker_id=worker_id,
        model_path=model_path,
        group_size=group_size,
        sampling=SamplingSettings(max_new_tokens=max_new_tokens),
        **fields,
    )
