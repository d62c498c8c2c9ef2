"""The SFT stage (`trainer.sft`): supervised fine-tuning on demonstrations, before RL, on the
same learner. Lives in the spine so a job config validates without importing the learner."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Under output.dir: the stage's checkpoints (step-N/, latest) and metrics.jsonl.
SFT_FOLDER = "sft"


def sft_dir(output_dir: str) -> Path:
    return Path(output_dir) / SFT_FOLDER


class SftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    data: str = Field(
        description="Demonstrations: a JSONL file of chat conversations (relayrl demos writes "
        "one; the format is in relayrl/demos.py). A relative path resolves against the working "
        "directory the job is started from, as output.dir does."
    )
    epochs: float | None = Field(
        None,
        gt=0,
        description="Passes over the data (fractions allowed); give this or steps, not both.",
    )
    steps: int | None = Field(
        None, ge=1, description="Optimizer steps; give this or epochs, not both."
    )
    lr: float = Field(1e-4, gt=0, description="Learning rate of the SFT steps (AdamW).")
    batch_size: int = Field(
        8,
        ge=1,
        description="Conversations per optimizer step, over all learner ranks; each rank packs "
        "its share into micro-batches of learner.micro_batch_tokens.",
    )
    max_tokens: int = Field(
        2048,
        ge=16,
        description="Longest conversation in tokens; a longer one is cut there (its cut turns "
        "train only the tokens kept).",
    )
    checkpoint_every: int = Field(
        0, ge=0, description="Checkpoint every this many SFT steps; 0: only at the end."
    )
    seed: int = Field(0, description="Seed of the order conversations are trained in.")

    @field_validator("data")
    @classmethod
    def _absolute(cls, data: str) -> str:
        # Made absolute where the config is loaded: learner ranks may run in another folder.
        return str(Path(data).expanduser().absolute())

    @model_validator(mode="after")
    def _one_length(self) -> SftConfig:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("trainer.sft needs exactly one of epochs and steps")
        return self
