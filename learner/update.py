"""One optimizer step of the policy, and of the critic when there is one, over this rank's
micro-batches of a scored batch."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from relayrl import metric_keys as keys
from relayrl.learner.algorithms.types import AdvantageOutput, LossInputs, LossOutput, PolicyLoss
from relayrl.learner.batching import PaddedBatch
from relayrl.learner.engines import step_and_grad_norm
from relayrl.learner.micro_batches import MicroBatch, micro_batch_tensors
from relayrl.learner.off_policy import OffPolicyCorrection
from relayrl.learner.rank_sync import WeightedMeans, sum_over_ranks
from relayrl.learner.scoring import PROXIMAL, REFERENCE, VALUES
from relayrl.learner.token_scores import token_scores
from relayrl.learner.value_model import ValueModel
from relayrl.trajectory import Trajectory

if TYPE_CHECKING:
    from relayrl.config import JobConfig


def _rows(
    scores: dict[str, Tensor], name: str, rows: slice, width: int, device: torch.device
) -> Tensor | None:
    """A micro-batch's slice of a whole-batch score (kept on the CPU), on `device`."""
    return scores[name][rows, :width].to(device) if name in scores else None


class PolicyUpdate:
    def __init__(
        self,
        config: JobConfig,
        engine: Any,
        objective: PolicyLoss,
        off_policy: OffPolicyCorrection,
        value_model: ValueModel | None,
        pad_id: int,
    ) -> None:
        self.temperature = config.rollout.sampling.temperature
        self.world_size = config.learner.num_ranks
        self.with_entropy = config.learner.algorithm.entropy is not None
        self.engine = engine
        self.objective = objective
        self.off_policy = off_policy
        self.value_model = value_model
        self.pad_id = pad_id

    @torch.no_grad()
    def policy_logprobs(self, batch: PaddedBatch) -> Tensor:
        """The policy's log-probs before the update: the proximal policy of decoupled PPO."""
        self.engine.eval()
        logprobs, _ = token_scores(
            self.engine, batch.to(self.engine.device), self.temperature, loss_positions_only=True
        )
        return logprobs

    def run(
        self,
        trajectories: list[Trajectory],
        plan: list[MicroBatch],
        batch: PaddedBatch,
        scores: dict[str, Tensor],
        estimate: AdvantageOutput,
    ) -> dict[str, float]:
        """Every rank calls this together with its own plan (all plans have equal length)."""
        normalizer = self.objective.aggregation.normalizer(batch.loss_mask)
        critic = self.value_model
        critic_normalizer = critic.loss.aggregation.normalizer(batch.loss_mask) if critic else 0.0
        loss_means, critic_means = WeightedMeans(), WeightedMeans()
        loss_total = torch.zeros(1, dtype=torch.float64)
        self.engine.train()
        for index, micro in enumerate(plan):
            tensors = micro_batch_tensors(trajectories, micro, self.pad_id).to(self.engine.device)
            boundary = index == len(plan) - 1
            out = self._policy_pass(tensors, micro.rows, scores, estimate, normalizer, boundary)
            tokens = float(tensors.loss_mask.sum())
            loss_total += float(out.loss.detach())
            loss_means.add(out.metrics, tokens)
            if critic is not None:
                width = tensors.input_ids.shape[1]
                assert estimate.returns is not None, "the critic needs returns from GAE"
                critic_out = critic.train_micro_batch(
                    tensors,
                    scores[VALUES][micro.rows, :width],
                    estimate.returns[micro.rows, :width],
                    critic_normalizer,
                    boundary,
                )
                critic_means.add(critic_out.metrics, tokens)
        # The rate this step trained with: the scheduler moves on inside step().
        metrics = {keys.LR: float(self.engine.get_lr()[0])}
        metrics[keys.GRAD_NORM] = step_and_grad_norm(self.engine)
        metrics[keys.LOSS_TOTAL] = float(sum_over_ranks(loss_total).item())
        metrics.update({keys.loss_part(k): v for k, v in loss_means.reduce().items()})
        metrics.update(self.off_policy.metrics())
        if critic is not None:
            metrics[keys.CRITIC_GRAD_NORM] = critic.step()
            metrics.update({keys.critic_part(k): v for k, v in critic_means.reduce().items()})
        return metrics

    def _policy_pass(
        self,
        tensors: PaddedBatch,
        rows: slice,
        scores: dict[str, Tensor],
        estimate: AdvantageOutput,
        normalizer: float,
        boundary: bool,
    ) -> LossOutput:
        width = tensors.input_ids.shape[1]
        self.engine.set_gradient_accumulation_boundary(boundary)
        # Losses read scores on the loss mask only: the head skips prompts and padding.
        logprobs, entropy = token_scores(
            self.engine,
            tensors,
            self.temperature,
            with_entropy=self.with_entropy,
            loss_positions_only=True,
        )
        device = logprobs.device
        old_logprobs, weights = self.off_policy.ratio_inputs(
            logprobs, tensors, _rows(scores, PROXIMAL, rows, width, device)
        )
        inputs = LossInputs(
            logprobs=logprobs,
            loss_mask=tensors.loss_mask,
            old_logprobs=old_logprobs,
            advantages=estimate.advantages[rows, :width].to(device),
            ref_logprobs=_rows(scores, REFERENCE, rows, width, device),
            entropy=entropy,
            importance_weights=weights,
        )
        out = self.objective(inputs, normalizer)
        # DeepSpeed averages gradients over ranks; the normalizer already spans them all.
        with self._reduction():
            self.engine.backward(out.loss * self.world_size, scale_wrt_gas=False)
        return out

    def _reduction(self) -> AbstractContextManager[Any]:
        """One ZeRO-0 rank has nobody to average with: DeepSpeed would still flatten every
        gradient into buckets and all-reduce them with itself at each step's last backward."""
        if self.world_size == 1 and self.engine.zero_optimization_stage() == 0:
            return self.engine.no_sync()
        return nullcontext()
