"""Chunked token log-probs and entropies against plain log_softmax, values and gradients."""

from __future__ import annotations

import pytest
import torch

from relayrl.learner.algorithms import token_entropy, token_logprobs


def logits_and_tokens(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=generator, dtype=dtype)
    tokens = torch.randint(0, 11, (3, 7), generator=generator, dtype=torch.int32)
    return logits, tokens


def plain_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    log_p = torch.log_softmax(logits[:, :-1] / temperature, dim=-1)
    picked = log_p.gather(-1, tokens[:, 1:, None].long()).squeeze(-1)
    return torch.cat([torch.zeros_like(picked[:, :1]), picked], dim=1)


def plain_entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    log_p = torch.log_softmax(logits[:, :-1] / temperature, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return torch.cat([torch.zeros_like(entropy[:, :1]), entropy], dim=1)


@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_match_log_softmax(chunk_size: int, temperature: float) -> None:
    logits, tokens = logits_and_tokens()
    weights = torch.randn(tokens.shape, dtype=torch.float64)
    ours = logits.clone().requires_grad_(True)
    theirs = logits.clone().requires_grad_(True)
    actual = token_logprobs(ours, tokens, temperature, chunk_size)
    expected = plain_logprobs(theirs, tokens, temperature)
    torch.testing.assert_close(actual, expected)
    (actual * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad)


@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
@pytest.mark.parametrize("temperature", [1.0, 1.3])
def test_token_entropy_matches_softmax_entropy(chunk_size: int, temperature: float) -> None:
    logits, _ = logits_and_tokens()
    weights = torch.randn(logits.shape[:2], dtype=torch.float64)
    ours = logits.clone().requires_grad_(True)
    theirs = logits.clone().requires_grad_(True)
    actual = token_entropy(ours, temperature, chunk_size)
    expected = plain_entropy(theirs, temperature)
    torch.testing.assert_close(actual, expected)
    (actual * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad)


def test_gradcheck() -> None:
    logits, tokens = logits_and_tokens()
    logits = logits[:1, :4, :4].clone().requires_grad_(True)
    tokens = tokens[:1, :4] % 4
    assert torch.autograd.gradcheck(lambda x: token_logprobs(x, tokens, 0.9, 2), (logits,))
    assert torch.autograd.gradcheck(lambda x: token_entropy(x, 0.9, 2), (logits,))


def test_bfloat16_logits_give_float32_outputs_and_gradients_in_bfloat16() -> None:
    logits, tokens = logits_and_tokens(torch.bfloat16)
    logits.requires_grad_(True)
    result = token_logprobs(logits, tokens)
    assert result.dtype == torch.float32
    result.sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(
        result, plain_logprobs(logits.float(), tokens, 1.0), atol=1e-5, rtol=1e-5
    )


def test_bad_temperature_is_rejected() -> None:
    logits, tokens = logits_and_tokens()
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, tokens, 0.0)
