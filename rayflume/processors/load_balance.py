"""The ``load_balance`` sink processor: spread batches over the sinks of a group.

Semantics (Flume's ``LoadBalancingSinkProcessor``):

- Each ``process()`` call orders the sinks with the selector and delivers at most one batch
  through the first sink that has one to deliver: ``round_robin`` (default) starts one sink later
  on every call; ``random`` shuffles the sinks on every call.
- A sink that raises (its take is already rolled back) passes its turn to the next sink in the
  order, within the same call. With ``backoff: true`` the failing sink is also left out of the
  order for ``min(selector_max_timeout_s, 2**n)`` seconds, ``n`` being its consecutive failures
  (2 s, 4 s, ...), then admitted again; one delivered batch resets ``n`` (Flume resets only after
  an hour without failures).
- A sink that returns BACKOFF (its channel was empty) also passes the turn on, so a group whose
  sinks drain different channels keeps delivering while one channel is empty. If no sink delivered
  and at least one returned BACKOFF, ``process()`` returns BACKOFF.
- If every sink failed, or with backoff every sink is left out, ``process()`` raises
  :class:`~rayflume.errors.DeliveryError` naming the group's sinks.
- A sink an operator paused (``rayflume pause``) is left out of the order without being called,
  and its turn passes on; a pause is not a failure. If no sink delivered, none returned BACKOFF,
  none failed and some were paused, ``process()`` returns BACKOFF having taken nothing.

Driven by one thread; ``clock`` (monotonic seconds) and ``rng`` are injectable for tests.
"""
from __future__ import annotations

import logging
import random
import time
from typing import Callable

from pydantic import Field, field_validator

from rayflume.config_base import ProcessorConfig
from rayflume.errors import DeliveryError
from rayflume.processors.base import SinkLike, SinkProcessor, Status, is_paused
from rayflume.processors.default import SinkStats, error_text, group_label
from rayflume.processors.failover import penalty_s
from rayflume.registry import register

log = logging.getLogger("rayflume.processor.load_balance")

SELECTORS = ("round_robin", "random")


class LoadBalancingSinkProcessor(SinkProcessor):
    """Spreads batches over its sinks; see the module docstring."""

    kind = "load_balance"

    def __init__(self, sinks: list[SinkLike], selector: str = "round_robin", backoff: bool = False,
                 selector_max_timeout_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, name: str = ""):
        super().__init__(sinks, clock)
        if selector not in SELECTORS:
            raise ValueError(f"load_balance processor: unknown selector {selector!r}; use one of {SELECTORS}")
        if selector_max_timeout_s <= 0:
            raise ValueError(f"load_balance processor: selector_max_timeout_s must be > 0, "
                             f"got {selector_max_timeout_s}")
        self.name = name
        self.selector = selector
        self.backoff = bool(backoff)
        self.selector_max_timeout_s = float(selector_max_timeout_s)
        self.rng = rng if rng is not None else random.Random()
        self.stats = [SinkStats() for _ in self.sinks]
        self._restore_at = [0.0] * len(self.sinks)  # clock time a backed-off sink is admitted again
        self._next = 0

    def _order(self, now: float) -> list[int]:
        n = len(self.sinks)
        if self.selector == "round_robin":
            start = self._next
            self._next = (start + 1) % n
            order = [(start + k) % n for k in range(n)]
        else:
            order = list(range(n))
            self.rng.shuffle(order)
        if self.backoff:
            order = [i for i in order if self._restore_at[i] <= now]
        return order

    def process(self) -> Status:
        order = self._order(self.clock())
        saw_backoff = skipped_paused = False
        errors: list[str] = []
        for i in order:
            sink = self.sinks[i]
            if is_paused(sink):
                skipped_paused = True
                continue
            try:
                status = sink.process()
            except Exception as exc:
                self._fail(i, exc)
                errors.append(f"{sink.name}: {error_text(exc)}")
                continue
            self.stats[i].record(status)
            if status is Status.READY:
                return status
            saw_backoff = True
        if saw_backoff or (skipped_paused and not errors):
            return Status.BACKOFF
        raise DeliveryError(self._all_failed_message(errors))

    def _fail(self, i: int, exc: Exception) -> None:
        stats = self.stats[i]
        stats.record_failure(exc)
        if self.backoff:
            wait = penalty_s(stats.consecutive_failures, self.selector_max_timeout_s)
            self._restore_at[i] = self.clock() + wait
            log.warning("%s: sink %r failed (%s); left out for %.1f s", self._label(),
                        self.sinks[i].name, error_text(exc), wait)
        else:
            log.warning("%s: sink %r failed (%s); its turn passes to the next sink", self._label(),
                        self.sinks[i].name, error_text(exc))

    def _label(self) -> str:
        return group_label(self.kind, self.name, self.sinks)

    def _all_failed_message(self, errors: list[str]) -> str:
        if errors:
            what = f"every sink it tried failed ({'; '.join(errors)})"
        else:
            what = "every sink is backed off after failures"
        retry = ""
        if self.backoff:
            now = self.clock()
            retry = f"; the next sink is admitted again in {max(0.0, min(self._restore_at) - now):.1f} s"
        return f"{self._label()}: {what}{retry}. The take was rolled back; check the sinks' targets"

    def state(self) -> dict:
        """For ``rayflume status``: per sink whether it is admitted, for how long not, and its counts."""
        now = self.clock()
        sinks = {}
        for i, sink in enumerate(self.sinks):
            wait = self._restore_at[i] - now if self.backoff else 0.0
            sinks[sink.name] = {
                "state": "backed_off" if wait > 0 else "live",
                "retry_in_s": round(wait, 3) if wait > 0 else None,
                "paused": is_paused(sink),
                **self.stats[i].as_dict(),
            }
        return {"type": self.kind, "selector": self.selector, "backoff": self.backoff, "sinks": sinks}


@register("processor", "load_balance")
class LoadBalanceProcessorConfig(ProcessorConfig):
    """``load_balance``: round-robin or random over the group, optionally backing off failed sinks."""

    selector: str = Field("round_robin", description="round_robin (default) or random (Flume's processor.selector).")
    backoff: bool = Field(False, description="Leave failing sinks out with exponential backoff (processor.backoff).")
    selector_max_timeout_s: float = Field(
        30.0, gt=0,
        description="Longest backoff of a failing sink, in seconds (processor.selector.maxTimeOut, in ms in Flume).")

    @field_validator("selector")
    @classmethod
    def _known_selector(cls, value: str) -> str:
        if value not in SELECTORS:
            raise ValueError(f"load_balance processor: unknown selector {value!r}; use round_robin or random "
                             f"(custom selector classes are not supported)")
        return value

    def build(self, sinks: list, *, clock: Callable[[], float] = time.monotonic,
              rng: random.Random | None = None, name: str = "") -> LoadBalancingSinkProcessor:
        return LoadBalancingSinkProcessor(sinks, selector=self.selector, backoff=self.backoff,
                                          selector_max_timeout_s=self.selector_max_timeout_s,
                                          clock=clock, rng=rng, name=name)
