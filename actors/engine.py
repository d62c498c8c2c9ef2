"""The inference-engine seam: token ids in, sampled token ids and their log-probs out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from relayrl.trajectory import EpisodeEnd

# Annotations only: the driver checks workflows against this seam without loading torch.
if TYPE_CHECKING:
    import torch

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


# What an engine can do beyond `Engine`; the rollout worker checks these with isinstance.


@runtime_checkable
class LoadsWeightsInPlace(Engine, Protocol):
    """`update_weights` may run while `generate` calls are in flight: they pause and continue
    under the new version (vLLM), so a new version needs no interrupt to be loaded."""

    loads_in_place: Literal[True]


@runtime_checkable
class InterruptibleEngine(Engine, Protocol):
    def interrupt(self) -> None:
        """End every running `generate` call at the next token with finish reason "abort"."""
        ...


@runtime_checkable
class ReceivesPushes(Protocol):
    """The receiving end of the NCCL transport, in the order the learner calls it."""

    async def init_weight_transfer(self, init_info: dict[str, Any]) -> None:
        """Join the learner's NCCL group for this engine."""
        ...

    async def begin_weight_transfer(self) -> None:
        """Pause generation and get ready to receive a version."""
        ...

    async def receive_weight_chunk(self, update_info: dict[str, Any]) -> None:
        """Receive the broadcast the learner sends at the same time."""
        ...

    async def finish_weight_transfer(self, version: int) -> None:
        """Load what was received and resume generation under `version`."""
        ...
