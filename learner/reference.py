"""The frozen reference policy for the KL penalty: the initial weights of `model.path`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from relayrl.grouped_attention import use_grouped_sdpa
from relayrl.learner.algorithms.logprobs import token_logprobs
from relayrl.learner.batching import PaddedBatch
from relayrl.learner.engines import inference_engine

if TYPE_CHECKING:
    from relayrl.config import JobConfig


class ReferenceModel:
    def __init__(self, engine: Any, temperature: float) -> None:
        self.engine = engine
        self.temperature = temperature

    @classmethod
    def build(cls, config: JobConfig, model_path: str) -> ReferenceModel:
        """Every rank calls this together (DeepSpeed initializes collectively)."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        if not config.learner.gpus_per_rank:
            use_grouped_sdpa(model)
        model.config.use_cache = False
        return cls(inference_engine(model, config), config.rollout.sampling.temperature)

    @torch.no_grad()
    def logprobs(self, batch: PaddedBatch) -> Tensor:
        """[B, T] reference log-probs of the batch's tokens, at the sampling temperature like
        the behaviour log-probs they are compared with."""
        batch = batch.to(self.engine.device)
        logits = self.engine(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        return token_logprobs(logits, batch.input_ids, self.temperature).float()
