"""The channel selector interface.

A selector decides, for each event of a batch, which channels must take it (required: a failed
put fails the delivery and is retried) and which may (optional: a failed put is logged and
counted, never retried). It returns one sub-batch per channel, computed with Arrow kernels.
A channel that is both required and optional for an event counts as required.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

from rayflume.event import EventBatch


@dataclass
class Routing:
    """Per-channel sub-batches. Channels with no events are left out."""

    required: dict[str, EventBatch] = field(default_factory=dict)
    optional: dict[str, EventBatch] = field(default_factory=dict)


class ChannelSelector(ABC):
    # Whether route() looks at the events. One that does not routes only by the batch's size and
    # may be handed a batch that was not read into this process (a hop passed by reference).
    reads_events: ClassVar[bool] = True

    def __init__(self, channels: list[str]):
        self.channels = list(channels)

    @abstractmethod
    def route(self, batch: EventBatch) -> Routing:
        """Where each event of ``batch`` goes."""
