from __future__ import annotations

import numpy as np

from relayrl.buffer import BufferEntry
from relayrl.learner.batching import GroupAssembler, pad_rows, plan_micro_batches
from relayrl.trajectory import Trajectory


def entry(group: str, length: int = 5, index: int = 0) -> BufferEntry:
    t = Trajectory(
        group_id=group,
        tokens=np.arange(length) + 10,
        prompt_len=2,
        loss_mask=[0, 0] + [1] * (length - 2),
        logprobs=[0, 0] + [-0.5] * (length - 2),
        versions=[-1, -1] + [3] * (length - 2),
        reward=1.0,
    )
    return BufferEntry(f"{group}-{index}", t)


def test_only_complete_groups_are_handed_out_in_arrival_order() -> None:
    assembler = GroupAssembler(group_size=2)
    a0, b0, a1 = entry("a", index=0), entry("b", index=0), entry("a", index=1)
    assembler.add([a0, b0, a1])
    assert assembler.complete_groups() == 1
    assert assembler.take(2) is None
    batch = assembler.take(1)
    assert batch is not None and [e.entry_id for e in batch] == ["a-0", "a-1"]
    assert assembler.held() == 1


def test_duplicate_deliveries_are_ignored() -> None:
    assembler = GroupAssembler(group_size=2)
    first = entry("a")
    assembler.add([first, first])
    assert assembler.held() == 1


def test_micro_batches_respect_the_token_budget() -> None:
    lengths = [10, 10, 30, 5, 5, 5, 100]
    plans = plan_micro_batches(lengths, token_budget=40)
    assert [(p.start, p.stop) for p in plans] == [(0, 2), (2, 3), (3, 6), (6, 7)]
    for plan in plans[:-1]:
        chunk = lengths[plan]
        assert max(chunk) * len(chunk) <= 40
    assert plan_micro_batches([], 10) == []


def test_padding_keeps_tokens_aligned() -> None:
    entries = [entry("a", length=4), entry("a", length=6)]
    batch = pad_rows([e.trajectory for e in entries], slice(None), pad_id=0)
    assert batch.input_ids.shape == (2, 6)
    assert batch.input_ids[0].tolist() == [10, 11, 12, 13, 0, 0]
    assert batch.loss_mask[0].tolist() == [0, 0, 1, 1, 0, 0]
    assert batch.attention_mask[1].sum() == 6
    assert batch.versions[1].tolist() == [-1, -1, 3, 3, 3, 3]
