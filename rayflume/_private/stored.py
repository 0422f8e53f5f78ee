"""Batches passed between actors by reference to their copy in Ray's object store.

A batch a sink took from its channel already sits in the object store (it is the take's reply).
A ``rayflume`` sink forwarding it to the next tier passes a :class:`StoredBatch` instead of the
batch, and a receiving source that neither intercepts nor reads events (no interceptors, a
replicating selector) hands the reference on to its channels' ``put``, which Ray resolves
before the call runs (zero-copy on the same node). So a hop copies no events until the next
tier's channel serialises its takes.

The object is owned by the sink that took it; a channel that resolved it keeps its buffers
pinned in the object store while it holds the events, even after that sink is gone.
"""
from __future__ import annotations

from dataclasses import dataclass

import ray

from rayflume.event import EventBatch


@dataclass(frozen=True)
class StoredBatch:
    """A reference to an :class:`EventBatch` in the object store and its number of events.

    Stands in for the batch where only its length is read: ``len()`` is its number of events.
    """

    ref: ray.ObjectRef
    events: int

    def __len__(self) -> int:
        return self.events

    def resolve(self, timeout_s: float | None = None) -> EventBatch:
        return ray.get(self.ref, timeout=timeout_s)
