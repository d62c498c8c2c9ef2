"""State dicts as numpy arrays for Ray's object store: zero-copy views where possible."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import torch

# numpy has no bfloat16: such tensors travel as raw int16 bits and are viewed back.
_BITS_DTYPE = {torch.bfloat16: torch.int16, torch.float16: torch.int16}
_DTYPE_NAMES = {str(dtype): dtype for dtype in (torch.float32, torch.bfloat16, torch.float16)}

WireState = dict[str, tuple[str, np.ndarray]]


def to_wire(state: Mapping[str, torch.Tensor]) -> WireState:
    """Views of the tensors (no copy when they are CPU and contiguous); a tensor under two
    names (tied embeddings) is one array, so it is serialized once."""
    wire: WireState = {}
    arrays: dict[int, tuple[str, np.ndarray]] = {}
    for name, tensor in state.items():
        if id(tensor) not in arrays:
            flat = tensor.detach().contiguous().cpu()
            bits = flat.view(_BITS_DTYPE[flat.dtype]) if flat.dtype in _BITS_DTYPE else flat
            arrays[id(tensor)] = (str(flat.dtype), bits.numpy())
        wire[name] = arrays[id(tensor)]
    return wire


def from_wire(wire: WireState) -> dict[str, torch.Tensor]:
    state = {}
    with warnings.catch_warnings():
        # Arrays from the object store are read-only; the engines only copy from them.
        warnings.simplefilter("ignore", UserWarning)
        for name, (dtype_name, array) in wire.items():
            tensor = torch.from_numpy(array)
            dtype = _DTYPE_NAMES[dtype_name]
            state[name] = tensor.view(dtype) if dtype in _BITS_DTYPE else tensor
    return state
