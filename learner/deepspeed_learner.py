"""The DeepSpeed learner: one instance per rank, hosted as a Ray actor by the cluster.

Rank 0 reads whole groups from the buffer and shares them with the other ranks; every rank
trains on its shard; rank 0 publishes the new weights and, after a checkpoint is durable,
acknowledges the entries the checkpointed steps used.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from relayrl import metric_keys as keys
from relayrl.admission import SampleRefill
from relayrl.buffer import BufferEntry, TrajectoryConsumer
from relayrl.config import JobConfig
from relayrl.errors import JobConfigError
from relayrl.grouped_attention import use_grouped_sdpa
from relayrl.learner import checkpoint
from relayrl.learner.algorithms.build import build_advantage_estimator, build_objective
from relayrl.learner.batch_metrics import batch_metrics
from relayrl.learner.batching import pad_rows
from relayrl.learner.discard import discard_metrics
from relayrl.learner.engines import training_engine
from relayrl.learner.full_state import save_weights_and_engine
from relayrl.learner.group_filter import ZeroVarianceFilter
from relayrl.learner.intake import BatchIntake
from relayrl.learner.memory_metrics import learner_memory_metrics
from relayrl.learner.micro_batches import packing_order, rank_micro_batches
from relayrl.learner.off_policy import OffPolicyCorrection
from relayrl.learner.publishing import SERVE_JOINS, PolicyPublishing
from relayrl.learner.reference import ReferenceModel
from relayrl.learner.rewards import advantage_inputs
from relayrl.learner.scoring import PROXIMAL, REFERENCE, VALUES, Scorer, score_batch
from relayrl.learner.sft import SftTrainer
from relayrl.learner.update import PolicyUpdate
from relayrl.learner.value_model import ValueModel
from relayrl.trajectory import Trajectory, decode, encode
from relayrl.weights import WeightPublisher

log = logging.getLogger(__name__)

# What a collective may wait beyond a batch read: rank 0's publish and checkpoint writes.
COLLECTIVE_SLACK_S = 900.0


class LearnerDeviceError(JobConfigError):
    """A GPU learner rank found no usable CUDA device: learner.gpus_per_rank or the install
    must change."""


def learner_device(gpus_per_rank: int, cuda_available: bool, cuda_build: str | None) -> str:
    """The rank's device from `learner.gpus_per_rank`, never from what the machine happens to
    have: a CPU rank on a GPU box stays on CPU, a GPU rank without CUDA refuses to train."""
    if gpus_per_rank == 0:
        return "cpu"
    if cuda_build is None:
        raise LearnerDeviceError(
            "learner.gpus_per_rank is 1 but this torch is a CPU build; install the GPU build "
            "(bash scripts/install.sh --gpu) or set learner.gpus_per_rank: 0"
        )
    if not cuda_available:
        raise LearnerDeviceError(
            f"learner.gpus_per_rank is 1 but this rank sees no usable CUDA device (torch built "
            f"for CUDA {cuda_build}, CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}): the NVIDIA driver must "
            f"support CUDA {cuda_build} (nvidia-smi shows the highest it supports)"
        )
    return "cuda"


def collective_timeout(batch_timeout_s: float) -> timedelta:
    """Ranks >= 1 wait in the batch broadcast while rank 0 reads for up to batch_timeout_s:
    the process group must outlast that read, or DeepSpeed's default (10 min) kills the job."""
    return timedelta(seconds=batch_timeout_s + COLLECTIVE_SLACK_S)


class DeepSpeedLearner:
    """One rank. It takes the whole JobConfig, not one section: besides `learner` it reads the
    model dtype, the group shape, the sampling temperature, the staleness bound, the buffer's
    read block and the checkpoint folder. `rank` and the resolved `model_path` are facts of
    this run, not config."""

    def __init__(
        self,
        config: JobConfig,
        model_path: str,
        rank: int,
        consumer: TrajectoryConsumer | None,
        publisher: WeightPublisher | None,
        refill: SampleRefill | None = None,
    ) -> None:
        logging.basicConfig(level=logging.INFO)
        self.config = config
        self.model_path = model_path
        self.rank = rank
        self.consumer = consumer
        self.publishing = PolicyPublishing(
            publisher, rank, config.learner.num_ranks, config.learner.resolved_zero_stage
        )
        self.version = 0
        self.step = 0
        algorithm = config.learner.algorithm
        group_size = config.rollout.group_size
        group_filter = (
            ZeroVarianceFilter(algorithm.dynamic_sampling, algorithm.overlong, group_size)
            if algorithm.dynamic_sampling is not None
            else None
        )
        self.intake = (
            BatchIntake(
                consumer,
                group_size,
                config.trainer.prompts_per_step,
                config.trainer.max_staleness,
                config.learner.batch_timeout_s,
                config.buffer.read_block_ms,
                group_filter,
                refill,
                # While rank 0 waits for data, engines that joined get the current version.
                on_idle=self._serve_joins,
                root=config.checkpoint_dir,
            )
            if consumer is not None
            else None
        )
        self.engine: Any = None
        self.estimator = build_advantage_estimator(algorithm.advantage)
        self.objective = build_objective(algorithm)
        self.off_policy = OffPolicyCorrection(algorithm.off_policy)
        # Built in setup(), only when the algorithm uses them.
        self.reference: ReferenceModel | None = None
        self.value_model: ValueModel | None = None
        self.update: PolicyUpdate | None = None
        # The SFT stage, between start_sft() and end_sft() (learner/sft.py).
        self.sft: SftTrainer | None = None

    def setup(self, master_addr: str, master_port: int) -> dict[str, Any]:
        """Join the process group and build the engine; every rank calls this concurrently."""
        lc = self.config.learner
        if lc.gpus_per_rank == 0:
            # Hidden before anything touches CUDA, so no library picks a GPU behind our back.
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        device = learner_device(lc.gpus_per_rank, torch.cuda.is_available(), torch.version.cuda)
        on_gpu = device == "cuda"
        os.environ["DS_ACCELERATOR"] = device
        import deepspeed
        from transformers import AutoModelForCausalLM

        torch.manual_seed(self.config.trainer.seed)
        torch.set_num_threads(lc.torch_thread_count)
        os.environ.update(
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
            RANK=str(self.rank),
            # Ray shows each GPU rank only its own device, as cuda:0.
            LOCAL_RANK="0" if on_gpu else str(self.rank),
            WORLD_SIZE=str(lc.num_ranks),
        )
        if on_gpu:
            torch.cuda.set_device(0)
        deepspeed.init_distributed(
            dist_backend="nccl" if on_gpu else "gloo",
            verbose=False,
            timeout=collective_timeout(lc.batch_timeout_s),
        )
        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32)
        if not on_gpu:
            use_grouped_sdpa(model)
        if lc.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model.config.use_cache = False
        self.engine = training_engine(model, self.config, lc.lr)
        if lc.algorithm.kl is not None:
            self.reference = ReferenceModel.build(self.config, self.model_path)
        if lc.algorithm.critic is not None:
            self.value_model = ValueModel.build(self.config, self.model_path, lc.algorithm.critic)
        self.pad_id = model.config.pad_token_id or model.config.eos_token_id or 0
        if self.intake is not None:
            self.intake.vocab_size = model.config.vocab_size  # a larger token id is poison
        if isinstance(self.pad_id, list):
            self.pad_id = self.pad_id[0]
        self.update = PolicyUpdate(
            self.config, self.engine, self.objective, self.off_policy, self.value_model, self.pad_id
        )
        return {"rank": self.rank, "parameters": sum(p.numel() for p in model.parameters())}

    # ---- data -------------------------------------------------------------------------

    def _shared_batch(self) -> tuple[list[Trajectory], list[BufferEntry]]:
        """Rank 0 reads; the others receive the same trajectories in the same order."""
        entries = self.intake.next_batch(self.version) if self.intake is not None else []
        payload: list[Any] = [[encode(e.trajectory) for e in entries]]
        if self.config.learner.num_ranks > 1:
            dist.broadcast_object_list(payload, src=0)
            # Rank 0 may first ask for the gathers of a push to engines that joined (ZeRO-3).
            while payload[0] == SERVE_JOINS:
                self.publishing.gather_for_rank_0(self.engine.module)
                dist.broadcast_object_list(payload, src=0)
        return [decode(raw) for raw in payload[0]], entries

    def _serve_joins(self) -> None:
        self.publishing.serve_joins(self.engine.module)

    # ---- training -----------------------------------------------------------------------

    def _scorers(self) -> dict[str, Scorer]:
        """The no-grad passes this algorithm needs before the update."""
        assert self.update is not None
        scorers: dict[str, Scorer] = {}
        if self.off_policy.needs_proximal:
            scorers[PROXIMAL] = self.update.policy_logprobs
        if self.reference is not None:
            scorers[REFERENCE] = self.reference.logprobs
        if self.value_model is not None:
            scorers[VALUES] = self.value_model.values
        return scorers

    def train_step(self) -> dict[str, Any]:
        lc = self.config.learner
        assert self.update is not None, "setup() builds the engines first"
        started = time.perf_counter()
        trajectories, entries = self._shared_batch()
        waited = time.perf_counter() - started

        trajectories = packing_order(trajectories, lc.num_ranks)
        plan = rank_micro_batches(
            trajectories, self.rank, lc.num_ranks, lc.resolved_micro_batch_tokens
        )
        scores = score_batch(trajectories, plan, self.pad_id, self._scorers())
        full = pad_rows(trajectories, slice(None), self.pad_id)
        estimate = self.estimator(advantage_inputs(trajectories, full, scores, lc.algorithm))
        metrics = batch_metrics(trajectories, self.version)
        metrics.update(self.update.run(trajectories, plan, full, scores, estimate))
        trained = time.perf_counter() - started - waited
        self.version += 1
        self.step += 1
        publish_started = time.perf_counter()
        self.publish()
        publish_s = time.perf_counter() - publish_started
        if self.intake is not None:
            # Booking the trained batch frees its admission slots: only once the policy that
            # replaces the one it was sampled from is published, or workers would start the
            # next batch on the old weights.
            oldest_stale = self.intake.oldest_stale_version()
            booked = self.intake.record_step(self.step, entries)
            metrics.update(discard_metrics(booked, oldest_stale))
        metrics.update(
            {
                keys.STEP: self.step,
                keys.VERSION: self.version,
                keys.TIME_WAIT_BATCH_S: waited,
                keys.TIME_TRAIN_S: trained,
                keys.TIME_PUBLISH_S: publish_s,
                **self.publishing.push_metrics(),
            }
        )
        metrics.update(learner_memory_metrics())
        return metrics

    # ---- weights and checkpoints -------------------------------------------------------

    def publish(self) -> dict[str, Any]:
        """Publish the current weights as `self.version` (all ranks take part in gathering)."""
        return self.publishing.publish(self.engine.module, self.version)

    def save_checkpoint(self) -> str:
        """Write a checkpoint, then acknowledge the entries its steps used."""
        root = self.config.checkpoint_dir
        folder = checkpoint.step_dir(root, self.step)
        save_weights_and_engine(
            self.engine, folder, self.model_path, self.config.learner.resolved_zero_stage, self.rank
        )
        if self.value_model is not None:
            self.value_model.save_state(folder)
        if self.rank == 0:
            position = self.intake.last_entry_id if self.intake is not None else None
            checkpoint.write_state(
                folder,
                # The stream position is informational: delivery state lives in the consumer
                # group, and the ledger decides what counts as trained.
                {
                    "step": self.step,
                    "version": self.version,
                    "stream_position": position,
                    checkpoint.ZERO_STAGE_KEY: self.config.learner.resolved_zero_stage,
                },
            )
            # Ledger first, then `latest`, then acks: a crash between any two of them
            # re-delivers entries that the restored ledger does not count as trained.
            if self.intake is not None:
                self.intake.commit(folder)
            else:
                checkpoint.mark_latest(root, folder)
            checkpoint.prune(root, self.config.trainer.keep_checkpoints)
        if self.config.learner.num_ranks > 1:
            dist.barrier()
        return str(folder)

    def restore(self, folder: str) -> dict[str, Any]:
        """Resume from a checkpoint: engine and optimizer state, step, version, ledger."""
        path = Path(folder)
        state = checkpoint.read_state(path)
        checkpoint.check_zero_stage(path, state, self.config.learner.resolved_zero_stage)
        self.engine.load_checkpoint(str(path / "deepspeed"), tag="engine")
        if self.value_model is not None:
            self.value_model.load_state(path)
        self.step = int(state["step"])
        self.version = int(state["version"])
        if self.intake is not None:
            self.intake.restore(path.parent, self.step)
        return {"step": self.step, "version": self.version}

    # ---- the SFT stage before RL (learner/sft.py) ---------------------------------------

    def start_sft(self) -> dict[str, int]:
        self.sft = SftTrainer(self.engine, self.config, self.model_path, self.rank, self.pad_id)
        return self.sft.position()

    def sft_step(self) -> dict[str, float]:
        assert self.sft is not None, "start_sft() first"
        return self.sft.train_step()

    def save_sft_checkpoint(self) -> str:
        assert self.sft is not None, "start_sft() first"
        return self.sft.save_checkpoint()

    def restore_sft(self, folder: str) -> dict[str, int]:
        assert self.sft is not None, "start_sft() first"
        return self.sft.restore(folder)

    def end_sft(self) -> None:
        assert self.sft is not None, "start_sft() first"
        self.sft.finish()
        self.sft = None
