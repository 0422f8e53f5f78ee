"""The sink processor interface.

A sink group's actor runs one processor over its sinks. ``process()`` picks sinks and calls their
``process()``: that takes one batch from the sink's channel, writes it and commits, returning
``Status.READY``, or ``Status.BACKOFF`` when the channel was empty; it raises when delivery failed
(the take was already rolled back). The processor decides what a failure means: try the next
sink, put the failed one in a penalty box, or raise when no sink could deliver. A sink an operator
paused (:func:`is_paused`) is skipped without being called; with every usable sink paused,
``process()`` returns BACKOFF having taken nothing.

Processors are driven by one thread. ``clock`` is injectable for tests.
"""
from __future__ import annotations

import enum
import time
from abc import ABC, abstractmethod
from typing import Callable, Protocol


class Status(enum.Enum):
    READY = "READY"      # a batch was delivered; call again at once
    BACKOFF = "BACKOFF"  # nothing to do; the runner sleeps before calling again


class SinkLike(Protocol):
    name: str

    def process(self) -> Status: ...


def is_paused(sink: SinkLike) -> bool:
    """Whether an operator paused ``sink`` (``rayflume pause``): processors skip it without calling
    it, as if it were not in the group, and take nothing through it. Sinks without the attribute
    (test doubles) are never paused."""
    return bool(getattr(sink, "paused", False))


class SinkProcessor(ABC):
    def __init__(self, sinks: list[SinkLike], clock: Callable[[], float] = time.monotonic):
        if not sinks:
            raise ValueError("a sink processor needs at least one sink")
        self.sinks = list(sinks)
        self.clock = clock

    @abstractmethod
    def process(self) -> Status:
        """Deliver at most one batch through the group; raise DeliveryError if every sink failed."""
