"""Hand-made trajectories for learner tests, with behaviour log-probs from the real model."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from relayrl.config import JobConfig
from relayrl.learner.algorithms.logprobs import token_logprobs
from relayrl.trajectory import Trajectory
from tests.job_configs import job_config


class TrajectoryMaker:
    """Trajectories over random tokens whose behaviour log-probs are the model's own."""

    def __init__(self, model_path: str, seed: int = 0) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        self.vocab = self.model.config.vocab_size
        self.rng = np.random.default_rng(seed)

    @torch.no_grad()
    def logprobs(self, tokens: np.ndarray, model: torch.nn.Module | None = None) -> np.ndarray:
        logits = (model or self.model)(input_ids=torch.from_numpy(tokens)[None].long()).logits
        return token_logprobs(logits, torch.from_numpy(tokens)[None].long())[0].numpy()

    def group(
        self,
        rewards: list[float],
        prompt_len: int,
        response_len: int,
        version: int = 0,
        logprob_shift: float = 0.0,
    ) -> list[Trajectory]:
        """One prompt, one random response per reward; `logprob_shift` is added to the
        behaviour log-probs (a behaviour policy that differs from the model)."""
        group_id = uuid.uuid4().hex
        prompt = self.rng.integers(3, self.vocab, prompt_len)
        made = []
        for reward in rewards:
            tokens = np.concatenate([prompt, self.rng.integers(3, self.vocab, response_len)])
            mask = np.r_[np.zeros(prompt_len), np.ones(response_len)].astype(np.uint8)
            logprobs = np.where(mask > 0, self.logprobs(tokens) + logprob_shift, 0.0)
            made.append(
                Trajectory(
                    group_id=group_id,
                    tokens=tokens,
                    prompt_len=prompt_len,
                    loss_mask=mask,
                    logprobs=logprobs,
                    versions=np.where(mask > 0, version, -1),
                    reward=reward,
                )
            )
        return made


def learner_config(output_dir: str, fields: dict[str, Any] | None = None) -> JobConfig:
    """One CPU rank on one thread, ZeRO-1, lr 1e-3, groups of two, one group a step, and no
    staleness bound (hand-made batches carry whatever versions a test gives them), unless
    `fields` (dotted paths) say otherwise."""
    return job_config(
        {
            "model.dtype": "float32",
            "learner.zero_stage": 1,
            "learner.lr": 1e-3,
            "learner.torch_threads": 1,
            "learner.batch_timeout_s": 120.0,
            "rollout.group_size": 2,
            "trainer.prompts_per_step": 1,
            "trainer.max_staleness": 1000,
            "buffer.read_block_ms": 100,
            "output.dir": output_dir,
            **(fields or {}),
        }
    )
