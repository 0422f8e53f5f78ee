"""The ``null`` sink: discards every batch (Flume's ``NullSink``), for measuring the pipeline before it.

``write`` returns at once, so the take is committed and the events are gone: use it only where
losing them is the point. It counts what it discarded in its context's counters
(``DiscardedEventCount``, ``DiscardedBatchCount``).
"""
from __future__ import annotations

from pydantic import Field

from rayflume.config_base import SinkConfig
from rayflume.event import EventBatch
from rayflume.registry import register
from rayflume.sinks.base import Sink


class NullSink(Sink):
    """Discards batches and counts them. Called from one thread at a time (see the base class)."""

    def __init__(self, name: str, batch_size: int = 100):
        self.name = name
        self.batch_size = batch_size
        self.discarded_events = 0
        self.discarded_batches = 0

    def write(self, batch: EventBatch) -> None:
        n = len(batch)
        self.discarded_events += n
        self.discarded_batches += 1
        context = getattr(self, "context", None)
        if context is not None:
            context.count("DiscardedEventCount", n)
            context.count("DiscardedBatchCount")


@register("sink", "null")
class NullSinkConfig(SinkConfig):
    """``null``: discards everything it takes."""

    batch_size: int = Field(100, gt=0, description="Most events taken in one transaction (Flume's batchSize).")

    def build(self, name: str) -> NullSink:
        return NullSink(name, batch_size=self.batch_size)
