"""Stop strings for transformers generate: a row stops once its new text contains one.

The token that completes a stop string is kept as sampled (its text may run past the stop
string), and nothing after it; `stopped_at` records where each row stopped."""

from __future__ import annotations

from typing import Any

import torch
from transformers import StoppingCriteria


class StopOnStrings(StoppingCriteria):
    def __init__(
        self, tokenizer: Any, stop_strings: tuple[str, ...], prompt_len: int, rows: int
    ) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = stop_strings
        self.prompt_len = prompt_len
        # Every token decodes to at least one byte, so a match ends within this many tokens.
        self.window = max(len(s.encode()) for s in stop_strings) + 1
        self.stopped_at: list[int | None] = [None] * rows

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        for row in range(input_ids.shape[0]):
            if self.stopped_at[row] is not None:
                continue
            new = input_ids[row, self.prompt_len :]
            tail = self.tokenizer.decode(new[-self.window :].tolist())
            if any(stop in tail for stop in self.stop_strings):
                self.stopped_at[row] = new.shape[0]
        done = [at is not None for at in self.stopped_at]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
