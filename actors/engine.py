"""The inference-engine seam: token ids in, sampled token ids and their log-probs out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from relayrl.trajectory import EpisodeEnd

# How one generation call can end; the agent loop's other EpisodeEnd values are its own.
GENERATION_ENDS = frozenset({EpisodeEnd.STOP, EpisodeEnd.LENGTH, EpisodeEnd.ABORT})


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()
    # Stop strings end a turn (e.g. "</code>"); the matched text stays in the output tokens.
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Completion:
    """One sampled continuation. `logprobs[i]` is the processed (post temperature/top-p)
    log-probability of `token_ids[i]` under the weights of `version`."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: EpisodeEnd
    versions: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.finish_reason = EpisodeEnd(self.finish_reason)
        if self.finish_reason not in GENERATION_ENDS:
            raise ValueError(f"a generation cannot end with {self.finish_reason!r}")


@runtime_checkable
class Engine(Protocol):
    """What a rollout worker needs from an inference engine."""

    @property
    def version(self) -> int:
        """Policy version of the weights currently loaded."""
        ...

    async def generate(
        self, prompt_ids: list[int], settings: SamplingSettings, n: int
    ) -> list[Completion]:
        """Sample `n` continuations of one prompt. Callers run many at once; an engine
        serves concurrent calls together (one batch), and with `settings.seed` a call's
        samples do not depend on the calls it shares a batch with."""
        ...

    async def update_weights(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        """Load a full state dict (Hugging Face parameter names) as policy `version`."""
        ...

    async def close(self) -> None: ...
