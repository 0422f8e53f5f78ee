"""Logging inside rayflume's actors: one level for a whole topology, and recent lines on request.

``rayflume deploy --log-level LEVEL`` puts ``RAYFLUME_LOG_LEVEL`` into the controller's runtime
environment; Ray hands a parent's runtime environment to the actors it creates, so every
component actor of the topology sees the same variable. :func:`configure` (called once per
actor process) then

* sets the ``rayflume`` logger to that level (INFO by default, so the ``logger`` sink's events
  show, as Flume's LoggerSink prints to the agent's console),
* writes records to the process's stderr, which Ray keeps in the worker's log file on its node
  (``/tmp/ray/session_latest/logs/worker-*.err``) and forwards to a foreground ``deploy``'s
  terminal, and
* keeps the last :data:`RECENT_LINES` formatted lines in memory for ``rayflume logs``, which
  reads them through the actors from any machine that reaches the cluster.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from collections import deque

LEVEL_ENV = "RAYFLUME_LOG_LEVEL"
DEFAULT_LEVEL = "INFO"
RECENT_LINES = 1000
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class RecentLines(logging.Handler):
    """Keeps the last ``capacity`` formatted records; thread-safe (logging's handler lock)."""

    def __init__(self, capacity: int = RECENT_LINES):
        super().__init__()
        self.lines: deque[str] = deque(maxlen=capacity)
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a record that cannot be formatted must not break the component
            self.handleError(record)

    def tail(self, n: int) -> list[str]:
        with self.lock:
            lines = list(self.lines)
        return lines[-n:] if n > 0 else lines


_recent: RecentLines | None = None
_configured = threading.Lock()


def level_from_env() -> int:
    """The level named by ``RAYFLUME_LOG_LEVEL`` (INFO when unset or not a level name)."""
    name = os.environ.get(LEVEL_ENV, DEFAULT_LEVEL).upper()
    return getattr(logging, name) if name in LEVELS else logging.INFO


def configure() -> RecentLines:
    """Set up the ``rayflume`` logger of this process once; returns the recent-lines buffer."""
    global _recent
    with _configured:
        if _recent is None:
            root = logging.getLogger("rayflume")
            root.setLevel(level_from_env())
            stream = logging.StreamHandler(sys.stderr)
            stream.setFormatter(logging.Formatter(FORMAT))
            _recent = RecentLines()
            root.addHandler(stream)
            root.addHandler(_recent)
            root.propagate = False  # Ray's own handlers would print each record a second time
        return _recent


def recent(n: int = 100) -> list[str]:
    """The last ``n`` log lines of this process's ``rayflume`` loggers (all with n <= 0)."""
    return configure().tail(n)
