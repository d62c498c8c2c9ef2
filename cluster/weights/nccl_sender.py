"""The NCCL transport's wire: a broadcast from learner rank 0 into one vLLM engine (CUDA only).

Built on vLLM's weight-transfer API (`WeightTransferTrainerFactory`, backend "nccl"). One
sender owns one NCCL group with one engine (learner rank 0, the engine's workers after it),
so engines can join and leave: a joining engine gets its own sender and the current version.
Every step that can hang (rendezvous, broadcast, engine calls) is bounded by a timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any, Protocol, TypeVar

import ray
import torch
from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

from relayrl.weights import TensorMeta

_T = TypeVar("_T")


class WeightSyncTimeout(RuntimeError):
    """A weight-sync step did not finish in time; the NCCL group must be rebuilt."""


class StreamSource(WeightSource):
    """The version being sent: its metadata up front, its tensors as the stream hands them
    over (moved to the sending GPU if they are elsewhere)."""

    def __init__(self, metadata: list[TensorMeta], device: torch.device) -> None:
        self._device = device
        self._meta = _param_meta(metadata)
        self._tensors: Iterator[tuple[str, torch.Tensor]] = iter(())

    def replace(
        self, metadata: list[TensorMeta], tensors: Iterator[tuple[str, torch.Tensor]]
    ) -> None:
        if _param_meta(metadata) != self._meta:
            raise ValueError("a new version must keep the names, dtypes and shapes")
        self._tensors = tensors

    def metadata(self) -> list[ParamMeta]:
        return self._meta

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in self._tensors:
            yield name, tensor.to(self._device)


def _param_meta(metadata: list[TensorMeta]) -> list[ParamMeta]:
    return [ParamMeta(meta.name, meta.dtype, meta.shape) for meta in metadata]


class EngineReceiver(Protocol):
    """Blocking calls into one `VLLMEngine`, wherever it runs (names match its methods)."""

    def init_weight_transfer(self, init_info: dict[str, Any]) -> None: ...

    def begin_weight_transfer(self) -> None: ...

    def receive_weight_chunk(self, update_info: dict[str, Any]) -> None: ...

    def finish_weight_transfer(self, version: int) -> None: ...


class RayEngineReceiver:
    """An `EngineReceiver` over a rollout-worker Ray actor that forwards the four calls to
    its `VLLMEngine`; each call is bounded by `timeout_s`."""

    def __init__(self, actor: Any, timeout_s: float, name: str = "engine") -> None:
        self._actor = actor
        self._timeout_s = timeout_s
        self._name = name

    def init_weight_transfer(self, init_info: dict[str, Any]) -> None:
        self._call("init_weight_transfer", init_info)

    def begin_weight_transfer(self) -> None:
        self._call("begin_weight_transfer")

    def receive_weight_chunk(self, update_info: dict[str, Any]) -> None:
        self._call("receive_weight_chunk", update_info)

    def finish_weight_transfer(self, version: int) -> None:
        self._call("finish_weight_transfer", version)

    def _call(self, method: str, *args: Any) -> None:
        ref = getattr(self._actor, method).remote(*args)
        try:
            ray.get(ref, timeout=self._timeout_s)
        except ray.exceptions.GetTimeoutError as error:
            raise WeightSyncTimeout(
                f"{self._name}.{method} took over {self._timeout_s} s"
            ) from error


class _VersionedClient:
    """vLLM's `VLLMWeightSyncClient` shape; its sender finishes without a version, so the
    version being sent is held here."""

    def __init__(self, receiver: EngineReceiver) -> None:
        self._receiver = receiver
        self.version = 0

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self._receiver.init_weight_transfer(init_info)

    def start_weight_update(self) -> None:
        self._receiver.begin_weight_transfer()

    def update_weights(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        if isinstance(update_info, list):
            raise ValueError("one sender serves one engine: expected a single update_info")
        self._receiver.receive_weight_chunk(update_info)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._receiver.finish_weight_transfer(self.version)


class NcclWeightSender:
    """Sends each published version to one engine over a dedicated NCCL group."""

    def __init__(
        self,
        receiver: EngineReceiver,
        metadata: list[TensorMeta],
        *,
        master_address: str,
        master_port: int,
        engine_world_size: int,
        bucket_bytes: int,
        timeout_s: float,
        device: torch.device,
    ) -> None:
        self._client = _VersionedClient(receiver)
        self._timeout_s = timeout_s
        self._device = device
        self._source = StreamSource(metadata, device)
        init_info = NCCLTrainerInitInfo(
            master_address=master_address,
            master_port=master_port,
            world_size=1 + engine_world_size,
            packed=True,
            packed_buffer_size_bytes=bucket_bytes,
            rank=0,
        )
        self._engine = _within(
            timeout_s,
            device,
            "NCCL rendezvous with the engine",
            lambda: WeightTransferTrainerFactory.trainer_init(
                init_info, client=self._client, source=self._source
            ),
        )

    def send(
        self,
        version: int,
        metadata: list[TensorMeta],
        tensors: Iterator[tuple[str, torch.Tensor]],
    ) -> None:
        self._source.replace(metadata, tensors)
        self._client.version = version
        sending = f"NCCL send of v{version}"
        _within(self._timeout_s, self._device, sending, self._engine.send_weights)

    def close(self) -> None:
        # Tearing down a group whose peer died can block like any collective.
        _within(self._timeout_s, self._device, "NCCL group teardown", self._engine.shutdown)


def _within(timeout_s: float, device: torch.device, what: str, call: Callable[[], _T]) -> _T:
    """Run `call` on a daemon thread: a hung NCCL call must not block interpreter exit."""
    future: Future[_T] = Future()

    def run() -> None:
        try:
            # The current CUDA device is per thread; NCCL binds to it.
            if device.type == "cuda":
                torch.cuda.set_device(device)
            future.set_result(call())
        except BaseException as error:
            future.set_exception(error)

    threading.Thread(target=run, name="relayrl-nccl-sync", daemon=True).start()
    try:
        return future.result(timeout=timeout_s)
    except FutureTimeoutError as error:
        raise WeightSyncTimeout(f"{what} took over {timeout_s} s") from error
