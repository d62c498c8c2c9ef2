"""The job configuration schema. Every section forbids unknown fields, so a typo names itself."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from relayrl.algorithm_config import AlgorithmConfig
from relayrl.autoscale_config import AutoscaleConfig
from relayrl.eval_config import EvalConfig
from relayrl.sft_config import SftConfig
from relayrl.tracker_config import TrackerConfig

REDIS_SCHEMES = ("redis", "rediss", "unix")

# A thread count, or "auto": the whole cores Ray reserves for the actor.
TorchThreads = Annotated[int, Field(ge=1)] | Literal["auto"]
Dtype = Literal["float32", "bfloat16"]


def thread_count(setting: int | Literal["auto"], cpus: float) -> int:
    """Threads for an actor with `cpus` Ray CPUs; auto: one per whole core, at least one."""
    return max(1, math.floor(cpus)) if setting == "auto" else setting


class Section(BaseModel):
    # Infinity passes every lower bound, NaN any unbounded field: refuse both everywhere.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _finite_floats_only(cls, data: Any) -> Any:
        found = non_finite_floats(data) if isinstance(data, dict) else []
        if found:
            raise ValueError(f"{found[0]}: NaN and infinity are not allowed in a config")
        return data


def non_finite_floats(tree: Any, where: str = "") -> list[str]:
    """Dotted paths of the NaN and infinite floats anywhere in a raw config tree, including
    the free-form parameter mappings no schema types."""
    if isinstance(tree, float):
        return [] if math.isfinite(tree) else [where]
    if isinstance(tree, dict):
        children: Any = tree.items()
    elif isinstance(tree, list | tuple):
        children = enumerate(tree)
    else:
        return []
    found = []
    for key, child in children:
        found += non_finite_floats(child, f"{where}.{key}" if where else str(key))
    return found


def redact_url(url: str) -> str:
    """The URL with any password replaced, for config.yaml, logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


class ModelConfig(Section):
    path: str = Field(
        "smollm2-135m",
        description='A Hugging Face model folder, or a built-in name such as "smollm2-135m".',
    )
    dtype: Dtype = Field(
        "float32", description="Weights and compute dtype of the learner and the engines."
    )


class SamplingConfig(Section):
    max_new_tokens: int = Field(64, ge=1, description="Most tokens one turn may sample.")
    temperature: float = Field(
        1.0,
        gt=0,
        description="Sampling temperature; the learner scores log-probs at the same one.",
    )
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")


class AgentConfig(Section):
    """The multi-turn agent loop; single-turn environments end after their first step."""

    max_turns: int = Field(4, ge=1, description="Most model turns of one episode.")
    max_total_tokens: int = Field(
        2048,
        ge=2,
        description="Prompt, turns and observations together; no turn may take an episode past it.",
    )
    drop_void_trajectories: bool = Field(
        False,
        description="SimpleTIR: an episode with a turn that neither calls a tool nor answers "
        "is masked from the loss (it stays in its group, so group baselines still see it).",
    )
    observation_role: Literal["user", "tool"] = Field(
        "user",
        description="The chat role that carries environment messages (tool results, feedback).",
    )
    max_observation_chars: int = Field(
        8192,
        ge=64,
        description="Longest observation (tool output, feedback) in characters; the rest is "
        "cut, with a marker, before it is tokenized.",
    )
    max_observation_tokens: int = Field(
        1024,
        ge=32,
        description="Longest observation in tokens; the rest is cut, with a marker.",
    )


class VLLMConfig(Section):
    """The vLLM engine of each rollout worker (`rollout.engine: vllm`)."""

    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine shards over.")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Share of each GPU's memory the engine may take."
    )
    max_model_len: int | None = Field(
        None, ge=16, description="The engine's context length; none: the model's own."
    )
    cpu_kv_cache_gib: float = Field(
        1.0, gt=0, description="CPU build only: KV-cache size per engine, in GiB."
    )
    weight_bucket_mib: int = Field(
        256,
        ge=1,
        description="Weights are staged (shared memory) or broadcast (NCCL) in buckets of "
        "this many MiB.",
    )
    weight_sync_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Bound on every weight-sync call (pause, load, rendezvous, broadcast, resume).",
    )

    @property
    def cpu_kv_cache_bytes(self) -> int:
        return int(self.cpu_kv_cache_gib * (1 << 30))

    @property
    def weight_bucket_bytes(self) -> int:
        return self.weight_bucket_mib << 20


class RolloutConfig(Section):
    engine: Literal["transformers", "vllm"] = Field(
        "transformers",
        description="Each worker's inference engine: transformers (CPU, batched) or vllm.",
    )
    vllm: VLLMConfig = Field(VLLMConfig(), description="The vLLM engine (engine: vllm).")
    num_workers: int = Field(2, ge=1, description="Rollout workers at start.")
    group_size: int = Field(
        8, ge=1, description="Episodes per task; advantages compare them within the group."
    )
    sampling: SamplingConfig = Field(SamplingConfig(), description="How turns are sampled.")
    agent: AgentConfig = Field(AgentConfig(), description="The multi-turn agent loop.")
    workflow: str = Field(
        "relayrl.actors.agent_loop:AgentLoop",
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="The rollout workflow that plays each group, as package.module:Class (a "
        "relayrl.actors.workflow.RolloutWorkflow); the default is the built-in agent loop.",
    )
    cpus_per_worker: float = Field(0.5, gt=0, description="CPUs Ray reserves for each worker.")
    gpus_per_worker: float = Field(
        0,
        ge=0,
        description="GPUs Ray reserves for each worker; a vLLM worker needs "
        "vllm.tensor_parallel_size of them.",
    )
    torch_threads: TorchThreads = Field(
        "auto",
        description="Threads of each worker's engine; auto: the whole cores of cpus_per_worker "
        "(at least one), so generation and training never share a core.",
    )
    max_concurrent_groups: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto",
        description="Groups one worker plays at once (admission still bounds them); a batching "
        "engine samples all their sequences in one forward. auto: trainer.prompts_per_step, "
        "enough for one worker to fill a learner batch at once.",
    )
    weight_update: Literal["finish", "interrupt"] = Field(
        "finish",
        description="When new weights are published mid-generation: finish lets in-flight "
        "samples end on the old weights; interrupt stops them at the next token and continues "
        "on the new ones.",
    )
    weight_transport: Literal["object_store", "nccl"] = Field(
        "object_store",
        description="How published weights reach the workers: each worker pulls them from "
        "Ray's object store (object_store, CPU or GPU), or learner rank 0 broadcasts them into "
        "every vLLM engine over NCCL (nccl, GPU learner and GPU vLLM workers).",
    )
    max_worker_restarts: int = Field(
        3, ge=0, description="Restarts of crashed workers before the job reports them dead."
    )
    placement: Literal["auto", "separate", "colocated"] = Field(
        "auto",
        description="Where generation runs. separate: rollout workers are Ray actors of their "
        "own, generating while the learner trains; colocated: one Ray actor holds the one CPU "
        "learner rank and one in-process transformers worker that generates with the "
        "learner's own module (no weight copy, one model in memory), the two taking turns "
        "with all the actor's cores (num_workers, cpus_per_worker and scaling do not apply); "
        "auto: colocated for one CPU learner rank with the transformers engine on a local Ray "
        "instance of at most 4 cores, separate otherwise (docs/architecture.md).",
    )

    @property
    def torch_thread_count(self) -> int:
        return thread_count(self.torch_threads, self.cpus_per_worker)

    autoscale: AutoscaleConfig | None = Field(
        None,
        description="Size the fleet between min_workers and max_workers by what the learner "
        "uses (num_workers is where it starts); none keeps num_workers, changed only by "
        "`relayrl scale`.",
    )


class EnvConfig(Section):
    name: str = Field(
        "arithmetic", description='A registered environment name or "package.module:Class".'
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="The environment's own parameters, checked by its parameter model.",
    )


class BufferConfig(Section):
    url: str | None = Field(
        None,
        description="redis://host:port/db, rediss://host:port/db (TLS) or unix:///path; "
        "none starts an embedded redis-server. A password belongs in password_env or "
        "password_file: one written here is redacted from config.yaml and logs",
    )
    password_env: str | None = Field(
        None,
        min_length=1,
        description="Environment variable holding the Redis password; every process that "
        "connects (driver, learner, rollout workers) reads it from its own environment",
    )
    password_file: str | None = Field(
        None,
        min_length=1,
        description="File holding the Redis password (surrounding whitespace is dropped); "
        "every node that runs a worker or the learner must have it at this path",
    )
    connect_timeout_s: float = Field(
        10.0,
        gt=0,
        description="How long the start-up check waits for buffer.url to answer before "
        "the job refuses to start; a Redis lost mid-run is ridden out separately",
    )
    stream: str | None = Field(
        None, description='The Redis stream; none: "relayrl:<job name>:trajectories".'
    )
    maxlen: int = Field(
        1_000_000,
        ge=1000,
        description="Safety bound on the stream length; admission control keeps the backlog "
        "far below it.",
    )
    read_block_ms: int = Field(
        1000, ge=1, description="How long one learner read blocks on an empty stream."
    )
    fsync: Literal["always", "everysec"] = Field(
        "always",
        description="Embedded Redis: always fsyncs every write, so a crash loses nothing "
        "acknowledged.",
    )
    trim_acknowledged: bool = Field(
        True,
        description="Drop acknowledged entries from the stream; off keeps the full history "
        "for auditing.",
    )
    memory_budget_mb: int = Field(
        512,
        ge=1,
        description="Most memory the stream may take in Redis: over it, the job commits a "
        "checkpoint at the end of the step, so its entries are acknowledged and trimmed",
    )

    @field_validator("url")
    @classmethod
    def _url_names_a_redis(cls, url: str | None) -> str | None:
        if url is None:
            return None
        shown = url
        try:
            parts = urlsplit(url)
            shown = redact_url(url)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"{shown!r} is not a valid URL ({exc})") from None
        if parts.scheme not in REDIS_SCHEMES:
            raise ValueError(f"{shown!r} is not a redis://, rediss:// (TLS) or unix:// URL")
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError(f"{shown!r} names no socket path")
            return url
        if not parts.hostname:
            raise ValueError(f"{shown!r} names no host")
        if port == 0:
            raise ValueError(f"{shown!r}: port 0 is not a Redis port")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ValueError(f"{shown!r}: the path must be a database number, not {db!r}")
        return url

    @field_serializer("url")
    def _url_without_password(self, url: str | None) -> str | None:
        return None if url is None else redact_url(url)

    @model_validator(mode="after")
    def _one_password_source(self) -> BufferConfig:
        named = [
            name
            for name, given in (
                ("buffer.url (password part)", bool(self.url and urlsplit(self.url).password)),
                ("buffer.password_env", self.password_env is not None),
                ("buffer.password_file", self.password_file is not None),
            )
            if given
        ]
        if len(named) > 1:
            raise ValueError(f"{' and '.join(named)} both give a Redis password; keep one")
        if named and self.url is None:
            raise ValueError(f"{named[0]} is set but buffer.url is not")
        return self


class LearnerConfig(Section):
    num_ranks: int = Field(1, ge=1, description="DeepSpeed data-parallel ranks.")
    cpus_per_rank: float = Field(1.0, gt=0, description="CPUs Ray reserves for each rank.")
    gpus_per_rank: Literal[0, 1] = Field(
        0, description="0 trains on CPU (gloo); 1 gives each rank a GPU (NCCL)."
    )
    torch_threads: TorchThreads = Field(
        "auto",
        description="Threads of each learner rank; auto: the whole cores of cpus_per_rank "
        "(at least one).",
    )
    zero_stage: Literal["auto", 0, 1, 2, 3] = Field(
        "auto",
        description="DeepSpeed ZeRO stage of the policy, the critic and the reference; auto: "
        "0 on one rank (nothing to shard; ZeRO-1/2 would add an fp32 master clone and flat "
        "gradient buffers), 2 on more.",
    )
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    warmup_steps: int = Field(
        0, ge=0, description="Optimizer steps of linear learning-rate warm-up."
    )
    grad_clip: float = Field(1.0, gt=0, description="Gradient norm clipping bound.")
    micro_batch_tokens: Annotated[int, Field(ge=16)] | Literal["auto"] = Field(
        "auto",
        description="Micro-batches are packed up to this many tokens; gradients accumulate "
        "across them. auto: 512 on CPU ranks, 4096 on GPU ranks (benchmarks/memory.py "
        "--learner-variants: a CPU rank's step peak 5.7 -> 4.2 GB from 2048 to 512, no slower).",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute each layer's activations in backward instead of keeping them: "
        "about 4x less memory per micro-batch token for one more forward per step "
        "(measured in BENCHMARKS.md); for long contexts or large micro-batches.",
    )
    algorithm: AlgorithmConfig = Field(
        AlgorithmConfig(), description="Advantage estimator, loss, critic and regularizers."
    )
    batch_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Seconds the learner waits for one batch before it reports the rollout "
        "side stalled.",
    )

    @property
    def torch_thread_count(self) -> int:
        return thread_count(self.torch_threads, self.cpus_per_rank)

    @property
    def resolved_zero_stage(self) -> int:
        """The ZeRO stage every engine runs at: zero_stage, auto resolved by the rank count."""
        if self.zero_stage == "auto":
            return 0 if self.num_ranks == 1 else 2
        return self.zero_stage

    @property
    def resolved_micro_batch_tokens(self) -> int:
        """The micro-batch token budget: micro_batch_tokens, auto resolved by the device."""
        if self.micro_batch_tokens == "auto":
            return 4096 if self.gpus_per_rank else 512
        return self.micro_batch_tokens


class TrainerConfig(Section):
    steps: int = Field(20, ge=1, description="Learner steps of the job.")
    prompts_per_step: int = Field(
        4, ge=1, description="Groups per learner step (each of rollout.group_size episodes)."
    )
    max_staleness: int = Field(
        0,
        ge=0,
        description="0 is on-policy synchronous; k lets generation run at most k policy "
        "versions ahead, and older groups are discarded.",
    )
    checkpoint_every: int = Field(
        0, ge=0, description="Steps between checkpoints; 0: only at the end."
    )
    keep_checkpoints: int = Field(2, ge=1, description="Newest checkpoints kept on disk.")
    seed: int = Field(0, description="Seed of the learner, the workers' tasks and sampling.")
    sft: SftConfig | None = Field(
        None, description="Supervised fine-tuning on demonstrations before RL."
    )

    def rollout_seed(self, start_step: int) -> int:
        """The workers' seed in a job that starts at `start_step`: a resumed job draws new
        tasks instead of replaying the ones it drew before the crash."""
        return self.seed + 7919 * start_step


class RayConfig(Section):
    num_cpus: int | None = Field(
        None,
        ge=1,
        description="CPUs of a local Ray instance (RAY_ADDRESS unset); none: enough for "
        "every actor the job asks for.",
    )


class OutputConfig(Section):
    dir: str = Field("runs/{name}", description="The job's folder; {name} is the job name.")
    tensorboard: bool = Field(True, description="Write TensorBoard event files.")
    plot: bool = Field(True, description="Plot the reward curve at the end.")
    loggers: list[TrackerConfig] = Field(
        default_factory=list,
        description="Experiment trackers the metrics also go to: {name: wandb, project, "
        "entity, mode, tags} or {name: mlflow, tracking_uri, experiment}; each needs its "
        "package installed.",
    )

    @field_validator("dir")
    @classmethod
    def _only_name_is_substituted(cls, folder: str) -> str:
        try:
            folder.format(name="job")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"{folder!r}: only {{name}} may be substituted ({exc!r})") from None
        if not folder.strip():
            raise ValueError("must name a folder")
        return folder


class JobConfig(Section):
    name: str = Field(
        "relayrl-job",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="The job's name: its output folder, stream and controller are named by it.",
    )
    model: ModelConfig = Field(ModelConfig(), description="The policy model.")
    rollout: RolloutConfig = Field(RolloutConfig(), description="The rollout workers.")
    env: EnvConfig = Field(EnvConfig(), description="The environment episodes run in.")
    buffer: BufferConfig = Field(BufferConfig(), description="The Redis trajectory stream.")
    learner: LearnerConfig = Field(LearnerConfig(), description="The DeepSpeed learner.")
    trainer: TrainerConfig = Field(TrainerConfig(), description="The training loop.")
    ray: RayConfig = Field(RayConfig(), description="The Ray cluster.")
    output: OutputConfig = Field(OutputConfig(), description="What the job writes.")
    eval: EvalConfig | None = Field(
        None, description="Held-out evaluation on the rollout workers; none: no evaluation."
    )

    @model_validator(mode="after")
    def _buffer_holds_the_backlog(self) -> JobConfig:
        backlog = (self.trainer.max_staleness + 2) * self.batch_size
        if self.buffer.maxlen < 4 * backlog:
            raise ValueError(
                f"buffer.maxlen {self.buffer.maxlen} is below 4x the largest backlog "
                f"({backlog} trajectories); raise it or the stream may trim unread entries"
            )
        return self

    @model_validator(mode="after")
    def _gpu_placement_is_consistent(self) -> JobConfig:
        rollout = self.rollout
        tp = rollout.vllm.tensor_parallel_size
        if rollout.gpus_per_worker and rollout.engine == "transformers":
            raise ValueError(
                "rollout.gpus_per_worker: the transformers engine samples on CPU; "
                "use rollout.engine: vllm on GPUs"
            )
        if rollout.gpus_per_worker and rollout.engine == "vllm" and rollout.gpus_per_worker < tp:
            raise ValueError(
                f"rollout.gpus_per_worker {rollout.gpus_per_worker} is below "
                f"rollout.vllm.tensor_parallel_size {tp}"
            )
        longest = rollout.vllm.max_model_len
        if rollout.engine == "vllm" and longest and longest < rollout.agent.max_total_tokens:
            raise ValueError(
                f"rollout.vllm.max_model_len {longest} is below "
                f"rollout.agent.max_total_tokens {rollout.agent.max_total_tokens}: episodes "
                "would outgrow the engine's context"
            )
        if rollout.weight_transport == "nccl":
            missing = [
                reason
                for reason, broken in (
                    ("rollout.engine: vllm", rollout.engine != "vllm"),
                    ("rollout.gpus_per_worker >= 1", rollout.gpus_per_worker < 1),
                    ("learner.gpus_per_rank: 1", self.learner.gpus_per_rank != 1),
                    # Pushed weights land in running engines, mid-generation.
                    ("rollout.weight_update: interrupt", rollout.weight_update != "interrupt"),
                )
                if broken
            ]
            if missing:
                raise ValueError(
                    "rollout.weight_transport nccl needs "
                    + ", ".join(missing)
                    + "; use object_store otherwise"
                )
        return self

    @model_validator(mode="after")
    def _colocation_is_possible(self) -> JobConfig:
        if self.rollout.placement == "colocated" and (why := self.colocation_refused):
            raise ValueError(f"rollout.placement colocated: {why}")
        return self

    @property
    def colocation_refused(self) -> str | None:
        """Why this job cannot run colocated (learner and generation in one actor), if so."""
        if self.learner.num_ranks > 1:
            return f"learner.num_ranks is {self.learner.num_ranks}; one actor holds one rank"
        if self.rollout.engine == "vllm":
            return (
                "rollout.engine vllm: vLLM colocation needs its sleep mode (freeing the KV "
                "cache while the learner trains), which is not built; use the transformers "
                "engine or rollout.placement: separate"
            )
        if self.learner.gpus_per_rank or self.rollout.gpus_per_worker:
            return (
                "learner.gpus_per_rank / rollout.gpus_per_worker: colocation is built for "
                "CPU learners only; use rollout.placement: separate on GPUs"
            )
        if self.rollout.autoscale is not None:
            return "rollout.autoscale: a colocated job has exactly one in-process worker"
        return None

    @property
    def batch_size(self) -> int:
        """Trajectories per learner step."""
        return self.trainer.prompts_per_step * self.rollout.group_size

    @property
    def stream_name(self) -> str:
        return self.buffer.stream or f"relayrl:{self.name}:trajectories"

    @property
    def output_dir(self) -> str:
        return self.output.dir.format(name=self.name)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.output_dir) / "checkpoints"

    @property
    def concurrent_groups(self) -> int:
        """Groups one worker plays at once; auto: enough to fill a learner batch alone."""
        groups = self.rollout.max_concurrent_groups
        return self.trainer.prompts_per_step if groups == "auto" else groups

    @property
    def weight_wait_s(self) -> float:
        """How long a worker waits for a pushed version: one learner step plus the push."""
        return self.learner.batch_timeout_s + self.rollout.vllm.weight_sync_timeout_s

    @property
    def local_cpus(self) -> int:
        """Logical CPUs for a local Ray instance: enough to place every actor we ask for."""
        # A local instance never grows: it must already hold the autoscaler's largest fleet.
        autoscale = self.rollout.autoscale
        workers = max(self.rollout.num_workers, autoscale.max_workers if autoscale else 0)
        wanted = (
            self.learner.num_ranks * self.learner.cpus_per_rank
            + workers * self.rollout.cpus_per_worker
        )
        return self.ray.num_cpus or max(2, int(wanted + 0.999) + 1)
