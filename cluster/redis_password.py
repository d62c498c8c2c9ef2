"""Where an external Redis password comes from: read in each process that connects, so the
secret itself never travels with the job (argv, actor arguments, config.yaml, logs)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from relayrl.config import BufferConfig
from relayrl.errors import JobConfigError


@dataclass(frozen=True)
class RedisPassword:
    """Names an environment variable or a file; `read` fetches the password from it."""

    env: str | None = None
    file: str | None = None

    @classmethod
    def from_config(cls, buffer: BufferConfig) -> RedisPassword | None:
        if buffer.password_env is None and buffer.password_file is None:
            return None
        return cls(env=buffer.password_env, file=buffer.password_file)

    def read(self) -> str:
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise JobConfigError(
                    f"buffer.password_env: environment variable {self.env} is unset or empty"
                )
            return value
        assert self.file is not None
        try:
            value = Path(self.file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise JobConfigError(
                f"buffer.password_file {self.file}: cannot read it ({reason})"
            ) from None
        if not value:
            raise JobConfigError(f"buffer.password_file {self.file} is empty")
        return value
