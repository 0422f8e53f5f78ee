"""The sink interface.

A sink's runner takes up to ``batch_size`` events from the sink's channel in a take transaction,
calls ``write(batch)``, and commits the take only when ``write`` returned. If ``write`` raises, the
take is rolled back (the events return to the head of the channel) and the runner backs off. So a
sink must not return from ``write`` before the batch is delivered as far as it promises (flushed to
the file system, acknowledged by the broker): the channel forgets the events at commit.

Methods are called from one thread at a time.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from rayflume.counters import Counters
from rayflume.event import EventBatch


@dataclass
class SinkContext:
    """What a running sink gets from its runner."""

    name: str
    topology: str = ""
    scope: str = ""  # "<tier>/<instance>" in a tiered topology
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("rayflume.sink"))
    counters: Counters = field(default_factory=Counters)

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to a counter reported with this sink's metrics. Thread-safe."""
        self.counters.add(key, n)


class Sink(ABC):
    """Delivers batches. See the module docstring for the delivery contract."""

    batch_size: int = 1000

    def start(self, context: SinkContext) -> None:
        """Open resources. Called once, before the first ``write``."""
        self.context = context

    @abstractmethod
    def write(self, batch: EventBatch) -> None:
        """Deliver ``batch``; return only once it is delivered, raise to have it rolled back."""

    def maintain(self) -> None:
        """Periodic work while idle or between batches (roll timers, idle close). Default: none."""

    def stop(self) -> None:
        """Flush and close. ``write`` is not called again."""
