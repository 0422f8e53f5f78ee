"""The source interface.

A source is polled by its runner (inside the source actor) for one batch at a time. The runner
runs the interceptor chain and the channel selector, then puts the batch into every required
channel, retrying with back-off until each committed. Only then does it call ``ack()`` and poll
again. So a source never needs to re-read: the batch it returned is held by the runner until it is
safely in the channels. A source acknowledges its own upstream (file position, Kafka offset) in
``ack()``, never in ``poll()``.

Methods are called from one thread at a time.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from rayflume.counters import Counters
from rayflume.event import EventBatch


@dataclass
class SourceContext:
    """What a running source gets from its runner."""

    name: str
    topology: str = ""
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("rayflume.source"))
    counters: Counters = field(default_factory=Counters)

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to a counter reported with this source's metrics. Thread-safe."""
        self.counters.add(key, n)


class Source(ABC):
    """Reads events in batches. See the module docstring for the delivery contract."""

    # True when poll() itself waits a little for data (a server's hand-off queue): the runner
    # then polls again at once instead of sleeping, so the first event after a quiet spell is
    # not delayed.
    waits_in_poll: bool = False

    def start(self, context: SourceContext) -> None:
        """Open resources. Called once, before the first ``poll``."""
        self.context = context

    @abstractmethod
    def poll(self) -> EventBatch | None:
        """The next batch, or None when nothing is available now (the runner backs off)."""

    def ack(self) -> None:
        """The batch from the last ``poll`` is committed to every required channel."""

    def on_put_failure(self, errors: dict[str, BaseException]) -> bool:
        """A put of the last batch into required channels failed (``{channel: error}``).

        Return True to have the runner keep the batch and retry with back-off (the default: a
        pollable source's data stays safe), or False to abandon it: an event-driven source that
        has already told its client (HTTP 503, say) returns False, and the runner polls again
        without calling ``ack``.
        """
        return True

    @property
    def finished(self) -> bool:
        """True once a finite source has returned (and had acknowledged) everything it will read."""
        return False

    def stop(self) -> None:
        """Release resources. ``poll`` is not called again."""
