"""The ``rayflume`` sink: sends batches to another tier (Flume's avro sink).

``write(batch)`` calls ``append_batch`` on a live instance of the target tier's ``rayflume``
source and returns only after that source's required channels committed the batch, so the take
here is committed only once the next tier holds the events. Targets are the target tier's live
instances. The sink asks the topology's controller for them when it starts, when every target
failed, and at the latest every ``refresh_s`` seconds; in between the controller pushes each change
(``set_hop_targets``), so new collectors join the rotation and dead ones leave it without a restart
and without every sink polling the controller.

``policy``: ``load_balance`` (default) rotates over targets, skipping one that failed for an
exponentially growing pause; ``failover`` sticks to the first live target in instance order and
moves on when it fails. When every target refuses (or the tier has no live instance) ``write``
raises: the take is rolled back, the events stay in this tier's channel, and the sink backs off.

A batch unchanged since the take is sent by reference to its copy in the object store (see
``rayflume._private.stored``), so the hop itself copies no events.

Batch ids let the receiver recognise a retry whose first attempt did commit (only the reply was
lost, or the receiver died after its channel committed): it stores a batch id once. A new batch
gets a random id. After a failed write the sink remembers the events it sent (or tried to), as
parts, each with its id and a digest of its events; the events come back at the head of the next
take after the rollback, often regrouped with more behind them, so the next write sends each
remembered part that heads the batch again under its old id, and only the rest under a new one.
Digests are computed only after a failure, so the common path does not hash.
"""
from __future__ import annotations

import hashlib
import logging
import time
import uuid
from typing import Literal

import ray
from pydantic import Field

from rayflume.config_base import SinkConfig
from rayflume.errors import DeliveryError
from rayflume.event import EventBatch
from rayflume.interceptors.headers import set_header
from rayflume.registry import register
from rayflume.sinks.base import Sink

logger = logging.getLogger("rayflume.sink.rayflume")


def events_digest(batch: EventBatch) -> str:
    """A digest of the batch's events (headers and bodies), whatever their layout in memory: a
    slice of a larger batch and a batch of the same events built anew digest alike."""
    h = hashlib.blake2b(digest_size=16)
    rb = batch.record_batch
    h.update(rb.num_rows.to_bytes(8, "little"))
    for name in rb.schema.names:
        h.update(repr(rb.column(name).to_pylist()).encode())
    return h.hexdigest()


class RayflumeSink(Sink):
    def __init__(self, name: str, config: RayflumeSinkConfig):
        self.name = name
        self.config = config
        self.batch_size = config.batch_size
        self.targets: list[tuple[str, object]] = []
        self._refreshed_at = 0.0
        self._next = 0
        self._failures: dict[str, int] = {}
        self._excluded_until: dict[str, float] = {}
        # the parts of the last failed write, head first: (events, digest, batch id)
        self._failed: list[tuple[int, str, str]] = []

    def start(self, context) -> None:
        super().start(context)
        from rayflume._private.actors import NAMESPACE
        from rayflume._private.controller import controller_name

        self._controller_name = (controller_name(context.topology), NAMESPACE)

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and self.targets and now - self._refreshed_at < self.config.refresh_s:
            return
        try:
            controller = ray.get_actor(*self._controller_name)
            targets = ray.get(controller.hop_targets.remote(self.config.tier, self.config.source), timeout=30)
        except Exception as exc:
            logger.warning("sink '%s': cannot ask the controller for tier '%s': %s", self.name, self.config.tier, exc)
            return
        known = {i for i, _ in self.targets}
        joined = [i for i, _ in targets if i not in known]
        if joined and self.targets:
            logger.info("sink '%s': new targets in tier '%s': %s", self.name, self.config.tier, joined)
        self.targets = targets
        self._refreshed_at = now

    def set_hop_targets(self, tier: str, source: str, targets: list) -> bool:
        """The controller's push of ``tier``'s live receiving instances; taken if this sink sends
        there. Safe to call while ``write`` runs in another thread (one attribute is replaced)."""
        if tier != self.config.tier or (self.config.source is not None and source != self.config.source):
            return False
        self.targets = list(targets)
        self._refreshed_at = time.monotonic()
        return True

    def _parts(self, batch: EventBatch) -> list[tuple[EventBatch, str]]:
        """``batch`` as ``[(events, batch id)]``: the parts of the last failed write that head it
        again, under their ids, then the rest (all of it, usually) under a new id."""
        parts, offset = [], 0
        for n, digest, batch_id in self._failed:
            if offset + n > len(batch) or events_digest(batch.slice(offset, n)) != digest:
                break
            parts.append((batch.slice(offset, n) if (offset, n) != (0, len(batch)) else batch, batch_id))
            offset += n
        if offset < len(batch):
            parts.append((batch.slice(offset) if offset else batch, uuid.uuid4().hex))
        return parts

    def _order(self) -> list[tuple[str, object]]:
        now = time.monotonic()
        live = [t for t in self.targets if self._excluded_until.get(t[0], 0) <= now]
        if not live:
            live = list(self.targets)  # everyone is penalised: try them all rather than none
        if self.config.policy == "failover" or len(live) < 2:
            return live
        start = self._next % len(live)
        self._next += 1
        return live[start:] + live[:start]

    def write(self, batch: EventBatch) -> None:
        self._refresh()
        if not self.targets:
            self._refresh(force=True)
        if not self.targets:
            raise DeliveryError(f"sink '{self.name}': tier '{self.config.tier}' has no live instance to receive; the "
                                f"events stay in this sink's channel until one starts")
        if self.config.instance_header:
            batch = set_header(batch, self.config.instance_header, self.context.scope or self.context.topology)
        parts = self._parts(batch)
        for i, (part, batch_id) in enumerate(parts):
            try:
                self._send(part, batch_id)
            except DeliveryError:
                self._failed = [(len(p), events_digest(p), pid) for p, pid in parts[:i + 1]]
                raise
        self._failed = []

    def _send(self, batch: EventBatch, batch_id: str) -> None:
        # the batch as taken is already in the object store: send a reference, not a copy
        payload = batch.stored if batch.stored is not None else batch
        errors = []
        for instance, handle in self._order():
            try:
                ray.get(handle.append_batch.remote(payload, batch_id), timeout=self.config.call_timeout_s)
            except Exception as exc:  # refused (full), dead, unreachable, timed out: try the next one
                n = self._failures.get(instance, 0) + 1
                self._failures[instance] = n
                self._excluded_until[instance] = time.monotonic() + min(self.config.max_backoff_s, 0.5 * 2 ** n)
                errors.append(f"{instance}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                continue
            self._failures.pop(instance, None)
            self._excluded_until.pop(instance, None)
            if self.context is not None and errors:
                self.context.count("HopFailoverCount")
            return
        self._refreshed_at = 0.0  # the set of instances may have changed: ask again next time
        raise DeliveryError(f"sink '{self.name}': no instance of tier '{self.config.tier}' accepted the batch "
                            f"({'; '.join(errors)}); rolled back, will retry")


@register("sink", "rayflume")
class RayflumeSinkConfig(SinkConfig):
    """``rayflume``: sends to the ``rayflume`` source of another tier."""

    tier: str = Field(description="The tier to send to.")
    source: str | None = Field(None, description="The target tier's rayflume source (needed if it has several).")
    policy: Literal["load_balance", "failover"] = "load_balance"
    # every hop costs a few actor calls and object-store objects, whatever its size: fill it
    batch_duration_s: float = Field(0.05, ge=0, description="Longest wait for batch_size events before "
                                                            "sending fewer.")
    call_timeout_s: float = Field(60.0, gt=0)
    refresh_s: float = Field(30.0, gt=0, description="Longest time between asking the controller for the live "
                                                     "targets (it also pushes every change).")
    max_backoff_s: float = Field(30.0, gt=0, description="Longest pause of a failed target.")
    instance_header: str | None = Field(None, description="Header set to the sending instance "
                                                          "('<tier>/<instance>'), to tell agents apart.")

    def build(self, name: str) -> RayflumeSink:
        return RayflumeSink(name, self)
