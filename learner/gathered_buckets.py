"""A ZeRO-3 module's weights as a bucket stream: each bucket's parameters are gathered on
every rank at once (`deepspeed.zero.GatheredParameters`), handed over, and partitioned again
before the next bucket, so no rank ever holds more than one bucket beyond its shard."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from relayrl.weight_buckets import plan_buckets
from relayrl.weights import TensorMeta


class GatheredBuckets:
    """A `WeightBuckets`; every rank builds one from its own module and iterates it to the
    end in the same order (the gathers are collectives)."""

    def __init__(self, module: nn.Module, bucket_bytes: int) -> None:
        # Tied weights (SmolLM2's lm_head and embeddings) are one tensor under two names.
        self._tensors = module.state_dict(keep_vars=True)
        self._metadata = [
            # A partitioned parameter's own shape is its shard's; ds_shape is the full one.
            TensorMeta(name, tensor.dtype, tuple(getattr(tensor, "ds_shape", tensor.shape)))
            for name, tensor in self._tensors.items()
        ]
        self.plan = plan_buckets(self._metadata, bucket_bytes)

    def metadata(self) -> list[TensorMeta]:
        return self._metadata

    def __iter__(self) -> Iterator[list[tuple[str, torch.Tensor]]]:
        import deepspeed  # deferred: the accelerator is chosen when the learner is set up

        for names in self.plan:
            # DeepSpeed skips what is not partitioned and gathers a tied tensor once.
            with deepspeed.zero.GatheredParameters([self._tensors[name] for name in names]):
                yield [(name, self._tensors[name].detach()) for name in names]
