"""A CPU inference engine on plain `transformers` generate, behind the Engine protocol."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
)

from relayrl.actors.engine import Completion, FinishReason, SamplingSettings
from relayrl.actors.stop_strings import StopOnStrings

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class TransformersSettings:
    model_path: str
    dtype: str = "float32"
    torch_threads: int = 1
    seed: int = 0


class TransformersEngine:
    """Samples with temperature and top-p only, so the learner can recompute the same
    processed log-probs from logits / temperature (top-k and penalties stay off).
    Stop strings need the `tokenizer`."""

    def __init__(
        self,
        settings: TransformersSettings,
        eos_token_ids: tuple[int, ...],
        tokenizer: Any = None,
    ) -> None:
        torch.set_num_threads(settings.torch_threads)
        self._model = AutoModelForCausalLM.from_pretrained(
            settings.model_path, dtype=_DTYPES[settings.dtype]
        )
        self._model.eval()
        self._eos = eos_token_ids
        self._tokenizer = tokenizer
        self._version = 0
        # Requests without a seed draw from the process's stream: start it per engine.
        torch.manual_seed(settings.seed)
        # Generation and weight loading must not interleave on the same module.
        self._lock = threading.Lock()
        self._interrupted = threading.Event()

    @property
    def version(self) -> int:
        return self._version

    def _generation_config(self, settings: SamplingSettings) -> GenerationConfig:
        stop = tuple(dict.fromkeys((*self._eos, *settings.stop_token_ids)))
        return GenerationConfig(
            do_sample=True,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=0,
            max_new_tokens=settings.max_new_tokens,
            eos_token_id=list(stop) or None,
            # Padding only follows a stop token; with none, any id will do.
            pad_token_id=stop[0] if stop else 0,
            return_dict_in_generate=True,
            output_scores=True,
        )

    def _generate_sync(
        self, prompt_ids: list[int], settings: SamplingSettings, n: int
    ) -> list[Completion]:
        config = self._generation_config(settings)
        stop = set(config.eos_token_id or ())
        inputs = torch.tensor([prompt_ids] * n, dtype=torch.long)
        criteria = StoppingCriteriaList([_StopWhenSet(self._interrupted)])
        stop_strings = None
        if settings.stop_strings:
            if self._tokenizer is None:
                raise ValueError("stop strings need the engine to be given the tokenizer")
            stop_strings = StopOnStrings(
                self._tokenizer, settings.stop_strings, len(prompt_ids), rows=n
            )
            criteria.append(stop_strings)
        with self._lock, torch.inference_mode():
            self._interrupted.clear()
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            version = self._version
            out = self._model.generate(
                input_ids=inputs,
                attention_mask=torch.ones_like(inputs),
                generation_config=config,
                stopping_criteria=criteria,
            )
        new_tokens = out.sequences[:, len(prompt_ids) :]
        # scores are the processed logits (after temperature and top-p) of every step.
        step_logprobs = torch.stack(out.scores, dim=1).float().log_softmax(dim=-1)
        sampled = step_logprobs.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        completions = []
        for row in range(n):
            tokens = new_tokens[row].tolist()
            ends = [i + 1 for i, tok in enumerate(tokens) if tok in stop][:1]
            if stop_strings is not None and stop_strings.stopped_at[row] is not None:
                ends.append(stop_strings.stopped_at[row])
            length = min(ends, default=len(tokens))
            finish: FinishReason = "stop" if ends else "length"
            cut_short = len(tokens) < settings.max_new_tokens
            if not ends and cut_short and self._interrupted.is_set():
                finish = "abort"
            completions.append(
                Completion(
                    token_ids=tokens[:length],
                    logprobs=sampled[row, :length].tolist(),
                    finish_reason=finish,
                    versions=[version] * length,
                )
            )
        return completions

    def interrupt(self) -> None:
        """End the running generation at the next token; unfinished rows return "abort"."""
        self._interrupted.set()

    async def generate(
        self, prompt_ids: list[int], settings: SamplingSettings, n: int
    ) -> list[Completion]:
        return await asyncio.to_thread(self._generate_sync, prompt_ids, settings, n)

    def _load_sync(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        with self._lock, torch.no_grad():
            self._model.load_state_dict(dict(state), strict=True)
            self._version = version

    async def update_weights(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        await asyncio.to_thread(self._load_sync, state, version)

    async def close(self) -> None:
        self._model = None


class _StopWhenSet(StoppingCriteria):
    def __init__(self, flag: threading.Event) -> None:
        self._flag = flag

    def __call__(
        self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object
    ) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self._flag.is_set(), dtype=torch.bool)
