"""Exponential back-off shared by source and sink runners."""
from __future__ import annotations


class Backoff:
    """Doubles from ``initial_s`` up to ``max_s`` on each failure; ``reset()`` after a success."""

    def __init__(self, initial_s: float = 0.05, max_s: float = 5.0):
        self.initial_s = initial_s
        self.max_s = max_s
        self._next = initial_s

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self.max_s, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.initial_s
