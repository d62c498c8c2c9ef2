"""The job configuration schema. Every section forbids unknown fields, so a typo names itself."""

from __future__ import annotations

import math
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

REDIS_SCHEMES = ("redis", "rediss", "unix")

# A thread count, or "auto": the whole cores Ray reserves for the actor.
TorchThreads = Annotated[int, Field(ge=1)] | Literal["auto"]


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
    # A Hugging Face folder, or a built-in name such as "smollm2-135m".
    path: str = "smollm2-135m"
    dtype: Literal["float32", "bfloat16"] = "float32"


class SamplingConfig(Section):
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)


class AgentConfig(Section):
    """The multi-turn agent loop; single-turn environments end after their first step."""

    max_turns: int = Field(4, ge=1)
    # Prompt, turns and observations together; no turn may take an episode past it.
    max_total_tokens: int = Field(2048, ge=2)
    # SimpleTIR: an episode with a turn that neither calls a tool nor answers is masked
    # from the loss (it stays in its group, so group baselines still see it).
    drop_void_trajectories: bool = False
    # The chat role that carries environment messages (tool results, feedback).
    observation_role: Literal["user", "tool"] = "user"
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

    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: int | None = Field(None, ge=16)
    # CPU build only: KV-cache size per engine.
    cpu_kv_cache_gib: float = Field(1.0, gt=0)
    # Weights are staged (shared memory) or broadcast (NCCL) in buckets of this size.
    weight_bucket_mib: int = Field(256, ge=1)
    # Bound on every weight-sync call (pause, load, rendezvous, broadcast, resume).
    weight_sync_timeout_s: float = Field(600.0, gt=0)


class RolloutConfig(Section):
    engine: Literal["transformers", "vllm"] = "transformers"
    vllm: VLLMConfig = VLLMConfig()
    num_workers: int = Field(2, ge=1)
    group_size: int = Field(8, ge=1)
    sampling: SamplingConfig = SamplingConfig()
    agent: AgentConfig = AgentConfig()
    cpus_per_worker: float = Field(0.5, gt=0)
    # GPUs Ray reserves for each worker; a vLLM worker needs tensor_parallel_size of them.
    gpus_per_worker: float = Field(0, ge=0)
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
    # When new weights are published mid-generation: "finish" lets in-flight samples end on
    # the old weights; "interrupt" stops them at the next token and continues on the new ones.
    weight_update: Literal["finish", "interrupt"] = "finish"
    # How published weights reach the workers: each worker pulls them from Ray's object
    # store ("object_store", CPU or GPU), or learner rank 0 broadcasts them into every vLLM
    # engine over NCCL ("nccl", GPU learner and GPU vLLM workers).
    weight_transport: Literal["object_store", "nccl"] = "object_store"
    # Restarts Ray grants a crashed worker before the job reports it dead.
    max_worker_restarts: int = Field(3, ge=0)


class EnvConfig(Section):
    # A registered environment name or "package.module:Class".
    name: str = "arithmetic"
    params: dict[str, Any] = Field(default_factory=dict)


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
    stream: str | None = None  # defaults to "relayrl:<job name>:trajectories"
    # Safety bound on the stream length; admission control keeps the backlog far below it.
    maxlen: int = Field(1_000_000, ge=1000)
    read_block_ms: int = Field(1000, ge=1)
    # Embedded Redis: "always" fsyncs every write, so a crash loses nothing acknowledged.
    fsync: Literal["always", "everysec"] = "always"
    # Drop acknowledged entries from the stream; off keeps the full history for auditing.
    trim_acknowledged: bool = True
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
    num_ranks: int = Field(1, ge=1)
    cpus_per_rank: float = Field(1.0, gt=0)
    # 0 trains on CPU (gloo); 1 gives each rank a GPU (NCCL).
    gpus_per_rank: Literal[0, 1] = 0
    torch_threads: TorchThreads = Field(
        "auto",
        description="Threads of each learner rank; auto: the whole cores of cpus_per_rank "
        "(at least one).",
    )
    zero_stage: Literal[0, 1, 2, 3] = 2
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    # Micro-batches are packed up to this many tokens; gradients accumulate across them.
    micro_batch_tokens: int = Field(4096, ge=16)
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute each layer's activations in backward instead of keeping them: "
        "about 4x less memory per micro-batch token for one more forward per step "
        "(measured in BENCHMARKS.md); for long contexts or large micro-batches.",
    )
    algorithm: AlgorithmConfig = AlgorithmConfig()
    # Seconds the learner waits for one batch before it reports the rollout side stalled.
    batch_timeout_s: float = Field(600.0, gt=0)


class TrainerConfig(Section):
    steps: int = Field(20, ge=1)
    prompts_per_step: int = Field(4, ge=1)
    # 0 is on-policy synchronous; k lets generation run at most k policy versions ahead.
    max_staleness: int = Field(0, ge=0)
    checkpoint_every: int = Field(0, ge=0)  # 0: only at the end
    keep_checkpoints: int = Field(2, ge=1)
    seed: int = 0


class RayConfig(Section):
    # Used when RAY_ADDRESS is unset and no cluster is given: start a local instance.
    num_cpus: int | None = Field(None, ge=1)


class OutputConfig(Section):
    dir: str = "runs/{name}"
    tensorboard: bool = True
    plot: bool = True

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
    name: str = Field("relayrl-job", pattern=r"^[A-Za-z0-9_.-]+$")
    model: ModelConfig = ModelConfig()
    rollout: RolloutConfig = RolloutConfig()
    env: EnvConfig = EnvConfig()
    buffer: BufferConfig = BufferConfig()
    learner: LearnerConfig = LearnerConfig()
    trainer: TrainerConfig = TrainerConfig()
    ray: RayConfig = RayConfig()
    output: OutputConfig = OutputConfig()

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
