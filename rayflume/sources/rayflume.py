"""The ``rayflume`` source: the receiving end of a tier hop (Flume's avro source).

It reads nothing by itself. The previous tier's ``rayflume`` sinks call its actor's
``append_batch(batch, batch_id)``, which runs the interceptors and the selector and returns only
after every required channel committed the batch; a failed put raises to the sender, which rolls
its take back and retries. A retried batch id that was already committed is acknowledged without
a second put, and channels deduplicate by the same id, so a retry after a lost reply is not
stored twice.
"""
from __future__ import annotations

from typing import ClassVar

from rayflume.config_base import SourceConfig
from rayflume.event import EventBatch
from rayflume.registry import register
from rayflume.sources.base import Source


class HopSource(Source):
    """Passive: batches arrive through ``append_batch`` on the source actor."""

    def poll(self) -> EventBatch | None:
        return None


@register("source", "rayflume")
class RayflumeSourceConfig(SourceConfig):
    """``rayflume``: receives batches from another tier's ``rayflume`` sinks."""

    receives_hops: ClassVar[bool] = True

    def build(self, name: str) -> HopSource:
        return HopSource()
