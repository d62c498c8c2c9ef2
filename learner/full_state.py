"""A full (unsharded) Hugging Face state dict from a DeepSpeed engine, for publishing weights
and saving checkpoints. Under ZeRO-3 parameters are gathered one at a time, on every rank."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


def full_state_dict(module: nn.Module, zero_stage: int, rank: int) -> dict[str, torch.Tensor]:
    """Every rank must call this; only rank 0 gets the tensors, the others an empty dict.
    Tied weights (SmolLM2's lm_head and embeddings) stay one shared tensor under both names."""
    import deepspeed  # deferred: the accelerator is chosen when the learner is set up

    copies: dict[int, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        key = id(tensor)
        if key not in copies:
            if zero_stage == 3 and hasattr(tensor, "ds_id"):
                with deepspeed.zero.GatheredParameters([tensor], modifier_rank=None):
                    copies[key] = tensor.detach().clone().cpu() if rank == 0 else tensor[:0]
            else:
                # A view of the live parameter, never a copy: publishing writes it once into
                # the object store, saving once into the checkpoint file.
                copies[key] = tensor.detach().cpu() if rank == 0 else tensor[:0]
        if rank == 0:
            state[name] = copies[key]
    return state


def save_weights_and_engine(
    engine: Any, folder: Path, model_path: str, zero_stage: int, rank: int
) -> None:
    """Hugging Face weights and tokenizer under `folder/hf` (rank 0), then the DeepSpeed engine
    and optimizer state under `folder/deepspeed` (every rank: each saves its own partition)."""
    from transformers import AutoTokenizer

    state = full_state_dict(engine.module, zero_stage, rank)
    if rank == 0:
        (folder / "hf").mkdir(parents=True, exist_ok=True)
        engine.module.save_pretrained(folder / "hf", state_dict=state)
        AutoTokenizer.from_pretrained(model_path).save_pretrained(folder / "hf")
    engine.save_checkpoint(str(folder / "deepspeed"), tag="engine")
