"""Runs inside each vLLM worker process: reloads a full checkpoint-format state dict in place.

vLLM mixes this class into its `Worker` (engine arg `worker_extension_cls`), so `self` is the
worker and the method is reachable by name through `AsyncLLM.collective_rpc`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from safetensors import safe_open


class WeightReloadExtension:
    """In-place reload through the model runner: the CPU path (works on GPU too)."""

    def relayrl_reload_from_files(self, paths: list[str]) -> int:
        """Load every tensor of the given safetensors files; returns how many were read."""
        count = 0

        def weights() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal count
            for path in paths:
                with safe_open(path, framework="pt", device="cpu") as handle:
                    for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                        count += 1
                        yield name, handle.get_tensor(name)

        # A per-parameter `model.load_weights` fails on the CPU backend (linear weights are
        # pre-packed, their Parameters emptied); the layerwise reload rebuilds and re-packs
        # every layer, a tied `lm_head` included.
        self.model_runner.reload_weights(weights_iterator=weights(), is_checkpoint_format=True)
        return count
