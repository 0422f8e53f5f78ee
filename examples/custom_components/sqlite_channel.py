"""A durable channel of one's own: events kept in an SQLite database file (as Flume's JDBC channel
keeps them in Derby), written against rayflume's public channel base class.

- ``SqliteChannelConfig`` (type ``sqlite_channel:SqliteChannelConfig``): the keys every channel
  has (``capacity``, ``transaction_capacity``, ``byte_capacity``, ``lease_timeout_s``) plus
  ``path``, the database file.
- ``SqliteChannel``: one row per event, in put order. A put and the record of its transaction id
  are one SQLite transaction, so a put is all or nothing and a retried put is stored once. Leases
  live in memory: a commit deletes the leased rows; a rollback, an expired lease or a restart of
  the channel returns them to the head (rows are ordered by their sequence number). Delivery:
  at-least-once, and everything committed by a put survives a crash of the process (SQLite's
  ``synchronous=FULL``).

``tests/test_custom_components.py`` runs rayflume's channel contract
(:mod:`rayflume.channel_contract`) against it, as a user's own test module would.
"""
from __future__ import annotations

import json
import sqlite3
import time
from collections import OrderedDict
from typing import ClassVar

from pydantic import Field

from rayflume.channels.base import Channel
from rayflume.config_base import ChannelConfig
from rayflume.errors import LeaseUnknown
from rayflume.event import Event, EventBatch

# How many transaction ids of committed puts are remembered, to recognise a retried put.
TXN_WINDOW = 10_000


class _Lease:
    def __init__(self, holder: str, seqs: list[int], nbytes: int, expires_at: float):
        self.holder, self.seqs, self.nbytes, self.expires_at = holder, seqs, nbytes, expires_at


class SqliteChannel(Channel):
    """Events in an SQLite file. Thread-safe (every call holds the channel's lock)."""

    def __init__(self, name: str, path: str, capacity: int = 100_000, transaction_capacity: int = 10_000,
                 byte_capacity: int | None = None, lease_timeout_s: float = 60.0):
        super().__init__(name, capacity, transaction_capacity, byte_capacity, lease_timeout_s)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "headers TEXT NOT NULL, body BLOB NOT NULL, nbytes INTEGER NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS txns (n INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE)")
        # Sequence numbers of the events not leased, in order; leased ones are in self._leases.
        self._ready = [seq for (seq,) in self._db.execute("SELECT seq FROM events ORDER BY seq")]
        self._nbytes = self._db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM events").fetchone()[0]
        self._leases: dict[str, _Lease] = {}
        self._settled: OrderedDict[str, str] = OrderedDict()  # lease id -> outcome, recent ones

    # -- put ---------------------------------------------------------------------------------------
    def put(self, batch: EventBatch, txn_id: str) -> None:
        with self._lock:
            self.counters.EventPutAttemptCount += len(batch)
            if self._db.execute("SELECT 1 FROM txns WHERE id = ?", (txn_id,)).fetchone():
                self.counters.DuplicatePutCount += len(batch)
                return
            self._check_put_size(batch)
            self._check_room(batch)
            per_event = _split(batch.nbytes, len(batch))
            rows = [(json.dumps(e.headers), e.body, n) for e, n in zip(batch.to_events(), per_event)]
            with self._transaction():
                self._db.executemany("INSERT INTO events (headers, body, nbytes) VALUES (?, ?, ?)", rows)
                # AUTOINCREMENT numbers one transaction's rows consecutively, after the highest ever
                last = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
                self._db.execute("INSERT INTO txns (id) VALUES (?)", (txn_id,))
                self._db.execute("DELETE FROM txns WHERE n <= (SELECT MAX(n) FROM txns) - ?", (TXN_WINDOW,))
            if rows:
                self._ready.extend(range(last[0] - len(rows) + 1, last[0] + 1))
            self._nbytes += batch.nbytes
            self.counters.EventPutSuccessCount += len(batch)
            self._not_empty.notify_all()

    # -- take and settle ---------------------------------------------------------------------------
    def take(self, max_events: int, holder: str = "", timeout_s: float = 0.0):
        self._check_take_size(max_events)
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self.counters.EventTakeAttemptCount += 1
            self.expire_leases()
            while not self._ready:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._not_empty.wait(remaining)
                self.expire_leases()
            seqs, self._ready = self._ready[:max_events], self._ready[max_events:]
            marks = ",".join("?" * len(seqs))
            rows = self._db.execute(f"SELECT headers, body, nbytes FROM events WHERE seq IN ({marks}) ORDER BY seq",
                                    seqs).fetchall()
            lease_id = self.new_lease_id()
            self._leases[lease_id] = _Lease(holder, seqs, sum(r[2] for r in rows),
                                            time.monotonic() + self.lease_timeout_s)
            self.counters.EventTakeSuccessCount += len(seqs)
            return lease_id, EventBatch.from_events(Event(bytes(body), json.loads(headers))
                                                    for headers, body, _ in rows)

    def commit(self, lease_id: str) -> None:
        with self._lock:
            lease = self._leases.pop(lease_id, None)
            if lease is None:
                if self._settled.get(lease_id) != "committed":
                    raise LeaseUnknown(f"channel '{self.name}': lease {lease_id} was rolled back, expired or "
                                       f"never existed; its events will be (or were) delivered again")
                return
            marks = ",".join("?" * len(lease.seqs))
            with self._transaction():
                self._db.execute(f"DELETE FROM events WHERE seq IN ({marks})", lease.seqs)
            self._nbytes -= lease.nbytes
            self._remember(lease_id, "committed")

    def rollback(self, lease_id: str) -> None:
        with self._lock:
            if self._return(lease_id, "rolled back"):
                self.counters.RollbackCount += 1

    def release(self, holder: str) -> int:
        with self._lock:
            held = [lid for lid, lease in self._leases.items() if lease.holder == holder]
            n = sum(len(self._leases[lid].seqs) for lid in held)
            for lid in held:
                self._return(lid, "rolled back")
                self.counters.RollbackCount += 1
            return n

    def renew(self, holder: str) -> float:
        with self._lock:
            for lease in self._leases.values():
                if lease.holder == holder:
                    lease.expires_at = time.monotonic() + self.lease_timeout_s
            return self.lease_timeout_s

    def expire_leases(self) -> int:
        with self._lock:
            now = time.monotonic()
            overdue = [lid for lid, lease in self._leases.items() if lease.expires_at <= now]
            n = sum(len(self._leases[lid].seqs) for lid in overdue)
            for lid in overdue:
                self._return(lid, "expired")
                self.counters.LeaseExpiredCount += 1
            return n

    # -- sizes -------------------------------------------------------------------------------------
    def size(self) -> int:
        with self._lock:
            return len(self._ready) + sum(len(lease.seqs) for lease in self._leases.values())

    def ready_events(self) -> int:
        return len(self._ready)

    def nbytes(self) -> int:
        return self._nbytes

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- internals ---------------------------------------------------------------------------------
    def _return(self, lease_id: str, outcome: str) -> bool:
        """Put a lease's events back at the head, in sequence order; False if it was settled."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return False
        self._ready = sorted(self._ready + lease.seqs)
        self._remember(lease_id, outcome)
        self._not_empty.notify_all()
        return True

    def _remember(self, lease_id: str, outcome: str) -> None:
        self._settled[lease_id] = outcome
        if len(self._settled) > TXN_WINDOW:
            self._settled.popitem(last=False)

    def _transaction(self):
        return _Transaction(self._db)


class _Transaction:
    """BEGIN ... COMMIT, or ROLLBACK when the block raises."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, exc, tb):
        self.db.execute("ROLLBACK" if kind else "COMMIT")
        return False


def _split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` whole numbers that add up to it."""
    if parts == 0:
        return []
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class SqliteChannelConfig(ChannelConfig):
    """``sqlite_channel:SqliteChannelConfig``: a durable channel in the SQLite file ``path``."""

    # the file is on its node's disk: the actor stays there and is never recreated empty elsewhere
    node_local: ClassVar[bool] = True

    path: str = Field(description="The SQLite database file holding the events.")

    def build(self, name: str) -> SqliteChannel:
        return SqliteChannel(name, self.path, self.capacity, self.transaction_capacity, self.byte_capacity,
                             self.lease_timeout_s)
