"""The config of a rollout worker on the tiny test model, for tests that build workers."""

from __future__ import annotations

from typing import Any

from relayrl.config import JobConfig
from tests.job_configs import job_config


def tiny_worker_config(
    group_size: int = 2, max_new_tokens: int = 4, fields: dict[str, Any] | None = None
) -> JobConfig:
    """One thread, fp32, the transformers engine on `arithmetic`, one group at a time, unless
    `fields` (dotted paths) say otherwise."""
    return job_config(
        {
            "rollout.engine": "transformers",
            "model.dtype": "float32",
            "rollout.torch_threads": 1,
            "rollout.max_concurrent_groups": 1,
            "rollout.group_size": group_size,
            "rollout.sampling.max_new_tokens": max_new_tokens,
            "env.name": "arithmetic",
            **(fields or {}),
        }
    )
