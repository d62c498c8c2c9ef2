"""Token log-probs and entropies from logits without materializing a [B, T, V] float copy.

A plain log_softmax keeps a float32 [B, T, V] tensor alive for backward (gigabytes at a 150k
vocabulary). These functions work on chunks of positions in forward and recompute the softmax of
each chunk in backward, so the only full-size tensors are the logits and their gradient.

Alignment: logits[:, t] predicts tokens[:, t + 1]; the output at position t belongs to token t
(log p(tokens[t] | tokens[:t]) or the entropy of the distribution it was sampled from), and
position 0, which nothing predicts, is 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

DEFAULT_CHUNK = 1024


def token_logprobs(
    logits: Tensor, tokens: Tensor, temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK
) -> Tensor:
    """[B, T] log-probs of `tokens` [B, T] under softmax(logits [B, T, V] / temperature)."""
    _check(temperature, chunk_size)
    return _TokenLogprobs.apply(logits, tokens.long(), temperature, chunk_size)


def token_entropy(
    logits: Tensor, temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK
) -> Tensor:
    """[B, T] entropy of softmax(logits / temperature), aligned like token_logprobs."""
    _check(temperature, chunk_size)
    return _TokenEntropy.apply(logits, temperature, chunk_size)


def _check(temperature: float, chunk_size: int) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")


def _chunks(logits: Tensor, chunk_size: int) -> Iterator[tuple[int, slice, slice]]:
    """(row, predicting positions, predicted positions); each logits[row, positions] is one
    contiguous block, which a [B, T-1, V] slice reshaped to rows would not be."""
    batch, length, _ = logits.shape
    for row in range(batch):
        for start in range(0, length - 1, chunk_size):
            stop = min(start + chunk_size, length - 1)
            yield row, slice(start, stop), slice(start + 1, stop + 1)


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    # At least float32, so bf16 logits get an accurate softmax; float64 stays float64.
    return logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx, logits: Tensor, tokens: Tensor, temperature: float, chunk_size: int
    ) -> Tensor:
        out_dtype = torch.promote_types(logits.dtype, torch.float32)
        out = logits.new_zeros(tokens.shape, dtype=out_dtype)
        for row, source, target in _chunks(logits, chunk_size):
            scaled = _scaled(logits[row, source], temperature)
            picked = scaled.gather(-1, tokens[row, target, None]).squeeze(-1)
            out[row, target] = picked - torch.logsumexp(scaled, dim=-1)
        ctx.save_for_backward(logits, tokens)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size  # type: ignore[attr-defined]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None, None]:
        logits, tokens = ctx.saved_tensors
        grad = torch.zeros_like(logits)
        for row, source, target in _chunks(logits, ctx.chunk_size):
            upstream = grad_out[row, target, None]
            # d(z_y - logsumexp z)/dz = onehot(y) - softmax(z)
            chunk = -torch.softmax(_scaled(logits[row, source], ctx.temperature), dim=-1)
            chunk = chunk.scatter_add_(-1, tokens[row, target, None], torch.ones_like(upstream))
            grad[row, source] = (chunk * upstream / ctx.temperature).to(grad.dtype)
        return grad, None, None, None


class _TokenEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, logits: Tensor, temperature: float, chunk_size: int) -> Tensor:
        batch, length, _ = logits.shape
        out_dtype = torch.promote_types(logits.dtype, torch.float32)
        out = logits.new_zeros((batch, length), dtype=out_dtype)
        for row, source, target in _chunks(logits, chunk_size):
            log_p = torch.log_softmax(_scaled(logits[row, source], temperature), dim=-1)
            out[row, target] = -(log_p.exp() * log_p).sum(dim=-1)
        ctx.save_for_backward(logits, out)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size  # type: ignore[attr-defined]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None]:
        logits, entropy = ctx.saved_tensors
        grad = torch.zeros_like(logits)
        for row, source, target in _chunks(logits, ctx.chunk_size):
            log_p = torch.log_softmax(_scaled(logits[row, source], ctx.temperature), dim=-1)
            # dH/dz_j = -p_j * (log p_j + H)
            chunk = -log_p.exp() * (log_p + entropy[row, target, None])
            grad[row, source] = (chunk * grad_out[row, target, None] / ctx.temperature).to(
                grad.dtype
            )
        return grad, None, None
