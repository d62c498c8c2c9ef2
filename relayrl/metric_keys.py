"""Every per-step metric name, in one place: producers write these and tests read them, so a
renamed metric is one edit here (and a note in the README, with an alias for one release).

A constant is a fixed key; a function builds a key with a part that varies (a reward channel,
an episode end, a discard reason, a staleness bucket)."""

from __future__ import annotations

from relayrl.trajectory import EpisodeEnd

STEP = "step"
VERSION = "version"

# What the batch looked like (learner/batch_metrics.py).
REWARD_MEAN = "reward/mean"
REWARD_STD = "reward/std"
RESPONSE_LENGTH_MEAN = "response/length_mean"
RESPONSE_TRUNCATED_FRACTION = "response/truncated_fraction"
EPISODE_MASKED_FRACTION = "episode/masked_fraction"  # kept for the baseline, trains no token
EPISODE_TURNS_MEAN = "episode/turns_mean"
EPISODE_ERRORS = "episode/errors"
STALENESS_MAX = "staleness/max"
STALENESS_MEAN = "staleness/mean"
# The oldest policy version a sample discarded as stale this step came from (only when one was).
STALENESS_DISCARDED_OLDEST_VERSION = "staleness/discarded_oldest_version"
BATCH_TRAJECTORIES = "batch/trajectories"
BATCH_SAMPLED_TOKENS = "batch/sampled_tokens"
BATCH_TOTAL_TOKENS = "batch/total_tokens"
BATCH_MIN_TOKEN_VERSION = "batch/min_token_version"

# What the intake discarded (learner/intake.py, learner/deepspeed_learner.py).
DISCARDED_TOTAL = "discarded/total"
FILTER_DISCARDED = "filter/discarded_trajectories"  # groups' members dynamic sampling discarded
# FILTER_DISCARDED's name before 0.2, written beside it for one release; gone after it.
FILTER_DROPPED_ALIAS = "filter/dropped_trajectories"

# The update (learner/update.py) and the learner step's clock.
LR = "lr"
GRAD_NORM = "grad_norm"
LOSS_TOTAL = "loss/total"
CRITIC_GRAD_NORM = "critic/grad_norm"
OFF_POLICY_IS_WEIGHT_MEAN = "off_policy/is_weight_mean"
OFF_POLICY_IS_WEIGHT_MAX = "off_policy/is_weight_max"
OFF_POLICY_IS_WEIGHT_MIN = "off_policy/is_weight_min"
TIME_WAIT_BATCH_S = "time/wait_batch_s"
TIME_TRAIN_S = "time/train_s"
TIME_PUBLISH_S = "time/publish_s"
# Colocated placement: what the step waited for the engine's running rows to finish.
TIME_ENGINE_DRAIN_S = "time/engine_drain_s"
TIME_STEP_S = "time/step_s"

# Weight pushes (nccl transport).
WEIGHTS_PUSHED_ENGINES = "weights/pushed_engines"
WEIGHTS_PUSH_BYTES = "weights/push_bytes"
WEIGHTS_PUSH_S_MAX = "weights/push_s_max"
WEIGHTS_PUSH_S_MEAN = "weights/push_s_mean"

# The rollout side and the buffer, as the driver sees them.
ROLLOUT_WORKERS = "rollout/workers"
ROLLOUT_RESTARTS = "rollout/restarts"
ROLLOUT_IN_FLIGHT = "rollout/in_flight"
BUFFER_BACKLOG = "buffer/backlog"  # what admission counts: pending or undelivered, not booked
BUFFER_QUEUE_DEPTH = "buffer/queue_depth"
BUFFER_PENDING = "buffer/pending"
BUFFER_DEAD_LETTERS = "buffer/dead_letters"

# Throughput and idleness across the pipeline (cluster/pipeline_meter.py).
PIPELINE_ROLLOUT_TOKENS_PER_S = "pipeline/rollout_tokens_per_s"
PIPELINE_LEARNER_TOKENS_PER_S = "pipeline/learner_tokens_per_s"
PIPELINE_ROLLOUT_TRAJECTORIES_PER_S = "pipeline/rollout_trajectories_per_s"
PIPELINE_WORKER_IDLE_FRACTION = "pipeline/worker_idle_fraction"
PIPELINE_LEARNER_IDLE_FRACTION = "pipeline/learner_idle_fraction"

# Memory in GB: the largest learner rank, the largest worker, and all workers' PSS.
MEMORY_LEARNER_RSS_GB = "memory/learner_rss_gb"
MEMORY_LEARNER_PEAK_RSS_GB = "memory/learner_peak_rss_gb"
MEMORY_LEARNER_PSS_GB = "memory/learner_pss_gb"
MEMORY_WORKER_RSS_GB = "memory/worker_rss_gb"
MEMORY_WORKER_PEAK_RSS_GB = "memory/worker_peak_rss_gb"
MEMORY_WORKERS_PSS_GB = "memory/workers_pss_gb"


def reward_channel(name: str) -> str:
    return f"reward/{name}"


def episode_end(end: EpisodeEnd) -> str:
    """The share of the batch's episodes that ended this way."""
    return f"episode/end_{EpisodeEnd(end).value}"


def episode_error(cause: str) -> str:
    """Episodes an environment failure of this cause ended."""
    return f"{EPISODE_ERRORS}/{cause}"


def discarded(reason: str) -> str:
    """Entries discarded for this `DiscardReason` (learner/discard.py) since the last step."""
    return f"discarded/{reason}"


def staleness_hist(versions_behind: int) -> str:
    """Trained tokens sampled this many versions before the trained policy."""
    return f"staleness/hist_{versions_behind}"


def loss_part(name: str) -> str:
    return f"loss/{name}"


def critic_part(name: str) -> str:
    return f"critic/{name}"


def off_policy_fraction(kind: str) -> str:
    """The share of trained tokens the importance-sampling correction truncated or masked."""
    return f"off_policy/{kind}_fraction"
