"""A component's counters: the one counter type of sources, sinks and their runners.

Flume's metrics are running totals (``EventAcceptedCount``, ``ChannelWriteFail``...) and a few
levels (``Paused``, ``LastError``). A component's counters are updated from several threads at
once (a network source's connection threads, its runner, the actor answering ``metrics()``), so
every change goes through one lock.
"""
from __future__ import annotations

import threading
from typing import Iterable


class Counters(dict):
    """Counters by name: a dict that changes only under its lock.

    Thread-safe: :meth:`add`, :meth:`set`, :meth:`create` and :meth:`update` hold the lock, so concurrent adds are
    never lost; change counters only through them (``counters[key] += n`` is two steps and can
    lose a concurrent add). Reading one value is a plain dict read; :meth:`snapshot` copies all of
    them as of one instant. Pickles (to Ray, for example) as a plain dict of its values.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()

    def add(self, key: str, n: int = 1) -> None:
        """Add ``n`` to the total ``key`` (created at 0)."""
        with self._lock:
            self[key] = self.get(key, 0) + n

    def set(self, key: str, value) -> None:
        """Set the level ``key`` to ``value``."""
        with self._lock:
            self[key] = value

    def create(self, names: Iterable[str], value=0) -> None:
        """Create the counters of ``names`` that do not exist yet, at ``value``, so that they are
        reported before their first change."""
        with self._lock:
            for name in names:
                self.setdefault(name, value)

    def update(self, *args, **kwargs) -> None:
        """Set several counters at once (a restarted component's totals)."""
        with self._lock:
            super().update(*args, **kwargs)

    def snapshot(self) -> dict:
        """A plain dict of every counter as of now."""
        with self._lock:
            return dict(self)

    def __reduce__(self):
        return dict, (self.snapshot(),)
