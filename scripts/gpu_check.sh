#!/usr/bin/env bash
# One command on a GPU machine with the GPU install (bash scripts/install.sh --gpu): the
# gpu-marked tests, then a 3-step job on the tiny model, then a pass/fail table. Under 8 min.
#   RELAYRL_VENV=.venv-gpu bash scripts/gpu_check.sh
# With two GPUs or more the job uses the NCCL weight transport (learner on one GPU, the vLLM
# engine on another). NCCL refuses two ranks on one device, so with a single GPU the learner
# and the engine share it and the weights go through the object store; the table says so.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${RELAYRL_VENV:-.venv}
PY="$VENV/bin/python"

refuse() { echo "gpu_check: $*" >&2; exit 2; }
[ -x "$PY" ] || refuse "no venv at $VENV; install one: RELAYRL_VENV=$VENV bash scripts/install.sh --gpu"
command -v nvidia-smi >/dev/null 2>&1 || refuse "no nvidia-smi: this machine has no NVIDIA driver"
probe=$("$PY" -c 'import torch; print(torch.version.cuda or "cpu", torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>&1) \
  || refuse "torch does not import from $VENV: $probe"
read -r cuda_build gpus <<<"$probe"
[ "$cuda_build" != cpu ] || refuse "$VENV has the CPU build of torch; run: RELAYRL_VENV=.venv-gpu bash scripts/install.sh --gpu"
[ "$gpus" -ge 1 ] || refuse "torch (CUDA $cuda_build) sees no usable GPU; the driver must support CUDA $cuda_build (nvidia-smi: $(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1))"

work=$(mktemp -d /tmp/relayrl-gpu-check.XXXXXX)
rows=()
failed=0
row() { rows+=("$(printf '%-44s %-6s %6ss  %s' "$1" "$2" "$3" "$4")"); [ "$2" = FAIL ] && failed=1; }
step() {  # name, timeout seconds, command...
  local name=$1 limit=$2; shift 2
  local started=$SECONDS log="$work/$(echo "$name" | tr -c 'A-Za-z0-9' _).log"
  echo "[gpu_check] $name"
  if timeout "$limit" "$@" >"$log" 2>&1; then
    row "$name" PASS $((SECONDS - started)) "$(tail -1 "$log" | cut -c1-60)"
  else
    row "$name" FAIL $((SECONDS - started)) "see $log"
    tail -20 "$log"
  fi
}

step "versions (torch, vLLM, DeepSpeed, NCCL)" 120 "$PY" -c '
import torch, vllm, deepspeed
print(f"torch {torch.__version__} cuda {torch.version.cuda} nccl {torch.cuda.nccl.version()} "
      f"vllm {vllm.__version__} deepspeed {deepspeed.__version__} gpus {torch.cuda.device_count()} "
      f"{torch.cuda.get_device_name(0)}")'
step "gpu-marked tests" 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/

job=(--set model.path=tiny-random --set model.dtype=float32 --set trainer.steps=3
     --set trainer.prompts_per_step=2 --set trainer.checkpoint_every=0
     --set rollout.num_workers=1 --set rollout.group_size=4 --set rollout.cpus_per_worker=1
     --set rollout.sampling.max_new_tokens=16 --set rollout.vllm.max_model_len=1024
     --set rollout.vllm.gpu_memory_utilization=0.3 --set rollout.agent.max_total_tokens=1024
     --set learner.num_ranks=1 --set learner.cpus_per_rank=1 --set learner.torch_threads=1
     --set learner.micro_batch_tokens=2048 --set output.tensorboard=false --set output.plot=false)
if [ "$gpus" -ge 2 ]; then
  step "3-step job, NCCL transport (2 GPUs)" 240 "$VENV/bin/relayrl" train examples/gpu-cluster.yaml \
    "${job[@]}" --set output.dir="$work/nccl-run"
else
  # Ray would give the learner and the engine one GPU each; it is told there are two and
  # leaves CUDA_VISIBLE_DEVICES alone, so both use the only one.
  port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
  RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1 setsid "$VENV/bin/ray" start --head --block \
    --port="$port" --num-gpus=2 --include-dashboard=false --temp-dir="$work/ray" \
    >"$work/ray-head.log" 2>&1 &
  head_pid=$!
  for _ in $(seq 60); do "$VENV/bin/ray" status --address="127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 1; done
  RAY_ADDRESS="127.0.0.1:$port" step "3-step job, one shared GPU, object store" 240 \
    "$VENV/bin/relayrl" train examples/gpu-cluster.yaml "${job[@]}" \
    --set rollout.weight_transport=object_store --set output.dir="$work/shared-gpu-run"
  kill -TERM -- "-$head_pid" 2>/dev/null
  wait "$head_pid" 2>/dev/null
  row "3-step job, NCCL transport" SKIP 0 "needs a second GPU: NCCL refuses two ranks on one device"
fi

echo
printf '%-44s %-6s %7s  %s\n' check result time detail
printf '%s\n' "${rows[@]}"
echo "logs: $work"
exit "$failed"
