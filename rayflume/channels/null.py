"""The ``null`` channel: accepts every put and discards it, for measuring sources."""
from __future__ import annotations

from typing import ClassVar

from rayflume.channels.base import Channel
from rayflume.config_base import ChannelConfig
from rayflume.event import EventBatch
from rayflume.registry import register


class NullChannel(Channel):
    """Discards at put; ``take`` always finds it empty. Thread-safe."""

    def put(self, batch: EventBatch, txn_id: str) -> None:
        self._check_put_size(batch)
        with self._lock:
            self.counters.EventPutAttemptCount += len(batch)
            self.counters.EventPutSuccessCount += len(batch)

    def take(self, max_events: int, holder: str = "", timeout_s: float = 0.0):
        with self._lock:
            self.counters.EventTakeAttemptCount += 1
        return None

    def commit(self, lease_id: str) -> None:
        return None

    def rollback(self, lease_id: str) -> None:
        return None

    def release(self, holder: str) -> int:
        return 0

    def renew(self, holder: str) -> float:
        return self.lease_timeout_s  # it never has leases

    def expire_leases(self) -> int:
        return 0

    def size(self) -> int:
        return 0

    def nbytes(self) -> int:
        return 0


@register("channel", "null")
class NullChannelConfig(ChannelConfig):
    """``null``: discards everything put into it."""

    needs_sink: ClassVar[bool] = False

    def build(self, name: str) -> NullChannel:
        return NullChannel(name, self.capacity, self.transaction_capacity, self.byte_capacity,
                           self.lease_timeout_s)
