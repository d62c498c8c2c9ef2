"""The critic that GAE needs: `model.path`'s backbone with a one-output token head, on its own
DeepSpeed engine and optimizer, trained alongside the policy with the clipped value loss."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from relayrl.algorithm_config import CriticConfig
from relayrl.grouped_attention import use_grouped_sdpa
from relayrl.learner.algorithms.build import build_critic_loss
from relayrl.learner.algorithms.critic import ValueLoss
from relayrl.learner.algorithms.types import LossInputs, LossOutput
from relayrl.learner.batching import PaddedBatch
from relayrl.learner.engines import step_and_grad_norm, training_engine

if TYPE_CHECKING:
    from relayrl.config import JobConfig

CHECKPOINT_FOLDER = "critic"


class ValueModel:
    def __init__(self, engine: Any, loss: ValueLoss, world_size: int) -> None:
        self.engine = engine
        self.loss = loss
        self.world_size = world_size

    @classmethod
    def build(cls, job: JobConfig, model_path: str, config: CriticConfig) -> ValueModel:
        """Every rank calls this together (DeepSpeed initializes collectively)."""
        from transformers import AutoConfig, AutoModelForTokenClassification

        model_config = AutoConfig.from_pretrained(model_path, num_labels=1)
        # Dropout would make the training values differ from the ones that scored the batch.
        model_config.classifier_dropout = 0.0
        model = AutoModelForTokenClassification.from_pretrained(
            model_path, config=model_config, dtype=torch.float32
        )
        if not job.learner.gpus_per_rank:
            use_grouped_sdpa(model)
        model.config.use_cache = False
        if job.learner.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        engine = training_engine(model, job, config.lr or job.learner.lr)
        return cls(engine, build_critic_loss(config), job.learner.num_ranks)

    def _values(self, batch: PaddedBatch) -> Tensor:
        """[B, T]: position t holds V(tokens[:t]), the head's output at t - 1 (0 at t = 0),
        aligned like log-probs: the value of the state each token was sampled in."""
        batch = batch.to(self.engine.device)
        head = self.engine(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        head = head[..., 0].float()
        return torch.cat([torch.zeros_like(head[:, :1]), head[:, :-1]], dim=1)

    @torch.no_grad()
    def values(self, batch: PaddedBatch) -> Tensor:
        self.engine.eval()
        try:
            return self._values(batch)
        finally:
            self.engine.train()

    def train_micro_batch(
        self,
        batch: PaddedBatch,
        old_values: Tensor,
        returns: Tensor,
        normalizer: float,
        boundary: bool,
    ) -> LossOutput:
        """Forward and backward one micro-batch; gradients are reduced at the boundary."""
        self.engine.set_gradient_accumulation_boundary(boundary)
        values = self._values(batch)
        device = values.device
        inputs = LossInputs(
            logprobs=torch.zeros_like(values),  # the value loss reads no log-probs
            loss_mask=batch.loss_mask.to(device),
            values=values,
            old_values=old_values.to(device),
            returns=returns.to(device),
        )
        out = self.loss(inputs, normalizer)
        # DeepSpeed averages gradients over ranks; the normalizer already spans them all.
        self.engine.backward(out.loss * self.world_size, scale_wrt_gas=False)
        return out

    def step(self) -> float:
        """Apply the accumulated gradients; returns the gradient norm before clipping."""
        return step_and_grad_norm(self.engine)

    def save_state(self, folder: Path) -> None:
        """Every rank calls this: the engine and optimizer state, for resuming."""
        self.engine.save_checkpoint(str(folder / CHECKPOINT_FOLDER), tag="engine")

    def load_state(self, folder: Path) -> None:
        self.engine.load_checkpoint(str(folder / CHECKPOINT_FOLDER), tag="engine")
