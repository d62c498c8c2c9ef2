"""GROUPED_SDPA reads a grouped-query model's K/V heads in place instead of copying them per
query head: with padding masks, a KV cache, packed prompts and in backward, every result
equals transformers' own SDPA, and CPU models use it without it reaching a saved config."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from relayrl.actors.hf_engine import TransformersEngine, TransformersSettings
from relayrl.grouped_attention import GROUPED_SDPA, use_grouped_sdpa
from relayrl.learner.micro_batches import MicroBatch, micro_batch_tensors
from relayrl.learner.token_scores import token_scores
from tests.learner_data import TrajectoryMaker
from tests.test_learner_step_work import mixed_groups

EXACT = {"atol": 1e-6, "rtol": 1e-6}


@pytest.fixture(scope="module")
def gqa_model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny Llama with 4 query heads sharing 2 K/V heads, like SmolLM2's 9 over 3."""
    from relayrl.tiny_model import build_tiny_model

    target = tmp_path_factory.mktemp("gqa-model")
    build_tiny_model(target, heads=4, kv_heads=2)
    return str(target)


def load(path: str, attention: str) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation=attention
    )


def left_padded(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, vocab, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :1] = 0
    return ids, mask


def test_padded_forward_and_gradients_equal_sdpa(gqa_model_path: str) -> None:
    ids, mask = left_padded(256)
    results = []
    for attention in ("sdpa", GROUPED_SDPA):
        model = load(gqa_model_path, attention)
        logits = model(input_ids=ids, attention_mask=mask).logits
        (logits * mask[..., None]).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((logits.detach(), grads))
    (plain, plain_grads), (grouped, grouped_grads) = results
    torch.testing.assert_close(grouped, plain, **EXACT)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grouped_grads[name], grad, **EXACT, msg=name)


@torch.no_grad()
def test_decoding_over_a_cache_equals_sdpa(gqa_model_path: str) -> None:
    ids, mask = left_padded(256)
    steps = []
    for attention in ("sdpa", GROUPED_SDPA):
        model = load(gqa_model_path, attention).eval()
        cache = DynamicCache(config=model.config)
        out = model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True)
        logits, running = [out.logits[:, -1]], mask
        for _ in range(4):
            running = torch.cat([running, torch.ones(3, 1, dtype=running.dtype)], dim=1)
            token = logits[-1].argmax(-1, keepdim=True)
            positions = running.sum(-1, keepdim=True) - 1
            out = model(
                input_ids=token,
                attention_mask=running,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            )
            logits.append(out.logits[:, -1])
        steps.append(torch.stack(logits))
    torch.testing.assert_close(steps[1], steps[0], **EXACT)


def test_packed_prompts_score_like_sdpa(gqa_model_path: str) -> None:
    """Shared-prompt packing hands the model its own 4D mask: the grouped path reads it the
    same way, log-probs and entropies alike."""
    trajectories = mixed_groups(TrajectoryMaker(gqa_model_path))
    packed = micro_batch_tensors(trajectories, MicroBatch(slice(None)), pad_id=0)
    assert packed.packing is not None
    scores = []
    for attention in ("sdpa", GROUPED_SDPA):
        model = load(gqa_model_path, attention)
        for batch in (packed, replace(packed, packing=None)):
            logprobs, entropy = token_scores(model, batch, 0.7, True, loss_positions_only=True)
            assert entropy is not None
            scores.append(torch.stack([logprobs, entropy]).detach())
    for other in scores[1:]:
        torch.testing.assert_close(other, scores[0], atol=1e-5, rtol=1e-5)


def test_cpu_engines_use_it_and_saved_configs_do_not_name_it(
    gqa_model_path: str, tmp_path: Path
) -> None:
    engine = TransformersEngine(TransformersSettings(gqa_model_path), eos_token_ids=(0,))
    try:
        with engine.paused() as model:
            assert model.config._attn_implementation == GROUPED_SDPA
            model.save_pretrained(tmp_path)
    finally:
        asyncio.run(engine.close())
    assert GROUPED_SDPA not in json.dumps(json.loads((tmp_path / "config.json").read_text()))
    assert load(str(tmp_path), "sdpa").config._attn_implementation == "sdpa"
    eager = load(gqa_model_path, "eager")
    use_grouped_sdpa(eager)
    assert eager.config._attn_implementation == "eager"
