"""Two components of one's own, written against rayflume's public base classes.

Each component is a pair: a *config class* (a pydantic model subclassing the kind's config base;
its fields are the keys the topology gives it, validated like a built-in component's) whose
``build()`` returns the *running component* (a subclass of the kind's runtime base).

- ``NumberedSourceConfig`` / ``NumberedSource``: ``count`` events whose bodies are the numbers
  ``first .. first+count-1``, with the number also in the header ``number``.
- ``NumberedFileSinkConfig`` / ``NumberedFileSink``: appends each event's body as one line to a
  file in ``directory`` (one file per sink and instance), flushed to disk before the batch is
  committed.

A topology names them by import path, ``type: my_components:NumberedSourceConfig``, and ships this
module to the cluster with ``runtime_env: {working_dir: .}`` (see topology.yaml and README.md).
"""
from __future__ import annotations

import os

from pydantic import Field

from rayflume.config_base import SinkConfig, SourceConfig
from rayflume.event import Event, EventBatch
from rayflume.sinks.base import Sink, SinkContext
from rayflume.sources.base import Source


class NumberedSource(Source):
    """Produces ``count`` numbered events in batches of ``batch_size``. The next number moves on
    only in ``ack()`` (once the batch is in every channel), so a batch that was not committed is
    produced again with the same numbers and none is skipped."""

    def __init__(self, name: str, first: int, count: int, batch_size: int):
        self.name = name
        self.next_number = first
        self.end = first + count
        self.batch_size = batch_size
        self._pending: EventBatch | None = None

    def poll(self) -> EventBatch | None:
        if self._pending is None:
            numbers = range(self.next_number, min(self.next_number + self.batch_size, self.end))
            if not numbers:
                return None
            self._pending = EventBatch.from_events(
                Event(body=str(n).encode(), headers={"number": str(n)}) for n in numbers)
        return self._pending

    def ack(self) -> None:
        if self._pending is not None:
            self.next_number += len(self._pending)
            self._pending = None

    @property
    def finished(self) -> bool:
        return self._pending is None and self.next_number >= self.end


class NumberedSourceConfig(SourceConfig):
    """``count`` events numbered from ``first``; the source is finished once all are delivered."""

    count: int = Field(1000, ge=0, description="How many events to produce.")
    first: int = Field(0, ge=0, description="The number of the first event.")

    def build(self, name: str) -> NumberedSource:
        return NumberedSource(name, self.first, self.count, self.batch_size)


class NumberedFileSink(Sink):
    """Appends each body as a line to ``<directory>/<topology>[-<tier>-<instance>]-<sink>.txt``."""

    def __init__(self, directory: str):
        self.directory = directory
        self.path: str | None = None

    def start(self, context: SinkContext) -> None:
        super().start(context)
        os.makedirs(self.directory, exist_ok=True)
        parts = (context.topology, context.scope.replace("/", "-"), context.name)
        self.path = os.path.join(self.directory, "-".join(p for p in parts if p) + ".txt")

    def write(self, batch: EventBatch) -> None:
        lines = b"".join(body + b"\n" for body in batch.bodies())
        with open(self.path, "ab") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())  # on disk before the runner commits the take
        self.context.count("LinesWritten", len(batch))


class NumberedFileSinkConfig(SinkConfig):
    """Writes every event's body as a line of a file under ``directory`` (created if missing)."""

    directory: str = Field(description="Directory of the output files, on the node the sink runs on.")

    def build(self, name: str) -> NumberedFileSink:
        return NumberedFileSink(self.directory)
