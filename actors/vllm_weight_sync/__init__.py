"""Getting learner weights into vLLM engines.

CPU path (also single-node GPU): `shm_buckets` stages a state dict as safetensors files in
/dev/shm, `worker_extension` reloads them in place inside each vLLM worker.
GPU path: the engine joins the learner's NCCL group (`VLLMEngine.init_weight_transfer` and
friends); the sending side is `relayrl.cluster.weights.nccl_sender`.
"""
