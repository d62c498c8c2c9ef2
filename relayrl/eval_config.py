"""The `eval` section: held-out evaluation during training, at its end, and by `relayrl eval`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EvalConfig(BaseModel):
    # The same rules as every other section (relayrl.config.Section): typos and NaN refused.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    every: int = Field(
        0,
        ge=0,
        description="Evaluate the policy every this many learner steps; 0: never mid-run.",
    )
    at_end: bool = Field(True, description="Evaluate the final policy after the last step.")
    env_params: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of env.params that select the held-out tasks, e.g. "
        "{split: eval} for the dataset env or {tasks_file: heldout.jsonl} for the math envs; "
        "empty: tasks drawn with eval.seed from the training task source.",
    )
    num_tasks: int = Field(
        32,
        ge=1,
        description="Held-out tasks per evaluation: the first ones of a finite split, or this "
        "many distinct tasks drawn with eval.seed.",
    )
    greedy: bool = Field(True, description="Play one greedy episode per task.")
    samples: int = Field(
        4,
        ge=0,
        description="Sampled episodes per task, the k of pass@k; 0: greedy only.",
    )
    temperature: float | None = Field(
        None,
        gt=0,
        description="Temperature of the sampled episodes; none: rollout.sampling.temperature.",
    )
    success_channel: str = Field(
        "correct",
        min_length=1,
        description="The reward channel that marks a solved episode (at least "
        "success_threshold); an episode without it is judged by its total reward.",
    )
    success_threshold: float = Field(
        1.0, description="The value of success_channel at which an episode counts as solved."
    )
    seed: int = Field(
        0,
        description="Seeds the task draw and every sampled episode: the same seed gives the "
        "same report on the transformers engine.",
    )
    max_concurrent_episodes: int = Field(
        16,
        ge=1,
        description="Evaluation episodes one worker plays at once, beside its training groups.",
    )
    timeout_s: float = Field(
        1800.0,
        gt=0,
        description="How long the end-of-run evaluation may take before the job gives up on it.",
    )

    @model_validator(mode="after")
    def _plays_something(self) -> EvalConfig:
        if not self.greedy and self.samples == 0:
            raise ValueError("eval.greedy is off and eval.samples is 0: nothing to evaluate")
        return self
