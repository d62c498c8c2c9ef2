"""`rollout.autoscale`: the opt-in rule that sizes the rollout fleet to what the learner uses."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class AutoscaleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    min_workers: int = Field(1, ge=1, description="The fleet never shrinks below this.")
    max_workers: int = Field(
        8,
        ge=1,
        description="The fleet never grows past this; the job asks Ray for the resources of "
        "every worker it adds, so a Ray autoscaler can add nodes for them.",
    )
    step_workers: int = Field(
        1, ge=1, description="Workers added or removed by one scaling decision."
    )
    grow_learner_idle: float = Field(
        0.3,
        gt=0,
        le=1,
        description="Grow while the learner's idle fraction (time waiting on data over its "
        "step time) is at or above this.",
    )
    shrink_learner_idle: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="Shrink only while the learner's idle fraction is at or below this, and "
        "a full batch or more is already waiting in the stream: the surplus is generation "
        "the staleness bound will not let the learner use, so workers wait on admission. "
        "The gap to grow_learner_idle is the hysteresis.",
    )
    shrink_worker_idle: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Shrink only while the workers' idle fraction (time waiting on "
        "admission) is at or above this.",
    )
    patience_steps: int = Field(
        2,
        ge=1,
        description="Learner steps in a row a condition must hold before the fleet changes.",
    )
    cooldown_s: float = Field(
        30.0,
        ge=0,
        description="Seconds after a change (and after start) before the next one: new "
        "workers start their engines and pull weights before they show in the figures.",
    )

    @model_validator(mode="after")
    def _bounds_are_ordered(self) -> AutoscaleConfig:
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"min_workers {self.min_workers} is above max_workers {self.max_workers}"
            )
        if self.shrink_learner_idle >= self.grow_learner_idle:
            raise ValueError(
                f"shrink_learner_idle {self.shrink_learner_idle} must be below "
                f"grow_learner_idle {self.grow_learner_idle}, or the fleet would oscillate"
            )
        return self
