"""Staging a state dict as bucket files for vLLM workers (no vLLM needed)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from relayrl.actors.vllm_weight_sync.shm_buckets import (
    SHARED_MEMORY_DIR,
    StagedWeights,
    staging_root,
)


def _tensor(num_floats: int) -> torch.Tensor:
    return torch.arange(num_floats, dtype=torch.float32)


def test_staged_files_round_trip_tied_and_strided_tensors() -> None:
    embedding = torch.randn(16, 4)
    state = {
        "model.embed_tokens.weight": embedding,
        "lm_head.weight": embedding,
        "transposed": torch.randn(4, 6).t(),
        "half": torch.randn(8).to(torch.bfloat16),
    }

    with StagedWeights(state, bucket_bytes=1 << 20) as staged:
        loaded: dict[str, torch.Tensor] = {}
        for path in staged.paths:
            loaded.update(load_file(path))
        directory = staged.directory

    assert not directory.exists()
    assert loaded.keys() == state.keys()
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor)


def test_staging_uses_shared_memory_only_when_it_has_room() -> None:
    if SHARED_MEMORY_DIR.is_dir():
        assert staging_root(1 << 10) == SHARED_MEMORY_DIR
    assert staging_root(1 << 60) is None


def test_a_failed_write_leaves_no_directory_behind() -> None:
    state = {"ok": _tensor(4), "unreadable": torch.empty(4, device="meta")}
    root = staging_root(32) or Path(tempfile.gettempdir())
    before = set(root.glob("relayrl-weights-*"))

    with pytest.raises(NotImplementedError):
        StagedWeights(state, bucket_bytes=1 << 20)

    assert set(root.glob("relayrl-weights-*")) == before
