"""No-grad passes over the batch before the update (proximal log-probs, reference log-probs,
critic values), each merged over the ranks into one [N, T] tensor of the whole batch."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from relayrl.learner.batching import PaddedBatch
from relayrl.learner.micro_batches import MicroBatch, micro_batch_tensors
from relayrl.learner.rank_sync import merge_rows
from relayrl.trajectory import Trajectory

Scorer = Callable[[PaddedBatch], Tensor]  # [B, T] per-token values of one micro-batch

# Names of the scores a step may compute.
PROXIMAL = "proximal_logprobs"
REFERENCE = "ref_logprobs"
VALUES = "values"


@torch.no_grad()
def score_batch(
    trajectories: list[Trajectory],
    plan: list[MicroBatch],
    pad_id: int,
    scorers: Mapping[str, Scorer],
) -> dict[str, Tensor]:
    """Every rank calls this together with its own plan; each rank scores its own rows and
    the merge gives every rank the whole batch (advantages are computed over all of it)."""
    if not scorers:
        return {}
    length = max(len(t.tokens) for t in trajectories)
    own = {name: torch.zeros(len(trajectories), length) for name in scorers}
    for micro in plan:
        batch = micro_batch_tensors(trajectories, micro, pad_id)
        for name, score in scorers.items():
            values = score(batch)
            if not micro.stand_in:
                own[name][micro.rows, : values.shape[1]] = values.float()
    return {name: merge_rows(rows) for name, rows in own.items()}
