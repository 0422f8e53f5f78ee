"""The ``failover`` sink processor: one active sink, the others on standby.

Semantics (Flume's ``FailoverSinkProcessor``):

- Every sink has a priority; the live sink with the highest priority is the active one and is
  the only live sink ``process()`` calls while it works.
- When a sink raises, it moves to the failed pool for ``min(max_penalty_s, 2**n)`` seconds, ``n``
  being its consecutive failures (2 s, 4 s, 8 s, ... capped), and the next live sink by priority
  is tried within the same ``process()`` call.
- When a failed sink's penalty has expired, ``process()`` first tries it (failed sinks in
  priority order). If it delivers a batch (READY) it returns to the live pool, its failure count
  resets, and it is active again if its priority is the highest live one; that call has delivered
  its one batch and returns. If it fails again its penalty doubles.
- If no sink could deliver, ``process()`` raises :class:`~rayflume.errors.DeliveryError` naming
  the group's sinks. Every failed sink's take was already rolled back by the sink.
- A sink an operator paused (``rayflume pause``) is skipped in both pools without being called,
  so the next sink by priority delivers; a pause is not a failure (no penalty, no error). With
  every sink that could be tried paused, ``process()`` returns BACKOFF having taken nothing.

Priorities: ``priority`` maps sink names to integers, higher wins, values must be unique (Flume
silently drops a sink whose priority repeats another's; rayflume refuses the config). Sinks the
map does not name rank below every named sink, in the order the group lists them (as in Flume,
where they get -1, -2, ...; here they get ``min(named priorities, 0) - 1``, ``- 2``, ... so they can
never collide with a named one).

Deviation from Flume: a failed sink whose penalty expired and that returns BACKOFF (its channel was
empty) stays in the failed pool, to be tried again on the next call, and this call goes on to the
live sinks instead of returning at once. Flume returns the BACKOFF, which starves the live sinks
when the sinks drain different channels.

Driven by one thread; ``clock`` (monotonic seconds) is injectable for tests.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from pydantic import Field, field_validator

from rayflume.config_base import ProcessorConfig
from rayflume.errors import DeliveryError
from rayflume.processors.base import SinkLike, SinkProcessor, Status, is_paused
from rayflume.processors.default import SinkStats, error_text, group_label
from rayflume.registry import register

log = logging.getLogger("rayflume.processor.failover")

# Flume's FAILURE_PENALTY: the penalty unit, doubled on every consecutive failure.
PENALTY_UNIT_S = 1.0
# 2**62 s is far beyond any max_penalty_s; bounding the exponent keeps the arithmetic cheap.
_MAX_EXPONENT = 62


def penalty_s(consecutive_failures: int, max_penalty_s: float) -> float:
    """How long a sink with this many consecutive failures stays in the failed pool."""
    return min(max_penalty_s, PENALTY_UNIT_S * 2 ** min(consecutive_failures, _MAX_EXPONENT))


class _Member:
    __slots__ = ("sink", "priority", "stats", "retry_at")

    def __init__(self, sink: SinkLike, priority: int):
        self.sink = sink
        self.priority = priority
        self.stats = SinkStats()
        self.retry_at: float | None = None  # None: live; else failed until this clock time

    @property
    def live(self) -> bool:
        return self.retry_at is None


def effective_priorities(sink_names: list[str], priority: dict[str, int]) -> dict[str, int]:
    """The priority of every sink: the named ones as given, the others below them in list order."""
    unknown = sorted(set(priority) - set(sink_names))
    if unknown:
        raise ValueError(f"failover processor: priority names sink(s) {unknown} that are not in the "
                         f"group {sink_names}; remove them or add the sinks to the group")
    floor = min([0, *priority.values()])
    out, below = {}, 0
    for name in sink_names:
        if name in priority:
            out[name] = priority[name]
        else:
            below += 1
            out[name] = floor - below
    return out


class FailoverSinkProcessor(SinkProcessor):
    """Sends through the highest-priority live sink; see the module docstring."""

    kind = "failover"

    def __init__(self, sinks: list[SinkLike], priority: dict[str, int] | None = None,
                 max_penalty_s: float = 30.0, clock: Callable[[], float] = time.monotonic, name: str = ""):
        super().__init__(sinks, clock)
        names = [s.name for s in self.sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"failover processor: the group lists a sink twice: {names}")
        priority = dict(priority or {})
        values = list(priority.values())
        if len(set(values)) != len(values):
            raise ValueError(f"failover processor: priorities must be unique, got {priority}")
        if max_penalty_s <= 0:
            raise ValueError(f"failover processor: max_penalty_s must be > 0, got {max_penalty_s}")
        self.name = name
        self.max_penalty_s = float(max_penalty_s)
        prio = effective_priorities(names, priority)
        members = [_Member(s, prio[s.name]) for s in self.sinks]
        # Highest priority first; every scan below walks this order.
        self._members = sorted(members, key=lambda m: -m.priority)

    # -- the loop ---------------------------------------------------------------------------------
    def process(self) -> Status:
        now = self.clock()
        probed_backoff = False
        for m in self._members:
            if m.retry_at is None or m.retry_at > now or is_paused(m.sink):
                continue
            try:
                status = m.sink.process()
            except Exception as exc:
                self._fail(m, exc)
                continue
            m.stats.record(status)
            if status is Status.READY:
                m.retry_at = None
                log.info("%s: sink %r delivered again and is back in the live pool",
                         self._label(), m.sink.name)
                return status
            # Empty channel: the sink's health is still unknown, so it stays failed (penalty
            # expired, tried again next call) and the live sinks get their turn.
            probed_backoff = True

        tried_live = skipped_paused = False
        errors: list[str] = []
        for m in self._members:
            if m.retry_at is not None:
                continue
            if is_paused(m.sink):  # the next live sink by priority delivers instead
                skipped_paused = True
                continue
            tried_live = True
            try:
                status = m.sink.process()
            except Exception as exc:
                self._fail(m, exc)
                errors.append(f"{m.sink.name}: {error_text(exc)}")
                continue
            m.stats.record(status)
            return status

        if not tried_live and (probed_backoff or skipped_paused):
            return Status.BACKOFF  # paused sinks are not failures: nothing to report
        raise DeliveryError(self._all_failed_message(errors))

    def _fail(self, m: _Member, exc: Exception) -> None:
        m.stats.record_failure(exc)
        wait = penalty_s(m.stats.consecutive_failures, self.max_penalty_s)
        m.retry_at = self.clock() + wait
        log.warning("%s: sink %r failed (%s); moved to the failed pool for %.1f s",
                    self._label(), m.sink.name, error_text(exc), wait)

    def _label(self) -> str:
        return group_label(self.kind, self.name, self.sinks)

    def _all_failed_message(self, errors: list[str]) -> str:
        now = self.clock()
        waits = [m.retry_at - now for m in self._members if m.retry_at is not None]
        retry = f"; the next sink is retried in {max(0.0, min(waits)):.1f} s" if waits else ""
        detail = f" ({'; '.join(errors)})" if errors else ""
        return (f"{self._label()}: no sink could deliver, nothing left to fail over to{detail}{retry}. "
                f"The take was rolled back; check the sinks' targets")

    # -- status ---------------------------------------------------------------------------------
    @property
    def active(self) -> str | None:
        """The sink ``process()`` uses next when no penalty has expired, or None if all failed
        or paused."""
        for m in self._members:
            if m.retry_at is None and not is_paused(m.sink):
                return m.sink.name
        return None

    def state(self) -> dict:
        """For ``rayflume status``: the active sink, and per sink its pool and counts.

        ``retry_in_s`` is how long a failed sink still waits before it is tried again (0 once its
        penalty expired); None for live sinks. ``paused`` says whether an operator paused it.
        """
        now = self.clock()
        sinks = {}
        for m in self._members:
            sinks[m.sink.name] = {
                "priority": m.priority,
                "state": "live" if m.live else "failed",
                "retry_in_s": None if m.live else round(max(0.0, m.retry_at - now), 3),
                "paused": is_paused(m.sink),
                **m.stats.as_dict(),
            }
        return {"type": self.kind, "active": self.active, "sinks": sinks}


@register("processor", "failover")
class FailoverProcessorConfig(ProcessorConfig):
    """``failover``: the highest-priority live sink delivers; failed sinks cool down, then retry."""

    priority: dict[str, int] = Field(
        default_factory=dict,
        description="Sink name -> priority; higher wins; values must be unique. Sinks not named rank "
                    "below every named sink, in group order (Flume's processor.priority.<sink>).")
    max_penalty_s: float = Field(
        30.0, gt=0,
        description="Longest time a failed sink is left out; the penalty is min(this, 2**n s) after n "
                    "consecutive failures (Flume's processor.maxpenalty, in seconds).")

    @field_validator("priority")
    @classmethod
    def _unique(cls, value: dict[str, int]) -> dict[str, int]:
        seen: dict[int, str] = {}
        for sink, prio in value.items():
            if prio in seen:
                raise ValueError(f"failover processor: priority {prio} is given to both {seen[prio]!r} and "
                                 f"{sink!r}; priorities must be unique, give each sink its own value")
            seen[prio] = sink
        return value

    def sinks_named(self) -> set[str]:
        return set(self.priority)

    def build(self, sinks: list, *, clock: Callable[[], float] = time.monotonic,
              name: str = "") -> FailoverSinkProcessor:
        return FailoverSinkProcessor(sinks, priority=self.priority, max_penalty_s=self.max_penalty_s,
                                     clock=clock, name=name)
