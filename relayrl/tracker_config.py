"""`output.loggers`: experiment trackers the job's metrics also go to, beside metrics.jsonl
and TensorBoard (which stays on by `output.tensorboard`). Each is optional: a tracker that is
configured but not installed stops the job at start-up, naming the package to install."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Tracker(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WandbLogger(_Tracker):
    name: Literal["wandb"] = Field(description="Weights & Biases (pip install wandb).")
    project: str = Field("relayrl", min_length=1, description="The W&B project.")
    entity: str | None = Field(None, description="The W&B team or user; none: your default.")
    mode: Literal["online", "offline"] = Field(
        "online",
        description="offline: the run is kept under OUTPUT/wandb, for `wandb sync` later.",
    )
    tags: list[str] = Field(default_factory=list, description="Tags of the W&B run.")


class MlflowLogger(_Tracker):
    name: Literal["mlflow"] = Field(description="MLflow (pip install mlflow or mlflow-skinny).")
    tracking_uri: str | None = Field(
        None,
        description="Where runs go: a server URL, or file:/path for a local store; none: "
        "MLFLOW_TRACKING_URI, else MLflow's default.",
    )
    experiment: str = Field("relayrl", min_length=1, description="The MLflow experiment.")


TrackerConfig = Annotated[WandbLogger | MlflowLogger, Field(discriminator="name")]
