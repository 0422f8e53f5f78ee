"""What a channel knows of each taker's deliveries, so that a sink's counters survive its restarts.

A sink's counters live in its actor's memory and start from zero when Ray restarts the actor.
The channel outlives the sink and sees every lease it hands out and how each is settled, so it
keeps, per holder (a sink's stable lease-holder name):

* ``EventDrainSuccessCount``: events of the holder's leases that were committed, or whose commit
  came after the lease expired (delivered either way, as the sink itself counts them);
* ``DuplicateDeliveryCount``: events that may be delivered a second time: a commit refused
  because the lease had expired, and the holder's open leases when its next incarnation releases
  them at start (``released``).

and per source (its putter name), ``EventAcceptedCount``: the events of its batches, counted once
per transaction id in one channel of each batch (the source's runner names which), so that a
retried put is not counted twice.

A restarted sink group or source starts its counters from these totals. Released leases are counted whole:
the channel cannot tell the batch that was being written when the process died from a batch that
was only prefetched, so after a sink restart ``DuplicateDeliveryCount`` is an upper bound,
higher than the duplicates actually written by at most one batch per restart.

Thread-safe. Open leases are bounded (``max_open``, oldest forgotten first) so that the leases of
a holder that never comes back cannot grow it without end. ``totals_doc()``/``restore()`` let
the channel actor keep the totals where its own restart finds them.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

from rayflume.channels.base import IdWindow

DRAINED = "EventDrainSuccessCount"
DUPLICATES = "DuplicateDeliveryCount"
ACCEPTED = "EventAcceptedCount"


class DeliveryLedger:
    def __init__(self, max_open: int = 100_000):
        self._lock = threading.Lock()
        self._open: OrderedDict[str, tuple[str, int]] = OrderedDict()  # lease id -> (holder, events)
        self._totals: dict[str, dict[str, int]] = {}
        self._max_open = max_open
        self._counted_puts = IdWindow()
        self.version = 0  # bumped on every change of the totals (to save only when changed)

    def _add(self, holder: str, key: str, events: int) -> None:
        totals = self._totals.setdefault(holder, {})
        totals[key] = totals.get(key, 0) + events
        self.version += 1

    def accepted(self, putter: str, txn_id: str, events: int) -> None:
        """A put of ``putter``'s transaction ``txn_id`` was committed; ``events`` is what the source
        counts as accepted for the whole transaction (once, whatever the retries)."""
        with self._lock:
            if txn_id not in self._counted_puts:
                self._counted_puts.add(txn_id)
                self._add(putter, ACCEPTED, events)

    def taken(self, lease_id: str, holder: str, events: int) -> None:
        with self._lock:
            self._open[lease_id] = (holder, events)
            if len(self._open) > self._max_open:
                self._open.popitem(last=False)

    def committed(self, lease_id: str) -> None:
        with self._lock:
            got = self._open.pop(lease_id, None)  # None: a retried commit, already counted
            if got is not None:
                self._add(got[0], DRAINED, got[1])

    def commit_refused(self, lease_id: str) -> None:
        """The holder delivered the lease's events after it expired: they come again."""
        with self._lock:
            got = self._open.pop(lease_id, None)
            if got is not None:
                self._add(got[0], DRAINED, got[1])
                self._add(got[0], DUPLICATES, got[1])

    def rolled_back(self, lease_id: str) -> None:
        with self._lock:
            self._open.pop(lease_id, None)

    def released(self, holder: str) -> int:
        """A new incarnation of ``holder`` returned its predecessor's leases; returns their events."""
        with self._lock:
            mine = [lid for lid, (h, _) in self._open.items() if h == holder]
            events = sum(self._open.pop(lid)[1] for lid in mine)
            if events:
                self._add(holder, DUPLICATES, events)
            return events

    def totals(self, holder: str) -> dict[str, int]:
        """The counters kept for ``holder`` (only those it ever had)."""
        with self._lock:
            return dict(self._totals.get(holder, {}))

    def totals_doc(self) -> dict:
        with self._lock:
            return {h: dict(t) for h, t in self._totals.items()}

    def restore(self, doc: dict | None) -> None:
        with self._lock:
            for holder, totals in (doc or {}).items():
                self._totals[holder] = {k: int(v) for k, v in totals.items() if k in (DRAINED, DUPLICATES, ACCEPTED)}
