"""Weight transports, each with a publisher side (learner rank 0) and a subscriber side
(rollout workers): `object_store` (workers pull from Ray's object store) and `nccl` (rank 0
pushes into every registered vLLM engine). `transport.build_weight_transport` picks one."""
