"""Getting learner weights into vLLM engines.

CPU path (also single-node GPU): `shm_buckets` stages a state dict as safetensors files in
/dev/shm, `worker_extension` reloads them in place inside each vLLM worker.
GPU path: `nccl_sender` broadcasts from the learner with vLLM's weight-transfer API.
"""
