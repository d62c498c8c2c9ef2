"""TensorBoard scalar events written with tensorboard's own event file writer: the same
records torch's SummaryWriter writes, without loading torch into the driver."""

from __future__ import annotations

import time

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class ScalarEventWriter:
    def __init__(self, folder: str) -> None:
        self._events = EventFileWriter(folder)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value)])
        self._events.add_event(Event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        self._events.flush()

    def close(self) -> None:
        self._events.close()
