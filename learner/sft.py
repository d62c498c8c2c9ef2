"""The SFT stage on the learner's own DeepSpeed engine: negative log-likelihood of the assistant
tokens of demonstrations (token mean over the whole batch), at its own learning rate, with its
own checkpoints (`<output.dir>/sft/step-N/`: Hugging Face weights, DeepSpeed state, position).

Every rank holds the same rows in the same order and trains its contiguous share of each
batch; the micro-batch plan pads ranks to the same number of passes, as RL steps do."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from relayrl.config import JobConfig
from relayrl.demos import read_demos
from relayrl.learner import checkpoint
from relayrl.learner.engines import step_and_grad_norm
from relayrl.learner.full_state import save_weights_and_engine
from relayrl.learner.micro_batches import micro_batch_tensors, rank_micro_batches
from relayrl.learner.rank_sync import sum_over_ranks
from relayrl.learner.sft_data import Framing, training_rows
from relayrl.learner.token_scores import token_scores
from relayrl.sft_config import sft_dir
from relayrl.trajectory import Trajectory


def framing(config: JobConfig) -> Framing:
    agent = config.rollout.agent
    return Framing(
        agent.observation_role, agent.max_observation_chars, agent.max_observation_tokens
    )


def set_schedule(engine: Any, lr: float, steps_done: int) -> None:
    """Point the engine's warm-up schedule at `lr`, as if `steps_done` steps had run."""
    scheduler = engine.lr_scheduler
    scheduler.base_lrs = [lr] * len(scheduler.base_lrs)
    scheduler.last_epoch = steps_done
    # Set here rather than by scheduler.step(), which belongs after an optimizer step.
    for group, factor in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["lr"] = lr * factor(steps_done)


class SftTrainer:
    def __init__(
        self, engine: Any, config: JobConfig, model_path: str, rank: int, pad_id: int
    ) -> None:
        from transformers import AutoTokenizer

        sft = config.trainer.sft
        if sft is None:
            raise ValueError("the job has no trainer.sft section")
        self.sft = sft
        self.engine = engine
        self.config = config
        self.model_path = model_path
        self.rank = rank
        self.pad_id = pad_id
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.rows = training_rows(read_demos(sft.data), tokenizer, framing(config), sft.max_tokens)
        per_epoch = len(self.rows) / sft.batch_size
        self.total_steps = sft.steps or max(1, math.ceil((sft.epochs or 0) * per_epoch))
        self.step = 0
        set_schedule(engine, sft.lr, 0)

    def position(self) -> dict[str, int]:
        return {"step": self.step, "total_steps": self.total_steps, "rows": len(self.rows)}

    def batch(self, step: int) -> list[Trajectory]:
        """Step `step`'s conversations: consecutive slices of one shuffled order per epoch."""
        size, count = self.sft.batch_size, len(self.rows)
        orders: dict[int, list[int]] = {}
        chosen = []
        for position in range(step * size, (step + 1) * size):
            epoch, index = divmod(position, count)
            if epoch not in orders:
                orders[epoch] = list(range(count))
                random.Random(f"{self.sft.seed}-{epoch}").shuffle(orders[epoch])
            chosen.append(self.rows[orders[epoch][index]])
        return chosen

    def train_step(self) -> dict[str, float]:
        engine = self.engine
        lc = self.config.learner
        rows = self.batch(self.step)
        plan = rank_micro_batches(rows, self.rank, lc.num_ranks, lc.resolved_micro_batch_tokens)
        tokens = sum(row.num_sampled_tokens for row in rows)  # the whole batch's, on every rank
        nll = torch.zeros(1, dtype=torch.float64)
        engine.train()
        for index, micro in enumerate(plan):
            tensors = micro_batch_tensors(rows, micro, self.pad_id).to(engine.device)
            engine.set_gradient_accumulation_boundary(index == len(plan) - 1)
            logprobs, _ = token_scores(engine, tensors, temperature=1.0)
            micro_nll = -(logprobs * tensors.loss_mask).sum()
            # DeepSpeed averages gradients over ranks; the token count already spans them all.
            engine.backward(micro_nll / tokens * lc.num_ranks, scale_wrt_gas=False)
            nll += float(micro_nll.detach())
        lr = float(engine.get_lr()[0])
        grad_norm = step_and_grad_norm(engine)
        self.step += 1
        return {
            "sft/step": self.step,
            "sft/loss": float(sum_over_ranks(nll).item()) / tokens,
            "sft/assistant_tokens": tokens,
            "sft/epoch": self.step * self.sft.batch_size / len(self.rows),
            "sft/lr": lr,
            "sft/grad_norm": grad_norm,
        }

    def save_checkpoint(self) -> str:
        """Hugging Face weights and tokenizer, the engine state, then `latest`."""
        root = sft_dir(self.config.output_dir)
        folder = checkpoint.step_dir(root, self.step)
        save_weights_and_engine(
            self.engine, folder, self.model_path, self.config.learner.resolved_zero_stage, self.rank
        )
        if self.rank == 0:
            stage = self.config.learner.resolved_zero_stage
            checkpoint.write_state(folder, {**self.position(), checkpoint.ZERO_STAGE_KEY: stage})
            checkpoint.mark_latest(root, folder)
            checkpoint.prune(root, self.config.trainer.keep_checkpoints)
        if self.config.learner.num_ranks > 1:
            dist.barrier()
        return str(folder)

    def restore(self, folder: str) -> dict[str, int]:
        path = Path(folder)
        state = checkpoint.read_state(path)
        checkpoint.check_zero_stage(path, state, self.config.learner.resolved_zero_stage)
        self.engine.load_checkpoint(str(path / "deepspeed"), tag="engine")
        self.step = int(state["step"])
        return self.position()

    def finish(self) -> None:
        """Hand the engine to RL: its own learning rate and warm-up from the start."""
        set_schedule(self.engine, self.config.learner.lr, 0)
