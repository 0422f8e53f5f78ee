"""What the controller's reconcile ticks cost: durations and calls to Ray's control store."""
from __future__ import annotations

import threading
import time
from collections import deque


class TickStats:
    """What the reconcile loop's ticks cost (``tick_stats()``; ``scripts/bench_control_plane.py``).

    For each of the last ``keep`` ticks of the loop it keeps the tick's duration, the part of it
    spent in the planner's ``plan_instances``, the number of actions carried out (instance actions
    that change something, and component actions), and the calls to Ray's control store (the GCS)
    the tick made, by kind: ``nodes`` (``ray.nodes()``), ``actor_table`` (one listing of every
    actor), ``get_actor`` and ``actor_state`` (single-actor look-ups when attaching to an actor),
    ``kv_put`` (a write of the stored state), ``create_actor`` (Ray registers and creates every actor
    through the GCS) and ``kill``. These are the calls the controller's own code makes; Ray's
    internal traffic (e.g. resolving a new actor handle's address) is not seen.

    Only calls made by the thread running a tick, during that tick, count: ``status()``,
    ``metrics()`` and the history and alert threads are not part of a tick, and neither are the
    reconciles run by the constructor and ``update()``. On the reconcile path it costs four
    ``time.perf_counter()`` calls per tick (the tick, the planner) and, per counted call, a thread-id
    comparison and a dict increment. ``report()`` may be called from any thread.
    """

    def __init__(self, keep: int = 100):
        self.ticks = 0
        self.recent: deque = deque(maxlen=keep)  # (ms, planner ms, actions, {kind: calls})
        self._thread: int | None = None  # the thread whose tick is under way
        self._calls: dict[str, int] = {}
        self.actions = 0
        self.planner_s = 0.0

    def begin(self) -> float:
        self._calls, self.actions, self.planner_s = {}, 0, 0.0
        self._thread = threading.get_ident()
        return time.perf_counter()

    def end(self, started: float) -> None:
        self._thread = None
        self.ticks += 1
        self.recent.append((round((time.perf_counter() - started) * 1000, 3), round(self.planner_s * 1000, 3),
                            self.actions, self._calls))

    def gcs(self, kind: str, n: int = 1) -> None:
        """Count ``n`` control-store calls of ``kind`` (when made by a tick)."""
        if self._thread == threading.get_ident():
            self._calls[kind] = self._calls.get(kind, 0) + n

    def report(self) -> dict:
        recent = list(self.recent)
        by_kind: dict[str, int] = {}
        for *_, calls in recent:
            for kind, n in calls.items():
                by_kind[kind] = by_kind.get(kind, 0) + n
        return {"ticks": self.ticks, "tick_ms": [r[0] for r in recent], "planner_ms": [r[1] for r in recent],
                "actions_per_tick": [r[2] for r in recent],
                "gcs_calls_per_tick": [sum(r[3].values()) for r in recent],
                "gcs_calls_by_kind_per_tick": [dict(r[3]) for r in recent], "gcs_calls_by_kind": by_kind}
