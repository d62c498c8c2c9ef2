"""How per-token losses become one scalar, so that micro-batch losses sum to the batch loss."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from relayrl.algorithm_config import AggregationMode
from relayrl.learner.algorithms.masked import zero_off_mask


@dataclass(frozen=True)
class Aggregation:
    """Sums a micro-batch's per-token losses and divides by a normalizer of the whole batch.

    `normalizer(batch_mask)` is computed once over the full batch (the learner splits it into
    micro-batches of whole sequences afterwards), so summing the micro-batch losses gives the
    full-batch loss, and their gradients the full-batch gradient.
    """

    mode: AggregationMode = "token_mean"
    # seq_mean_token_sum only: each sequence's token sum is divided by this (Dr.GRPO uses the
    # generation budget), so the loss does not depend on the length of a sequence.
    constant_length: int | None = None

    def __post_init__(self) -> None:
        if self.constant_length is not None and self.mode != "seq_mean_token_sum":
            raise ValueError("constant_length applies only to mode 'seq_mean_token_sum'")

    def normalizer(self, loss_mask: Tensor) -> float:
        """token_mean: masked tokens of the batch; otherwise sequences with at least one token
        (times constant_length). At least 1, so an all-masked batch gives 0, not NaN."""
        if self.mode == "token_mean":
            count = float(loss_mask.sum())
        else:
            count = float((loss_mask.sum(dim=-1) > 0).sum()) * (self.constant_length or 1)
        return max(count, 1.0)

    def __call__(self, per_token: Tensor, loss_mask: Tensor, normalizer: float) -> Tensor:
        """This micro-batch's share of the batch loss; per_token and loss_mask are [B, T]."""
        weighted = zero_off_mask(per_token, loss_mask) * loss_mask
        if self.mode == "seq_mean_token_mean":
            per_sequence = weighted.sum(dim=-1) / loss_mask.sum(dim=-1).clamp(min=1)
            return per_sequence.sum() / normalizer
        return weighted.sum() / normalizer
