"""The ``default`` sink processor, and the per-sink bookkeeping every processor here shares.

``default`` drives exactly one sink: ``process()`` calls the sink's ``process()`` and passes its
status on. A sink that raises is reported as :class:`~rayflume.errors.DeliveryError` naming the
sink (the original exception is the cause); the sink has already rolled its take back, so the
runner only needs to back off and call again.
"""
from __future__ import annotations

import time
from typing import Callable

from rayflume.config_base import ProcessorConfig
from rayflume.errors import DeliveryError
from rayflume.processors.base import SinkLike, SinkProcessor, Status, is_paused
from rayflume.registry import register

# Longest error text kept in ``state()``: enough to recognise the error, small enough to ship
# with every status report.
_ERROR_TEXT_LIMIT = 300


def error_text(exc: BaseException) -> str:
    """``Type: message``, cut to a length fit for a status report."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _ERROR_TEXT_LIMIT else text[: _ERROR_TEXT_LIMIT - 3] + "..."


class SinkStats:
    """What one sink of a group did: deliveries, empty polls, failures and the last error.

    ``consecutive_failures`` counts failures since the sink last delivered a batch (READY); a
    BACKOFF (empty channel) says nothing about the sink's target, so it neither resets nor adds.
    """

    __slots__ = ("delivered", "backoffs", "failures", "consecutive_failures", "last_error")

    def __init__(self):
        self.delivered = 0
        self.backoffs = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.last_error: str | None = None

    def record(self, status: Status) -> None:
        if status is Status.READY:
            self.delivered += 1
            self.consecutive_failures = 0
        else:
            self.backoffs += 1

    def record_failure(self, exc: BaseException) -> None:
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = error_text(exc)

    def as_dict(self) -> dict:
        return {
            "delivered": self.delivered,
            "backoffs": self.backoffs,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
        }


def group_label(kind: str, name: str, sinks: list[SinkLike]) -> str:
    """How errors name a group: its name when known, and always its sinks."""
    names = ", ".join(s.name for s in sinks)
    return f"{kind} sink processor{f' {name!r}' if name else ''} over sinks [{names}]"


class DefaultSinkProcessor(SinkProcessor):
    """Passes ``process()`` to its one sink. Driven by one thread (see the base class)."""

    kind = "default"

    def __init__(self, sinks: list[SinkLike], clock: Callable[[], float] = time.monotonic, name: str = ""):
        super().__init__(sinks, clock)
        if len(self.sinks) != 1:
            raise ValueError(f"the default sink processor drives exactly one sink, got {len(self.sinks)} "
                             f"({', '.join(s.name for s in self.sinks)}); use failover or load_balance "
                             f"for a group of several sinks")
        self.name = name
        self.sink = self.sinks[0]
        self.stats = SinkStats()

    def process(self) -> Status:
        try:
            status = self.sink.process()
        except Exception as exc:
            self.stats.record_failure(exc)
            if isinstance(exc, DeliveryError):
                raise
            raise DeliveryError(f"sink {self.sink.name!r} failed to deliver: {error_text(exc)}; "
                                f"its take was rolled back and will be retried") from exc
        self.stats.record(status)
        return status

    def state(self) -> dict:
        """For ``rayflume status``: the sink and its counts."""
        return {"type": self.kind, "active": self.sink.name,
                "sinks": {self.sink.name: {"state": "live", "paused": is_paused(self.sink),
                                           **self.stats.as_dict()}}}


@register("processor", "default")
class DefaultProcessorConfig(ProcessorConfig):
    """``default``: one sink, no group logic. It has no settings."""

    def build(self, sinks: list, *, clock: Callable[[], float] = time.monotonic,
              name: str = "") -> DefaultSinkProcessor:
        return DefaultSinkProcessor(sinks, clock=clock, name=name)
