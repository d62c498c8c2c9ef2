"""Token log-probs and entropies without materializing a [B, T, V] float copy.

A plain log_softmax keeps a float32 [B, T, V] tensor alive for backward (gigabytes at a 150k
vocabulary). token_logprobs and token_entropy work on chunks of positions of given logits in
forward and recompute the softmax of each chunk in backward, so the only full-size tensors are
the logits and their gradient. head_token_scores goes one step further: it starts from the last
hidden states and applies the output layer chunk by chunk, so the logits never exist whole.

Alignment: logits[:, t] predicts tokens[:, t + 1]; the output at position t belongs to token t
(log p(tokens[t] | tokens[:t]) or the entropy of the distribution it was sampled from), and
position 0, which nothing predicts, is 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK = 1024


def token_logprobs(
    logits: Tensor,
    tokens: Tensor,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
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
        ctx: FunctionCtx,
        logits: Tensor,
        tokens: Tensor,
        temperature: float,
        chunk_size: int,
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


# Logits of one chunk of positions stay under this many elements (32 MiB in float32).
HEAD_CHUNK_ELEMENTS = 1 << 23


def head_token_scores(
    hidden: Tensor,
    head: nn.Module,
    tokens: Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_size: int | None = None,
    where: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs of `tokens` [B, T] (and entropies) from the last hidden states [B, T, H]
    through the output layer `head`, aligned like token_logprobs.

    The head runs on `chunk_size` positions at a time (by default, as many as keep a chunk's
    logits under HEAD_CHUNK_ELEMENTS) and, with gradients, each chunk's logits are recomputed
    in backward instead of kept: no [B, T, V] tensor exists, in forward or in backward.

    `where` [B, T] (bool) names the positions whose scores are wanted (the loss mask); the
    head runs only on those and every other position is 0. Without it, every position."""
    batch, length, width = hidden.shape
    vocab = getattr(head, "out_features", None) or HEAD_CHUNK_ELEMENTS
    chunk = chunk_size or max(1, HEAD_CHUNK_ELEMENTS // vocab)
    _check(temperature, chunk)
    predicting = hidden[:, :-1].reshape(-1, width)
    targets = tokens[:, 1:].reshape(-1).long()
    chosen = None if where is None or not len(predicting) else _chosen_positions(where)
    if chosen is not None:
        predicting, targets = predicting[chosen], targets[chosen]
    recompute = torch.is_grad_enabled() and predicting.requires_grad
    logprobs, entropies = [], []
    for start in range(0, predicting.shape[0], chunk):
        part = (head, predicting[start : start + chunk], targets[start : start + chunk])
        scores = (
            checkpoint(_head_chunk, *part, temperature, with_entropy, use_reentrant=False)
            if recompute
            else _head_chunk(*part, temperature, with_entropy)
        )
        logprobs.append(scores[0])
        entropies.extend(scores[1:])
    out_dtype = torch.promote_types(hidden.dtype, torch.float32)
    if chosen is not None:
        logprobs = [_scattered(logprobs, chosen, batch * (length - 1), out_dtype, hidden)]
        if with_entropy:
            entropies = [_scattered(entropies, chosen, batch * (length - 1), out_dtype, hidden)]
    return (
        _aligned(logprobs, batch, length, out_dtype, hidden),
        _aligned(entropies, batch, length, out_dtype, hidden) if with_entropy else None,
    )


def _chosen_positions(where: Tensor) -> Tensor:
    """Flat indices of the predicting positions (0..B*(T-1)-1) whose predicted token `where`
    names; empty becomes [-1] (see _scattered)."""
    chosen = where[:, 1:].reshape(-1).nonzero().squeeze(1)
    return chosen if chosen.numel() else chosen.new_full((1,), -1)


def _scattered(
    parts: list[Tensor], chosen: Tensor, size: int, dtype: torch.dtype, like: Tensor
) -> Tensor:
    """The flat scores of every predicting position: the chosen ones' scores, 0 elsewhere.
    With nothing chosen, the last position is scored times 0, so a micro-batch with nothing
    to train (a ZeRO-3 stand-in) still runs its backward through every parameter."""
    values = torch.cat(parts).to(dtype)
    if chosen[0] < 0:
        values, chosen = values * 0, chosen.new_full((1,), size - 1)
    return like.new_zeros(size, dtype=dtype).index_copy(0, chosen, values)


def _head_chunk(
    head: nn.Module,
    hidden: Tensor,
    targets: Tensor,
    temperature: float,
    with_entropy: bool,
) -> tuple[Tensor, ...]:
    log_p = torch.log_softmax(_scaled(head(hidden), temperature), dim=-1)
    picked = log_p.gather(-1, targets[:, None]).squeeze(-1)
    return (picked, -(log_p.exp() * log_p).sum(dim=-1)) if with_entropy else (picked,)


def _aligned(
    parts: list[Tensor], batch: int, length: int, dtype: torch.dtype, like: Tensor
) -> Tensor:
    """[B, T] from the flat scores of positions 1..T-1, with position 0 (predicted by nothing) 0."""
    first = like.new_zeros((batch, 1), dtype=dtype)
    if not parts:
        return first.expand(batch, length).contiguous()
    return torch.cat([first, torch.cat(parts).view(batch, length - 1)], dim=1)
