"""What the file-reading sources (``spooldir``, ``taildir``) share: an exclusive lock on their
state file taken in ``start()``, their counters, how they report an error they survive, the
per-instance scope of their positions in a tier, and the one batch in flight that ``poll`` returns
again until ``ack``. Their state files and lock live in :mod:`rayflume.sources._files.storage`."""
from __future__ import annotations

import logging
import os
import threading
import time
from abc import abstractmethod

from rayflume.errors import ConfigError
from rayflume.event import EventBatch
from rayflume.sources._files.storage import ExclusiveLock, LockHeld, read_json
from rayflume.sources.base import Source, SourceContext


class LockedFileSource(Source):
    """Base of a source that owns a state file through an :class:`ExclusiveLock`.

    Subclasses set ``KIND`` (for messages), ``COUNTERS`` (created at 0 in ``start``) and ``log``,
    call :meth:`_init_file_state` in ``__init__`` and hold ``_mutex`` around their state. They
    read batches in :meth:`_next_batch` and move their positions in :meth:`_acked`: ``poll``
    returns the batch in flight again until ``ack``, so the runner retries a put with the same
    events. ``status_error`` is the last reported error (None: none yet).
    """

    KIND = ""
    COUNTERS: tuple[str, ...] = ()
    log = logging.getLogger("rayflume.source")

    def use_scope(self, scope: str) -> None:
        """Keep this source's positions in the subdirectory ``scope`` (``<tier>/<instance>``) of
        where they would be, as a file channel keeps its files: every instance of a tier resumes
        from its own positions, so it never skips events that another instance acknowledged into
        a channel of its own. Call before ``start()``; without it, nothing changes."""
        self.scope = scope

    def _scoped(self, path: str) -> str:
        """``path`` with ``scope`` as the last directory (``path`` itself when unscoped)."""
        scope = getattr(self, "scope", "")
        return os.path.join(os.path.dirname(path), scope, os.path.basename(path)) if scope else path

    def _init_file_state(self) -> None:
        self._mutex = threading.RLock()
        self._lock: ExclusiveLock | None = None
        # How long start() waits for the lock (a dying predecessor may hold it).
        self.lock_timeout_s = 10.0
        self._started = False
        self._pending: EventBatch | None = None   # the batch in flight, until its ack
        self.status_error: str | None = None

    def start(self, context: SourceContext) -> None:
        """Create the counters at 0 (subclasses then take their lock and load their state)."""
        super().start(context)
        context.counters.create(self.COUNTERS)
        # Created now so that other threads reading the counters never see the dict grow.
        context.counters.create(["LastError"], "")

    def _acquire_lock(self, path: str, busy_message: str) -> None:
        """Take the lock at ``path``; raise ConfigError(``busy_message``) while another holds it."""
        self._lock = ExclusiveLock(path)
        try:
            self._lock.acquire(self.lock_timeout_s)
        except LockHeld:
            self._lock = None
            raise ConfigError([busy_message], topology=self.context.topology or None) from None

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self._started = False

    def _report(self, message: str) -> None:
        full = f"{self.KIND} source '{self.name}': {message}"
        self.log.error(full)
        self.status_error = full
        if getattr(self, "context", None) is not None:
            self.context.counters.set("LastError", full)

    def _read_state(self, path: str, consequence: str):
        """The JSON state file at ``path`` (None when absent). One that does not parse is moved
        aside to ``<path>.corrupt-<time>`` and reported with ``consequence``; then None."""
        try:
            return read_json(path)
        except ValueError as exc:
            aside = f"{path}.corrupt-{int(time.time())}"
            os.replace(path, aside)
            self._report(f"position file unreadable ({exc}); moved to {aside}; {consequence}")
            return None

    # -- runner side --------------------------------------------------------------------------------
    def poll(self) -> EventBatch | None:
        """The batch in flight, again until it is acknowledged; else the next from
        :meth:`_next_batch`. None before ``start()`` and when nothing is there now."""
        with self._mutex:
            if self._pending is None and self._started:
                self._pending = self._next_batch()
            return self._pending

    def ack(self) -> None:
        """The batch in flight is committed: :meth:`_acked` moves the positions past it."""
        with self._mutex:
            if self._pending is None:
                return
            self._pending = None
            self._acked()

    @abstractmethod
    def _next_batch(self) -> EventBatch | None:
        """Read the next batch (``_mutex`` held); None when nothing is there now."""

    @abstractmethod
    def _acked(self) -> None:
        """Move the positions past the batch just acknowledged (``_mutex`` held)."""
