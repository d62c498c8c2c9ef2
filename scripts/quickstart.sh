#!/usr/bin/env bash
# Install, then train SmolLM2-135M on the arithmetic task on this machine's CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/relayrl train examples/quickstart.yaml "$@"
