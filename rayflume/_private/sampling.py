"""The topology controller's sampling thread: the components' counters, every
:func:`~rayflume._private.history.history_interval_s`, for ``handle.history()``/``plot()`` and the
hourly volume (``handle.volume()``, ``volume_change`` alerts).

Guarantees:

* A sample waits at most :data:`HISTORY_CALL_TIMEOUT_S` for the components' answers, all calls
  together, and never asks an actor again before it answered the previous call
  (:func:`sample_counters`): neither a slow sample nor a dead actor delays a reconcile tick (the
  thread is not the reconcile loop's, and reads the instance map without its lock), and calls
  cannot pile up in a stuck actor's queue.
* The history (:class:`~rayflume._private.history.MetricsHistory`) is in memory: it starts anew
  when the controller restarts.
* The hourly volume per source (and header value, :class:`~rayflume._private.volume.HourlyVolume`)
  is stored on a key of its own, every :data:`VOLUME_SAVE_EVERY_S` and whenever the hour changes
  (not every sample: one write of the state store per 30 s at most, normally), so it survives a
  controller restart; a crash loses only the attribution to hours of what was counted since the
  last save (the baselines are stored with the counts). A redeploy with another volume setting
  keeps the per-source hours. An unreadable stored volume is counted afresh, said in an event.

:class:`Sampler` is written against callables (the sample, the deployed topology, the event log),
as the runners are; the controller passes its ``_history_sample``, which keeps the calls not
answered yet between samples.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Callable, Iterator

import ray

from rayflume._private.history import MetricsHistory, history_interval_s
from rayflume._private.state_store import StateStore
from rayflume._private.volume import HourlyVolume, hour_of, strip_volume
from rayflume.topology import Topology

logger = logging.getLogger("rayflume.controller")
# A history sample waits this long for the components' counters, all calls together: one that
# has not answered by then (dead, restarting, busy) is left out of that sample.
HISTORY_CALL_TIMEOUT_S = 1.0
# The hourly volume is stored at most this often (and whenever the hour changes): a controller
# crash loses nothing (the baselines are stored with the counts) but the attribution to hours of
# what was counted since the last save.
VOLUME_SAVE_EVERY_S = 30.0


def sample_counters(instances: dict, pending: dict) -> tuple[list[tuple[tuple, dict]], dict]:
    """``([((tier, instance, kind, component), counters)], pending)``: the counters of the components
    of ``instances`` (the controller's instance map) that answered ``metrics()`` within
    HISTORY_CALL_TIMEOUT_S (all calls together), a sink group as its sinks, each with its
    ``Restarts`` as of the last tick (no listing of Ray's actors here); and the calls not answered
    yet, by actor id, to pass to the next sample.

    At most one call per actor is outstanding: an actor that has not answered the previous one
    (``pending``: stuck, or its node gone) is not asked again until it does, so calls cannot pile up
    in its queue. Reads the instances without the reconcile lock, as ``status()`` does.
    """
    asked = []  # (instance, kind, name, managed, ref) in status order
    outstanding = {}
    for inst in sorted(list(instances.values()), key=lambda i: (i.tier, i.instance_id)):
        for (kind, name), managed in list(inst.components.items()):
            if managed.handle is None or managed.lost:
                continue
            actor = managed.handle._actor_id
            ref = pending.get(actor)
            if ref is None:
                ref = managed.handle.metrics.remote()
            outstanding[actor] = ref
            asked.append((inst, kind, name, managed, ref))
    refs = list(outstanding.values())
    ready = set(ray.wait(refs, num_returns=len(refs), timeout=HISTORY_CALL_TIMEOUT_S)[0]) if refs else set()
    # replaced or removed actors drop out of the pending calls here
    pending = {actor: ref for actor, ref in outstanding.items() if ref not in ready}
    components = []
    for inst, kind, name, managed, ref in asked:
        if ref not in ready:
            continue
        try:
            result = ray.get(ref, timeout=0)
        except Exception:  # died or failed: nothing to record this time
            continue
        if not isinstance(result, dict):
            continue
        per_sink = result.items() if kind == "SINK" else [(name, result)]
        for component, counters in per_sink:
            if isinstance(counters, dict):
                components.append(((inst.tier, inst.instance_id, kind, component),
                                   {**counters, "Restarts": managed.restarts}))
    return components, pending


class Sampler:
    """The sampling thread of topology ``name`` (see the module docstring): ``sample()`` gives one
    sample (see :func:`sample_counters`), ``topology()`` the deployed topology (its volume
    settings), ``event(component, message)`` records an event; the volume is stored in ``store``
    under ``key``. The thread ends when ``stopping`` is set. Thread-safe."""

    def __init__(self, name: str, sample: Callable[[], list], topology: Callable[[], Topology],
                 store: StateStore, key: str, stopping: threading.Event, event: Callable[[str, str], None]):
        self.name = name
        self.key = key
        self.interval_s = history_interval_s()
        self._sample = sample
        self._topology = topology
        self._store = store
        self._stopping = stopping
        self._history = MetricsHistory()
        deployed = topology()
        self._volume = HourlyVolume(deployed.volume_header, max_values=deployed.volume_max_values)
        try:
            self._volume.restore(store.get(key))
        except Exception as exc:  # unreadable: count afresh rather than not start
            event("controller", f"stored hourly volume unusable ({exc}); counting afresh")
        self._volume_lock = threading.Lock()  # this thread writes, volume() and the alerts read
        self._volume_saved_at = time.monotonic()
        self._volume_saved_hour = hour_of(time.time())
        self._thread = threading.Thread(target=self._loop, daemon=True, name="history")

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sample = self._sample()
                self._observe_volume(sample)
                self._history.record([(key, strip_volume(counters)) for key, counters in sample])
            except Exception:
                logger.exception("topology '%s': history sample failed", self.name)
            self._stopping.wait(self.interval_s)

    def _observe_volume(self, sample: list) -> None:
        """Feed the sources' counters to the hourly volume; store it every VOLUME_SAVE_EVERY_S and
        when the hour changes (not every sample: one GCS write per 30 s at most, normally)."""
        topology = self._topology()
        with self._volume_lock:
            if (topology.volume_header, topology.volume_max_values) != (self._volume.header, self._volume.max_values):
                # redeployed with another volume setting: keep the per-source hours (and the values
                # of the same header), on the new setting
                self._volume = HourlyVolume.from_doc(self._volume.to_doc(), header=topology.volume_header,
                                                     max_values=topology.volume_max_values)
            for (tier, instance, kind, component), counters in sample:
                if kind == "SOURCE":
                    self._volume.observe(tier, instance, component, counters)
        hour = hour_of(time.time())
        if hour != self._volume_saved_hour or time.monotonic() - self._volume_saved_at >= VOLUME_SAVE_EVERY_S:
            self._save_volume()

    def _save_volume(self) -> None:
        if self._stopping.is_set():
            return  # stop() deletes it
        with self._volume_lock:
            doc = self._volume.to_doc()
        self._store.put(self.key, doc)
        self._volume_saved_at, self._volume_saved_hour = time.monotonic(), hour_of(time.time())

    @contextlib.contextmanager
    def reading_volume(self) -> Iterator[HourlyVolume]:
        """The hourly volume, not fed meanwhile (for the alerts' volume_change rules)."""
        with self._volume_lock:
            yield self._volume

    def volume(self, days: float = 8, by_header: bool = False):
        """The hourly volume of the last ``days`` days as a pyarrow Table (see
        :meth:`rayflume._private.volume.HourlyVolume.table`; the header column is ``header_value``)."""
        with self._volume_lock:
            return self._volume.table(float(days), bool(by_header), header_column="header_value")

    def history(self, window_s: float = 300.0):
        """The counters sampled in the last ``window_s`` seconds as a pyarrow Table, one row per
        (sample time, component) with rates between samples (see
        :meth:`rayflume._private.history.MetricsHistory.table`)."""
        return self._history.table(float(window_s))
