"""The channel actor: one :class:`~rayflume.channels.base.Channel` behind actor calls.

:class:`ChannelActor` serves the channel contract (put, take, commit, rollback, release, renew)
to its sources and sink groups; takes run in a concurrency group of their own (``takes``), so a
taker waiting for events never holds up puts and commits. A background thread expires overdue
leases, saves the per-sink delivery totals (:mod:`rayflume._private.ledger`) to the GCS, so the
actor's restart goes on counting, and exports the channel's metrics. A channel that cannot be
opened yet leaves the actor up, saying why, while every channel call raises ChannelError.
"""
from __future__ import annotations

import contextlib
import posixpath
import threading
import time

import ray

from rayflume._private.actor_base import EXPORT_EVERY_S, _Component, _typed, ledger_key, logger, start_with_retries
from rayflume._private.ledger import DeliveryLedger
from rayflume._private.state_store import RayKVStore
from rayflume.errors import ChannelError, LeaseUnknown
from rayflume.event import EventBatch

HOUSEKEEPING_S = 0.5


class ChannelActor(_Component):
    """Fronts one channel. The channel is opened in the constructor; if that fails (its node lacks
    what the channel needs, a directory cannot be made) the actor stays up, reports why in
    ``info()["error"]``, and retries in the background while every channel call raises
    :class:`~rayflume.errors.ChannelError` (sources and sinks retry those)."""

    kind = "CHANNEL"

    def __init__(self, topology: str, name: str, raw_config: dict, scope: str = "", metrics_export=None):
        self._init_identity(topology, name, scope, metrics_export)
        self.config = _typed("channel", raw_config, f"channels.{name}")
        if hasattr(self.config, "storage_dirs"):
            # Default directories are per topology; and instances of a tier may share a machine,
            # so each keeps its files in its own subdirectory.
            checkpoint_dir, data_dirs = self.config.storage_dirs(f"{topology}/{name}")
            if scope:
                checkpoint_dir = posixpath.join(checkpoint_dir, scope)
                data_dirs = [posixpath.join(d, scope) for d in data_dirs]
            self.config = self.config.model_copy(update={"checkpoint_dir": checkpoint_dir,
                                                         "data_dirs": data_dirs})
        self.channel = None
        self.error: str | None = None
        # Per-sink delivery totals, kept in the GCS so that this actor's restart finds them too.
        self.ledger = DeliveryLedger()
        self._ledger_store, self._ledger_key = RayKVStore(), ledger_key(topology, scope, name)
        self._ledger_saved = 0
        try:
            self.ledger.restore(self._ledger_store.get(self._ledger_key))
        except Exception:
            logger.exception("channel '%s': cannot read its sinks' delivery totals; counting from zero", name)
        what = f"channel '{name}' of topology '{topology}'"
        try:
            self._open()
        except Exception:  # the usual case opens at once; otherwise keep trying, and say why
            threading.Thread(target=start_with_retries, args=(what, self._open, self.stopping, self._report),
                             daemon=True, name=f"channel-{name}-open").start()
        self._housekeeper = threading.Thread(target=self._housekeep, daemon=True,
                                             name=f"channel-{name}-housekeeping")
        self._housekeeper.start()

    def _open(self) -> None:
        problems = self.config.check()
        if problems:
            raise ChannelError("; ".join(problems))
        self.channel = self.config.build(self.name)
        self.error = None

    def _report(self, message: str | None) -> None:
        self.error = message

    @property
    def _opened(self):
        """The channel, or ChannelError while it could not be opened."""
        channel = self.channel
        if channel is None:
            raise ChannelError(f"channel '{self.name}' is not open: {self.error or 'opening'}")
        return channel

    def _housekeep(self) -> None:
        last_export = 0.0
        while not self.stopping.wait(HOUSEKEEPING_S):
            if self.channel is None:
                continue
            try:
                self.channel.expire_leases()
                self._save_ledger()
                if time.monotonic() - last_export >= EXPORT_EVERY_S:
                    last_export = time.monotonic()
                    self.exporter.export(self.channel.metrics())
            except Exception:
                logger.exception("channel '%s': housekeeping failed", self.name)

    def _save_ledger(self) -> None:
        version = self.ledger.version
        if version != self._ledger_saved:
            self._ledger_store.put(self._ledger_key, self.ledger.totals_doc())
            self._ledger_saved = version

    # the channel contract, as actor methods
    def put(self, batch: EventBatch, txn_id: str, putter: str = "", accepted: int = 0) -> None:
        """The channel's put; with ``putter``, the transaction also counts ``accepted`` events as
        that source's (see :mod:`rayflume._private.ledger`)."""
        self._opened.put(batch, txn_id)
        if putter:
            self.ledger.accepted(putter, txn_id, accepted)

    # Takes wait (for events, or to fill a batch): they get threads of their own, so that waiting
    # takers can never hold up puts and commits.
    @ray.method(num_returns=2, concurrency_group="takes")
    def take_lease_and_batch(self, max_events: int, holder: str = "", timeout_s: float = 0.0,
                             fill_s: float = 0.0):
        """The channel's ``take`` as two objects, (lease id, batch) or (None, None), so that the
        batch has an object of its own, which the taker can pass on by reference. First waits up
        to ``fill_s`` for ``max_events`` to be ready."""
        channel = self._opened
        if fill_s > 0:
            channel.wait_for_batch(max_events, fill_s)
        got = channel.take(max_events, holder, timeout_s)
        if got is None:
            return None, None
        self.ledger.taken(got[0], holder, len(got[1]))
        return got

    def commit(self, lease_id: str) -> None:
        try:
            self._opened.commit(lease_id)
        except LeaseUnknown:
            self.ledger.commit_refused(lease_id)
            raise
        self.ledger.committed(lease_id)

    def rollback(self, lease_id: str) -> None:
        self._opened.rollback(lease_id)
        self.ledger.rolled_back(lease_id)

    def release(self, holder: str) -> int:
        events = self._opened.release(holder)
        self.ledger.released(holder)
        return events

    def delivery_totals(self, holder: str) -> dict:
        """``{EventDrainSuccessCount, DuplicateDeliveryCount}`` of ``holder`` over all its
        incarnations (see :mod:`rayflume._private.ledger`)."""
        return self.ledger.totals(holder)

    def renew(self, holder: str) -> float:
        return self._opened.renew(holder)

    def size(self) -> int:
        return self._opened.size()

    def metrics(self) -> dict:
        return {**(self.channel.metrics() if self.channel is not None else {}), **self._times()}

    def info(self) -> dict:
        channel = self.channel
        if channel is None:
            return {**self._base_info(), "size": None, "capacity": None, "error": self.error}
        return {**self._base_info(), "size": channel.size(), "capacity": channel.capacity}

    def stop(self) -> None:
        self.stopping.set()
        self.stop_time_ms = int(time.time() * 1000)
        if self.channel is not None:
            self.channel.close()
        with contextlib.suppress(Exception):  # stopped for good: the next deploy counts from zero
            self._ledger_store.delete(self._ledger_key)


RemoteChannel = ray.remote(concurrency_groups={"takes": 8})(ChannelActor)
