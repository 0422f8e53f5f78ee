"""The source actor: one source, its interceptors and its channel selector.

:class:`SourceActor` runs a :class:`~rayflume._private.runners.SourceRunner` in a thread of its
own, started with retries (:func:`~rayflume._private.actor_base.start_with_retries`): a source
that cannot start yet is a status of the actor, not a failed constructor. On start it goes on
counting from what the channels counted for all its incarnations. A rayflume source also receives
tier hops (:meth:`SourceActor.append_batch`): each batch id is put once, and a batch passed by
reference goes on to the channels unread unless something must read it.
"""
from __future__ import annotations

import logging
import threading
import time

import ray

from rayflume._private.actor_base import EXPORT_EVERY_S, TAP_MAX_WAIT_S, _Component, _typed, start_with_retries
from rayflume._private.channel_ports import ChannelDirectory
from rayflume._private.runners import SourceRunner
from rayflume._private.stored import StoredBatch
from rayflume.channels.base import IdWindow
from rayflume.counters import Counters
from rayflume.errors import ChannelError
from rayflume.event import EventBatch
from rayflume.interceptors.base import InterceptorChain
from rayflume.sources.base import SourceContext

HOP_START_WAIT_S = 10.0  # a hop that finds its source still starting waits this long, then is retried


class SourceActor(_Component):
    kind = "SOURCE"

    def __init__(self, topology: str, name: str, raw_config: dict, channels: dict, scope: str = "",
                 metrics_export=None, volume: dict | None = None):
        self._init_identity(topology, name, scope, metrics_export)
        self.config = _typed("source", raw_config, f"sources.{name}")
        self.channels = ChannelDirectory(topology, scope, channels)
        self.counters = Counters()
        self.context = SourceContext(name=name, topology=topology,
                                     logger=logging.getLogger(f"rayflume.source.{name}"),
                                     counters=self.counters)
        self.source = self.config.build(name)
        if scope and hasattr(self.source, "use_scope"):
            # Each instance of a tier keeps its read positions apart, as it keeps its channel files.
            self.source.use_scope(scope)
        chain = InterceptorChain([c.build() for c in self.config.interceptors])
        selector = self.config.selector.build(list(self.config.channels))
        self.runner = SourceRunner(name, self.source, chain, selector, self._put_many, self.counters)
        if volume and volume.get("header"):  # the topology's volume: {header, max_values}
            self.runner.volume_header = volume["header"]
            self.runner.volume_max_values = int(volume.get("max_values") or self.runner.volume_max_values)
        self.holder = "/".join(p for p in (topology, scope, name) if p)
        # a hop passed by reference goes to the channels unread unless something must read it (the
        # interceptors, the selector, or the per-value volume count)
        self._reads_hops = bool(chain.interceptors) or selector.reads_events or bool(self.runner.volume_header)
        self.error: str | None = None
        self._hop_ids = IdWindow()
        self._hop_lock = threading.Lock()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"source-{name}")
        self._thread.start()

    def append_batch(self, batch: EventBatch | StoredBatch, batch_id: str) -> None:
        """A tier hop: put ``batch`` into this source's channels; returns once committed.

        Raises (ChannelFull, a dead channel) so the sender rolls back and retries; a batch id that
        was already committed is acknowledged again without a second put. A StoredBatch is
        passed on to the channels as it is, unless interceptors or the selector read events.
        """
        if not getattr(self.config, "receives_hops", False):
            raise TypeError(f"source '{self.name}' of topology '{self.topology}' is not a rayflume source")
        # until started, EventAcceptedCount is not yet seeded from the channels (it would be overwritten)
        if not self._started.wait(HOP_START_WAIT_S):
            raise ChannelError(f"source '{self.name}' of topology '{self.topology}' has not started yet: "
                               f"{self.error or 'starting'}")
        with self._hop_lock:
            if batch_id in self._hop_ids:
                self.counters.add("DuplicateBatchCount")
                return
        if self._reads_hops and isinstance(batch, StoredBatch):
            batch = batch.resolve(timeout_s=60)
        self.runner.deliver_once(batch, batch_id)
        with self._hop_lock:
            self._hop_ids.add(batch_id)

    def _put_many(self, subbatches: dict, txn_id: str, tally: tuple | None = None) -> dict:
        # a StoredBatch goes as a top-level reference, which Ray resolves before the call runs
        refs = {ch: self.channels[ch].put.remote(b.ref if isinstance(b, StoredBatch) else b, txn_id,
                                                 *((self.holder, tally[1]) if tally and tally[0] == ch else ()))
                for ch, b in subbatches.items()}
        out = {}
        for ch, ref in refs.items():
            try:
                ray.get(ref, timeout=60)
                out[ch] = None
            except Exception as exc:  # ChannelFull, actor death, timeout: retried by the runner
                self.channels.replace_if_dead(ch, exc)
                out[ch] = exc
        return out

    def _report(self, message: str | None) -> None:
        self.error = message

    def _start(self) -> None:
        """Go on counting from what the channels counted for every incarnation; then start."""
        totals = {}
        for ch in self.config.channels:
            try:
                totals[ch] = ray.get(self.channels[ch].delivery_totals.remote(self.holder), timeout=60)
            except Exception as exc:
                self.channels.replace_if_dead(ch, exc)  # the retry of this start reaches the new one
                raise
        self.counters.set("EventAcceptedCount", sum(int(t.get("EventAcceptedCount", 0)) for t in totals.values()))
        self.source.start(self.context)
        self._started.set()

    def _run(self) -> None:
        if not start_with_retries(f"source '{self.name}' of topology '{self.topology}'",
                                  self._start, self.stopping, self._report):
            return
        threading.Thread(target=self._export_loop, daemon=True).start()
        self.runner.run()

    def _export_loop(self) -> None:
        while not self.stopping.wait(EXPORT_EVERY_S):
            self.exporter.export(self.counters)

    def tap(self, max_events: int = 100, wait_s: float = 1.0, sample: float = 1.0) -> EventBatch:
        """Up to ``max_events`` of the events this source handed to its channels (after its
        interceptors) since the last tap, waiting up to ``wait_s`` (at most TAP_MAX_WAIT_S) for
        some; see :class:`~rayflume._private.tap.TapPoint` (reading arms it; it disarms itself
        when nobody reads)."""
        return self.runner.tap.read(max_events, min(wait_s, TAP_MAX_WAIT_S), sample)

    def metrics(self) -> dict:
        return {**self.counters.snapshot(), **self._times()}

    def info(self) -> dict:
        # a source may report a lasting problem of its own (a file it skipped, a bad position file)
        return {**self._base_info(), "finished": bool(self.source.finished) and not self._thread.is_alive(),
                "error": self.error or getattr(self.source, "status_error", None) or self.runner.last_error}

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop polling; a batch in flight gets ``timeout_s`` to be committed."""
        self.runner.stopping.set()
        self.stopping.set()
        self._thread.join(timeout_s)
        try:
            self.source.stop()
        finally:
            self.stop_time_ms = int(time.time() * 1000)


RemoteSource = ray.remote(SourceActor)
