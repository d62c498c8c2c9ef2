"""The colocated placement's one Ray actor: the single CPU learner rank and an in-process
rollout worker whose transformers engine generates with the learner's own module.

Parameters are shared, never copied: publishing a version only names the version the engine
stamps on new tokens (cluster/weights/in_process.py). Generation and the learner's step take
turns on the same cores: the step, once its batch is read, holds the engine paused (running
rows finish first, new ones wait) through the update and the publish. The learner runs on a
thread of its own, so the worker's event loop keeps generating while the learner waits for
its batch.

The driver only needs the class to start the actor: what needs torch and transformers is
imported inside the methods, which run in the actor's process, so the driver stays light."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import ray

from relayrl.admission import AdmissionGate
from relayrl.buffer import TrajectoryConsumer, TrajectoryProducer
from relayrl.cluster.controller import ControllerRefill
from relayrl.config import JobConfig
from relayrl.ports import ALL_INTERFACES, free_port

if TYPE_CHECKING:
    from relayrl.actors.evaluation import EvalEpisode, EvalItem, EvalPlan
    from relayrl.actors.hf_engine import TransformersEngine
    from relayrl.cluster.sandboxed_worker import RolloutWorker

T = TypeVar("T")


class _RefillOnLoop:
    """The learner thread's SampleRefill: each call waits on the actor's event loop."""

    def __init__(self, refill: ControllerRefill) -> None:
        self._refill = refill
        self.loop: asyncio.AbstractEventLoop | None = None

    def booked(self, count: int) -> None:
        assert self.loop is not None, "learner calls come through ColocatedActor._on_learner"
        self._refill.booked_on(self.loop, count)


@ray.remote(max_restarts=0)
class ColocatedActor:
    """Learner rank 0 (the only one) and, once `start_rollout` is called, its rollout worker.
    Learner methods run on one dedicated thread; worker methods on the actor's event loop."""

    def __init__(
        self,
        config: JobConfig,
        model_path: str,
        consumer: TrajectoryConsumer,
        refill: ControllerRefill,
        threads: int,
    ) -> None:
        from relayrl.cluster.time_shared_learner import TimeSharedLearner
        from relayrl.cluster.weights.in_process import InProcessWeights

        self._threads = threads
        self._weights = InProcessWeights()
        self._refill = _RefillOnLoop(refill)
        self._learner = TimeSharedLearner(
            config, model_path, 0, consumer, self._weights, self._refill
        )
        self._learner_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="learner")
        self._config = config
        self._worker: RolloutWorker | None = None
        self._engine: TransformersEngine | None = None

    async def _on_learner(self, method: Callable[..., T], *args: Any) -> T:
        import torch

        def call() -> T:
            torch.set_num_threads(self._threads)
            return method(*args)

        self._refill.loop = loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._learner_thread, call)

    # ---- the learner rank: what LearnerGroup, the SFT stage and the loop call ----

    def rendezvous_address(self) -> tuple[str, int]:
        return ray.util.get_node_ip_address(), free_port(ALL_INTERFACES)

    async def setup(self, master_addr: str, master_port: int) -> dict[str, Any]:
        return await self._on_learner(self._learner.setup, master_addr, master_port)

    async def publish(self) -> dict[str, Any]:
        return await self._on_learner(self._learner.publish)

    async def train_step(self) -> dict[str, Any]:
        return await self._on_learner(self._learner.train_step)

    async def save_checkpoint(self) -> str:
        return await self._on_learner(self._learner.save_checkpoint)

    async def restore(self, folder: str) -> dict[str, Any]:
        return await self._on_learner(self._learner.restore, folder)

    async def start_sft(self) -> dict[str, int]:
        return await self._on_learner(self._learner.start_sft)

    async def sft_step(self) -> dict[str, float]:
        return await self._on_learner(self._learner.sft_step)

    async def save_sft_checkpoint(self) -> str:
        return await self._on_learner(self._learner.save_sft_checkpoint)

    async def restore_sft(self, folder: str) -> dict[str, int]:
        return await self._on_learner(self._learner.restore_sft, folder)

    async def end_sft(self) -> None:
        await self._on_learner(self._learner.end_sft)

    # ---- the in-process rollout worker: what the colocated fleet calls ----

    async def start_rollout(
        self,
        worker_id: str,
        model_path: str,
        start_step: int,
        producer: TrajectoryProducer,
        gate: AdmissionGate,
    ) -> None:
        """A worker whose engine generates with the learner's module, from the newest
        published version; replaces (and closes) a previous worker's engine."""
        from transformers import AutoTokenizer

        from relayrl.actors.hf_engine import TransformersEngine, TransformersSettings
        from relayrl.actors.rollout_worker import engine_seed
        from relayrl.cluster.sandboxed_worker import RolloutWorker

        await self.stop_rollout()
        config = self._config
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        seed = engine_seed(config.trainer.rollout_seed(start_step), worker_id)
        module = self._learner.engine.module
        engine = TransformersEngine(
            TransformersSettings(model_path, config.model.dtype, self._threads, seed),
            eos_token_ids=tuple(int(t) for t in [tokenizer.eos_token_id] if t is not None),
            tokenizer=tokenizer,
            model=module,
        )
        # The learner is between calls: no step runs while the engine takes the version.
        with engine.paused():
            self._weights.attach(engine)
        self._learner.rollout_engine = self._engine = engine
        self._worker = RolloutWorker(
            config, worker_id, model_path, start_step, producer, self._weights, gate, engine
        )

    async def run_rollout(self) -> dict[str, Any]:
        assert self._worker is not None, "start_rollout() first"
        return await self._worker.run()

    async def report(self) -> dict[str, Any]:
        assert self._worker is not None, "start_rollout() first"
        return self._worker.report()

    async def evaluate(self, plan: EvalPlan, items: list[EvalItem]) -> list[EvalEpisode]:
        assert self._worker is not None, "start_rollout() first"
        return await self._worker.evaluate(plan, items)

    async def stop_rollout(self) -> None:
        engine, self._engine, self._worker = self._engine, None, None
        self._learner.rollout_engine = None
        if engine is not None:
            await engine.close()

    async def shares_parameters(self) -> bool:
        """Whether every engine parameter is the learner's own storage (tests)."""
        assert self._engine is not None, "start_rollout() first"
        with self._engine.paused() as model:
            engine_ptrs = [p.data_ptr() for p in model.parameters()]
        learner_ptrs = [p.data_ptr() for p in self._learner.engine.module.parameters()]
        return bool(engine_ptrs) and engine_ptrs == learner_ptrs
