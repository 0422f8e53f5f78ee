"""The interceptor interface.

An interceptor maps a batch to a batch: it may modify headers and bodies and drop events, but
never adds events. Interceptors run in order inside the source actor, before the channel
selector. They work on whole batches with Arrow kernels; a per-event Python callable is
supported (``rayflume.interceptors.callable``) but is the slow path.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from rayflume.event import EventBatch


class Interceptor(ABC):
    @abstractmethod
    def intercept(self, batch: EventBatch) -> EventBatch:
        """The transformed batch, with at most as many events as ``batch``."""

    def close(self) -> None:
        """Release resources."""


class InterceptorChain(Interceptor):
    """Runs interceptors in order; stops early when a batch becomes empty."""

    def __init__(self, interceptors: list[Interceptor]):
        self.interceptors = list(interceptors)

    def intercept(self, batch: EventBatch) -> EventBatch:
        for interceptor in self.interceptors:
            if len(batch) == 0:
                return batch
            n = len(batch)
            batch = interceptor.intercept(batch)
            if len(batch) > n:
                raise ValueError(f"interceptor {type(interceptor).__name__} grew a batch from {n} to "
                                 f"{len(batch)} events; interceptors may only modify or drop")
        return batch

    def close(self) -> None:
        for interceptor in self.interceptors:
            interceptor.close()
