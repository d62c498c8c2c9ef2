"""Chunked token log-probs and entropies against plain log_softmax, values and gradients."""

from __future__ import annotations

import pytest
import torch

from relayrl.learner.algorithms import token_entropy, token_logprobs
from relayrl.learner.algorithms.logprobs import head_token_scores


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


def hidden_head_tokens() -> tuple[torch.Tensor, torch.nn.Linear, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 9, 8, generator=generator)
    head = torch.nn.Linear(8, 50, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(50, 8, generator=generator))
    tokens = torch.randint(0, 50, (3, 9), generator=generator)
    return hidden, head, tokens


@pytest.mark.parametrize("chunk_size", [1, 5, None])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_head_token_scores_match_full_logits_values_and_gradients(
    chunk_size: int | None, temperature: float
) -> None:
    """The chunked head against the full [B, T, V] logits, in float32 to 1e-5: log-probs,
    entropies and the gradients of both the hidden states and the head's weight."""
    hidden, head, tokens = hidden_head_tokens()
    weights = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(2))
    ours = hidden.clone().requires_grad_(True)
    theirs = hidden.clone().requires_grad_(True)
    logprobs, entropy = head_token_scores(ours, head, tokens, temperature, True, chunk_size)
    assert entropy is not None
    (logprobs * weights + entropy * weights.flip(0)).sum().backward()
    ours_weight_grad, head.weight.grad = head.weight.grad, None
    logits = head(theirs)
    expected_logprobs = plain_logprobs(logits, tokens, temperature)
    expected_entropy = plain_entropy(logits, temperature)
    (expected_logprobs * weights + expected_entropy * weights.flip(0)).sum().backward()
    close = {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(logprobs, expected_logprobs, **close)
    torch.testing.assert_close(entropy, expected_entropy, **close)
    torch.testing.assert_close(ours.grad, theirs.grad, **close)
    torch.testing.assert_close(ours_weight_grad, head.weight.grad, **close)


def test_head_token_scores_never_keep_a_full_logits_tensor_for_backward() -> None:
    hidden, head, tokens = hidden_head_tokens()
    hidden.requires_grad_(True)
    saved: list[int] = []

    def record(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(record, lambda tensor: tensor):
        logprobs, _ = head_token_scores(hidden, head, tokens, chunk_size=4)
    logprobs.sum().backward()
    full_logits = tokens.numel() * head.out_features
    assert saved, "nothing was saved for backward: the test would not see a full copy"
    assert max(saved) <= 4 * head.out_features < full_logits
    with torch.autograd.graph.saved_tensors_hooks(record, lambda tensor: tensor):
        plain_logprobs(head(hidden), tokens, 1.0).sum().backward()
    assert max(saved) >= tokens.shape[0] * (tokens.shape[1] - 1) * head.out_features


def test_head_token_scores_without_gradients_and_of_one_token() -> None:
    hidden, head, tokens = hidden_head_tokens()
    with torch.no_grad():
        logprobs, entropy = head_token_scores(hidden, head, tokens, chunk_size=2)
        expected = plain_logprobs(head(hidden), tokens, 1.0)
        single, _ = head_token_scores(hidden[:, :1], head, tokens[:, :1])
    assert entropy is None
    torch.testing.assert_close(logprobs, expected, atol=1e-5, rtol=1e-5)
    assert single.shape == (3, 1) and not single.any()
