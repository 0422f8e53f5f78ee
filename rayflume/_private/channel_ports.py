"""How sources and sink groups reach their channel actors.

* :class:`ChannelDirectory`: the channel actors a source or sink group uses, by channel name. A
  channel actor that died for good is replaced by the controller under the same name; the
  directory swaps the new actor in after a call failed, so the caller's retry reaches it.
* :class:`_ChannelHandlePort`: one channel actor seen by a
  :class:`~rayflume._private.runners.SinkRunner` as synchronous calls (put, take, commit,
  rollback), each bounded by ``call_timeout_s``, plus the pipelined extras: a take prefetched
  while the sink writes, and commits sent without waiting for their answer (the oldest is waited
  for once more than ``MAX_PENDING_COMMITS`` are in flight). A taken batch keeps a reference to its
  object (``batch.stored``), so that a sink may pass it on by reference.
"""
from __future__ import annotations

import contextlib
from collections import deque

import ray

from rayflume._private.actor_base import NAMESPACE, channel_actor_name, logger
from rayflume._private.stored import StoredBatch
from rayflume.errors import LeaseUnknown


class ChannelDirectory:
    """The channel actors a source or sink group uses, by channel name.

    When a channel's actor died for good (its restarts exhausted), the controller creates a new
    one under the same name; :meth:`replace_if_dead` then swaps in the new actor, so the caller's
    retry reaches it instead of the dead one. Thread-safe (a dict swap).
    """

    def __init__(self, topology: str, scope: str, handles: dict):
        self.topology = topology
        self.scope = scope
        self._handles = dict(handles)

    def __getitem__(self, channel: str):
        return self._handles[channel]

    def __contains__(self, channel: str) -> bool:
        return channel in self._handles

    def replace_if_dead(self, channel: str, exc: BaseException) -> bool:
        """After ``exc`` from a call to ``channel``: whether a new actor was swapped in."""
        if not self.topology or not isinstance(exc, ray.exceptions.ActorDiedError):
            return False  # alive, restarting or slow: the same actor answers the retry
        name = channel_actor_name(self.topology, self.scope, channel)
        try:
            new = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return False  # not re-created yet; the next failure looks again
        if new._actor_id == self._handles[channel]._actor_id:
            return False
        self._handles[channel] = new
        logger.warning("channel '%s' of topology '%s' was replaced; using the new actor", channel, self.topology)
        return True


class _ChannelHandlePort:
    """A channel actor seen by a runner as synchronous calls, plus the pipelined extras."""

    MAX_PENDING_COMMITS = 4

    def __init__(self, channels: ChannelDirectory, channel: str, call_timeout_s: float = 60.0,
                 fill_s: float = 0.0):
        self.channels = channels
        self.channel = channel
        self.call_timeout_s = call_timeout_s
        self.fill_s = fill_s  # the sink's batch_duration_s
        self._prefetched = None  # (lease, batch) ObjectRefs of a take in flight
        self._commits: deque = deque()  # (ObjectRef, events)

    @classmethod
    def of(cls, handle, **kwargs) -> "_ChannelHandlePort":
        """A port on one channel actor that is never replaced (for tests and benchmarks)."""
        return cls(ChannelDirectory("", "", {"": handle}), "", **kwargs)

    @property
    def handle(self):
        return self.channels[self.channel]

    def _get(self, ref, timeout_s: float):
        try:
            return ray.get(ref, timeout=timeout_s)
        except Exception as exc:
            self.channels.replace_if_dead(self.channel, exc)  # the runner's retry reaches the new one
            raise

    def put(self, batch, txn_id):
        self._get(self.handle.put.remote(batch, txn_id), self.call_timeout_s)

    def take(self, max_events, holder, timeout_s):
        """(lease id, batch) or None; ``batch.stored`` refers to the taken batch's object."""
        if self._prefetched is not None:
            refs, self._prefetched = self._prefetched, None
        else:
            refs = self._take_remote(max_events, holder, timeout_s)
        lease_ref, batch_ref = refs
        lease_id = self._get(lease_ref, self.call_timeout_s + self.fill_s + timeout_s)
        if lease_id is None:
            return None
        try:
            batch = self._get(batch_ref, self.call_timeout_s)
        except Exception:
            with contextlib.suppress(Exception):  # if this fails too, the lease times out instead
                self.rollback(lease_id)
            raise
        batch.stored = StoredBatch(batch_ref, len(batch))
        return lease_id, batch

    def _take_remote(self, max_events, holder, timeout_s):
        return self.handle.take_lease_and_batch.remote(max_events, holder, timeout_s, self.fill_s)

    def commit(self, lease_id):
        self._get(self.handle.commit.remote(lease_id), self.call_timeout_s)

    def rollback(self, lease_id):
        self._get(self.handle.rollback.remote(lease_id), self.call_timeout_s)

    # -- pipelined mode ----------------------------------------------------------------------
    def prefetch(self, max_events, holder, timeout_s) -> None:
        self._prefetched = self._take_remote(max_events, holder, timeout_s)

    def release_prefetched(self) -> None:
        if self._prefetched is not None:
            (lease_ref, _), self._prefetched = self._prefetched, None
            lease_id = self._get(lease_ref, self.call_timeout_s + self.fill_s)
            if lease_id is not None:
                self.rollback(lease_id)

    def commit_later(self, lease_id, events: int) -> int:
        """Send the commit; returns events of earlier commits that found their lease expired."""
        self._commits.append((self.handle.commit.remote(lease_id), events))
        return self._reap(block=len(self._commits) > self.MAX_PENDING_COMMITS)

    def settle(self) -> int:
        n = 0
        while self._commits:
            n += self._reap(block=True)
        return n

    def _reap(self, block: bool) -> int:
        duplicates = 0
        while self._commits:
            ref, events = self._commits[0]
            if not block:
                ready, _ = ray.wait([ref], timeout=0)
                if not ready:
                    break
            self._commits.popleft()
            block = False
            try:
                self._get(ref, self.call_timeout_s)
            except LeaseUnknown:
                duplicates += events  # delivered, but the lease had expired: they come again
            except Exception:
                duplicates += events  # the channel restarted: its uncommitted takes come back
        return duplicates

