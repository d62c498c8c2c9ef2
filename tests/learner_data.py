"""Hand-made trajectories for learner tests, with behaviour log-probs from the real model."""

from __future__ import annotations

import uuid
from dataclasses import replace

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from relayrl.algorithm_config import AlgorithmConfig
from relayrl.learner.algorithms.logprobs import token_logprobs
from relayrl.learner.deepspeed_learner import LearnerSettings
from relayrl.trajectory import Trajectory


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


def learner_settings(model_path: str, checkpoint_dir: str, **changes) -> LearnerSettings:
    base = LearnerSettings(
        rank=0,
        world_size=1,
        model_path=model_path,
        dtype="float32",
        zero_stage=1,
        lr=1e-3,
        betas=(0.9, 0.999),
        weight_decay=0.0,
        warmup_steps=0,
        grad_clip=1.0,
        micro_batch_tokens=4096,
        gradient_checkpointing=False,
        torch_threads=1,
        group_size=2,
        prompts_per_step=1,
        temperature=1.0,
        algorithm=AlgorithmConfig(),
        checkpoint_dir=checkpoint_dir,
        keep_checkpoints=2,
        batch_timeout_s=120.0,
        read_block_ms=100,
    )
    return replace(base, **changes)
