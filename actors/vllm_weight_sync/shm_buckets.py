"""Stage a state dict as size-bounded safetensors files in shared memory for vLLM workers."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from relayrl.weight_buckets import plan_buckets, state_metadata

# tmpfs: workers memory-map the files, so staging costs one copy and loading none extra.
SHARED_MEMORY_DIR = Path("/dev/shm")
# Containers often cap /dev/shm (Docker: 64 MB); leave room for everything else using it.
_SHARED_MEMORY_HEADROOM = 1.25


class StagedWeights:
    """A temporary directory of bucket files; remove it with `close()` or a `with` block.

    Buckets bound the host copies alive at once (tensors on a GPU, non-contiguous or tied
    ones are copied before writing), not the staged total, which is the whole state dict.
    """

    def __init__(self, state: Mapping[str, torch.Tensor], bucket_bytes: int) -> None:
        total = sum(t.numel() * t.element_size() for t in state.values())
        self.directory = Path(tempfile.mkdtemp(prefix="relayrl-weights-", dir=staging_root(total)))
        try:
            self.paths = list(self._write(state, bucket_bytes))
        except BaseException:
            self.close()
            raise

    def _write(self, state: Mapping[str, torch.Tensor], bucket_bytes: int) -> Iterator[str]:
        for index, names in enumerate(plan_buckets(state_metadata(state), bucket_bytes)):
            path = str(self.directory / f"bucket-{index:05d}.safetensors")
            save_file(_unaliased({name: state[name] for name in names}), path)
            yield path

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> StagedWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def staging_root(num_bytes: int) -> Path | None:
    """/dev/shm when it has room, else the default temp dir (page cache, then disk)."""
    if SHARED_MEMORY_DIR.is_dir():
        free = shutil.disk_usage(SHARED_MEMORY_DIR).free
        if free > num_bytes * _SHARED_MEMORY_HEADROOM:
            return SHARED_MEMORY_DIR
    return None


def _unaliased(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share storage (tied weights): copy the later ones."""
    seen: set[int] = set()
    result: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen or tensor.untyped_storage().nbytes() != tensor.nbytes:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        result[name] = tensor
    return result
