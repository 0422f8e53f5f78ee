"""The Ray actors behind every component.

Each component runs in its own named, detached actor created with ``max_restarts`` (supervised
restarts): Ray re-runs ``__init__`` with the same arguments after the process dies, so every
actor rebuilds itself from its config there. Actors are threaded (``max_concurrency``): the
component's loop runs in a background thread while metrics, status and stop calls are served.

* ``ChannelActor`` fronts a :class:`~rayflume.channels.base.Channel`; it expires overdue leases.
* ``SourceActor`` runs a :class:`~rayflume._private.runners.SourceRunner`.
* ``SinkGroupActor`` runs a sink processor over one or more
  :class:`~rayflume._private.runners.SinkRunner`; on start it releases leases its previous
  incarnation held, so a restarted sink's batches return to the channel at once, and reads which
  of its sinks an operator paused before any of them takes (:mod:`rayflume._private.pausing`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import sys
import threading
import time
import uuid
import warnings
from collections import deque

import ray

from rayflume._private import logs
from rayflume._private.backoff import Backoff
from rayflume._private.ledger import DeliveryLedger
from rayflume._private.metrics import RayExporter
from rayflume._private.pausing import read_pause_state
from rayflume._private.runners import SinkRunner, SourceRunner, run_sink_group
from rayflume._private.state_store import RayKVStore
from rayflume._private.stored import StoredBatch
from rayflume._private.tap import TapPoint
from rayflume.channels.base import IdWindow
from rayflume.errors import ChannelError, ConfigError, LeaseUnknown
from rayflume.event import EventBatch
from rayflume.interceptors.base import InterceptorChain
from rayflume.sinks.base import SinkContext
from rayflume.sources.base import SourceContext

logger = logging.getLogger("rayflume")
NAMESPACE = "rayflume"
HOUSEKEEPING_S = 0.5
EXPORT_EVERY_S = 5.0


def was_reconstructed() -> bool:
    """Whether this actor is a restart of one whose process died."""
    with warnings.catch_warnings():
        # Ray implements the property with a deprecated accessor; the warning is noise to users.
        warnings.simplefilter("ignore")
        return ray.get_runtime_context().was_current_actor_reconstructed


def actor_name(topology: str, kind: str, name: str) -> str:
    return f"{topology}/{kind}/{name}"


def channel_actor_name(topology: str, scope: str, channel: str) -> str:
    """The name of a channel's actor, as the controller names it (``scope``: tier/instance or "")."""
    return "/".join(p for p in (topology, scope, "channel", channel) if p)


def ledger_key(topology: str, scope: str, channel: str) -> str:
    """The state-store key of a channel's per-sink delivery totals."""
    return f"ledger/{channel_actor_name(topology, scope, channel)}"


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


def _typed(kind: str, raw: dict, path: str):
    """The typed config of a component from its mapping, as the topology validated it. A user
    component's ``type`` (an import path, an entry point's name, or a config class object that
    arrived pickled with the arguments) resolves here from the actor's runtime environment: the
    controller's, inherited, which carries the topology's ``runtime_env``."""
    from rayflume.topology import _with_nested, build_config

    errors: list[str] = []
    config = build_config(kind, raw, path, errors)
    if config is not None and kind == "source":
        config = _with_nested(config, path, errors)
    if errors:
        raise ConfigError(errors)
    return config


def process_memory() -> dict:
    """``ProcessRssBytes`` (resident now) and ``ProcessPeakRssBytes`` (the most since the process
    started) of this process; {} where the system does not say (Linux /proc; peak from getrusage)."""
    import resource

    out = {}
    try:
        with open("/proc/self/statm") as f:
            out["ProcessRssBytes"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        pass  # not Linux: no current RSS, the peak below still says something
    # kilobytes on Linux; the kernel updates it lazily, so it can trail the current figure
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if peak or out:
        out["ProcessPeakRssBytes"] = max(peak, out.get("ProcessRssBytes", 0))
    return out


class _PandasKeptOut:
    """An import hook that refuses ``pandas`` while pyarrow looks for it (see
    :func:`keep_pandas_out_of_pyarrow`)."""

    def find_spec(self, name, path=None, target=None):
        if name == "pandas":
            raise ImportError("pandas is not loaded by pyarrow in a component actor")
        return None


def keep_pandas_out_of_pyarrow() -> None:
    """Have pyarrow settle now, in this component actor's process, that it runs without pandas.

    pyarrow imports pandas (when installed) on its first ``pa.array`` call, to recognise pandas
    objects: about 37 MB of resident memory in each actor process, which never converts to or from
    pandas. pyarrow remembers the outcome of that first look, so this makes the look fail once.
    pandas stays importable: user code in the actor may import it, and ``to_pandas()`` (which
    asks pyarrow to import pandas outright) still works; only ``pa.array(<pandas object>)``
    treats a Series as a plain sequence in this process. pyarrow's C++ conversions to numpy
    (``to_numpy``, ``np.asarray`` of an Arrow array) and its type inference for Python lists look
    for pandas on their own, each time: a component that uses them (the header interceptors do)
    still loads it. The taildir -> file -> hdfs agent does not (``scripts/bench_e2e.py`` checks)."""
    import pyarrow.lib

    if "pandas" in sys.modules:
        return  # already loaded by someone: nothing to save, and its objects must keep converting
    blocker = _PandasKeptOut()
    sys.meta_path.insert(0, blocker)
    try:
        pyarrow.lib._pandas_api.have_pandas  # the look pyarrow remembers
    except Exception:  # a pyarrow without this internal: it will import pandas when it wants
        logger.debug("cannot keep pandas out of pyarrow", exc_info=True)
    finally:
        sys.meta_path.remove(blocker)


class _Component:
    """What every component actor shares: identity, start time, restart detection, stop."""

    kind = ""

    def _init_identity(self, topology: str, name: str, scope: str, metrics_export=None) -> None:
        logs.configure()
        keep_pandas_out_of_pyarrow()
        self.topology = topology
        self.name = name
        self.scope = scope
        self.incarnation = uuid.uuid4().hex
        self.start_time_ms = int(time.time() * 1000)
        self.stop_time_ms = 0
        self.stopping = threading.Event()
        self.reconstructed = was_reconstructed()
        self.metrics_export = metrics_export  # the topology's metrics.export (None: every counter)
        self.exporter = RayExporter(topology, self.kind, name, scope, export=metrics_export)
        if self.reconstructed:
            logger.warning("%s '%s' of topology '%s' restarted after its process died (pid %d)",
                           self.kind.lower(), name, topology, os.getpid())

    def _base_info(self) -> dict:
        return {"kind": self.kind, "name": self.name, "incarnation": self.incarnation,
                "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
                "reconstructed": self.reconstructed, "stopping": self.stopping.is_set(),
                "start_time_ms": self.start_time_ms}

    def _times(self) -> dict:
        """Start and stop time, and the memory of this actor's process (every component that
        shares the process, as the sinks of a group do, reports the same)."""
        return {"StartTime": self.start_time_ms, "StopTime": self.stop_time_ms, **process_memory()}

    def pid(self) -> int:
        return os.getpid()

    def logs(self, lines: int = 100) -> list[str]:
        """The last ``lines`` log lines of this actor's process (since its last restart)."""
        return logs.recent(lines)


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


class SourceActor(_Component):
    kind = "SOURCE"

    def __init__(self, topology: str, name: str, raw_config: dict, channels: dict, scope: str = "",
                 metrics_export=None, volume: dict | None = None):
        self._init_identity(topology, name, scope, metrics_export)
        self.config = _typed("source", raw_config, f"sources.{name}")
        self.channels = ChannelDirectory(topology, scope, channels)
        self.counters: dict = {}
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
                self.counters["DuplicateBatchCount"] = self.counters.get("DuplicateBatchCount", 0) + 1
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
        self.counters["EventAcceptedCount"] = sum(int(t.get("EventAcceptedCount", 0)) for t in totals.values())
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
        return {**self.counters, **self._times()}

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


START_RETRY_MAX_S = 60.0
# A pause answers the controller once the paused sinks settled their batch in hand, or after this
# long (a slow write): below the controller's PAUSE_CONFIRM_S, so that it hears the answer.
PAUSE_SETTLE_WAIT_S = 4.0
PAUSE_SETTLE_POLL_S = 0.02
HOP_START_WAIT_S = 10.0  # a hop that finds its source still starting waits this long, then is retried
# A tap read holds one of the actor's threads while it waits: bounded, so that readers cannot
# keep its status and stop calls waiting for threads.
TAP_MAX_WAIT_S = 10.0


def start_with_retries(what: str, start, stopping: threading.Event, report) -> bool:
    """Call ``start()`` until it succeeds or ``stopping`` is set, backing off from 1 s to 60 s.

    Each failure is logged and handed to ``report`` (a message for status, or None once started).
    Returns whether it started. Runs in a component's own thread, never in an actor constructor,
    so a slow or failing start leaves the actor answering status calls.
    """
    backoff = Backoff(1.0, START_RETRY_MAX_S)
    while not stopping.is_set():
        try:
            start()
            report(None)
            return True
        except Exception as exc:
            delay = backoff.next_delay()
            message = f"failed to start: {type(exc).__name__}: {exc}; retrying in {delay:g} s"
            logger.error("%s %s", what, message)
            report(message)
            stopping.wait(delay)
    return False


class SinkGroupActor(_Component):
    """Runs a sink group. The constructor only checks configs; sinks start in the group's thread,
    with retries, so that a sink that cannot start yet (a missing directory, a dead channel) is a
    status of this actor rather than a failed constructor.

    Once the sinks started, a heartbeat thread renews every sink's leases (its write in progress,
    its prefetched take) a third of the channel's ``lease_timeout_s`` apart, until ``stop`` has
    settled them; so a lease expires only when this actor's process is gone, however slow a write.

    Pause: which sinks are paused is the controller's (:mod:`rayflume._private.pausing`). The
    sinks start paused as the controller's stored state says, read before any of them takes, so
    a restart of this actor (or its replacement) never writes a batch while paused; the
    controller's pushes (:meth:`set_paused`) change it while it runs.
    """

    kind = "SINK"
    HEARTBEAT_MIN_S = 0.1
    HEARTBEAT_MAX_S = 10.0

    def __init__(self, topology: str, group: str, raw_sinks: dict, raw_processor: dict | None,
                 channels: dict, scope: str = "", metrics_export=None):
        self._init_identity(topology, group, scope, metrics_export)
        self.channels = ChannelDirectory(topology, scope, channels)
        self.configs = {s: _typed("sink", raw, f"sinks.{s}") for s, raw in raw_sinks.items()}
        self.processor_config = _typed("processor", raw_processor or {"type": "default"},
                                       f"sink_groups.{group}.processor")
        self.runners: list[SinkRunner] = []
        self.counters: dict[str, dict] = {s: {} for s in raw_sinks}
        # one per sink, made now: a tap read before the sinks started arms it for when they do
        self.taps: dict[str, TapPoint] = {s: TapPoint() for s in raw_sinks}
        self.error: str | None = None
        # The pause state applied here, and its number in the controller's sequence of changes:
        # a push or a stored state older than what was applied is ignored.
        self._pause_lock = threading.Lock()
        self._pause_seq = 0
        self._paused: set[str] = set()
        self._heartbeat_stop = threading.Event()  # set by stop() once the runners settled
        self._heartbeat_thread: threading.Thread | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"sinks-{group}")
        self._thread.start()

    def _start_sinks(self) -> None:
        """Start every sink (all or none) and build the processor over them, each sink paused or
        not as the controller's stored state says (raises when it cannot be read: retried)."""
        stored_seq, stored_paused = read_pause_state(RayKVStore(), self.topology, self.scope) \
            if self.topology else (0, set())
        runners: list[SinkRunner] = []
        try:
            for sink_name, config in self.configs.items():
                sink = config.build(sink_name)
                counters = self.counters[sink_name]
                sink.start(SinkContext(name=sink_name, topology=self.topology, scope=self.scope,
                                       logger=logging.getLogger(f"rayflume.sink.{sink_name}"),
                                       counters=counters))
                holder = "/".join(p for p in (self.topology, self.scope, self.name, sink_name) if p)
                port = _ChannelHandlePort(self.channels, config.channel, fill_s=config.batch_duration_s)
                runners.append(SinkRunner(sink_name, sink, port, holder, counters,
                                          pipelined=len(self.configs) == 1, tap=self.taps[sink_name]))
                # Leases of our previous incarnation return to the channel now, not at their timeout;
                # the counters go on from what the channel counted for all our incarnations.
                port._get(port.handle.release.remote(holder), 60)
                counters.update(port._get(port.handle.delivery_totals.remote(holder), 60))
        except BaseException:
            for r in runners:
                with contextlib.suppress(Exception):
                    r.sink.stop()
            raise
        self.processor = self.processor_config.build(runners)
        with self._pause_lock:  # a push may have come meanwhile: the newer state wins
            if stored_seq > self._pause_seq:
                self._apply_pause(stored_seq, stored_paused)
            for r in runners:
                r.set_paused(r.name in self._paused)
            self.runners = runners  # published paused: the group's loop starts after this

    def _report(self, message: str | None) -> None:
        self.error = message

    def _run(self) -> None:
        if not start_with_retries(f"sink group '{self.name}' of topology '{self.topology}'",
                                  self._start_sinks, self.stopping, self._report):
            return
        exporters = {r.name: RayExporter(self.topology, "SINK", r.name, self.scope, export=self.metrics_export)
                     for r in self.runners}

        def export_loop():
            while not self.stopping.wait(EXPORT_EVERY_S):
                for sink_name, exporter in exporters.items():
                    exporter.export(self.counters[sink_name])

        threading.Thread(target=export_loop, daemon=True).start()
        self._heartbeat_thread = threading.Thread(target=self._heartbeat, daemon=True,
                                                  name=f"sinks-{self.name}-heartbeat")
        self._heartbeat_thread.start()
        run_sink_group(self.processor, self.runners, self.stopping)

    def _heartbeat(self) -> None:
        """Renew every runner's leases, then wait a third of the smallest lease timeout the channels
        returned (within HEARTBEAT_MIN_S..HEARTBEAT_MAX_S); until ``stop`` settled the runners.
        A failed renewal is logged at debug and retried next round."""
        period = 1.0  # until the channels tell their lease timeouts
        while not self._heartbeat_stop.is_set():
            calls = []
            for r in self.runners:
                try:
                    calls.append((r, r.channel.handle.renew.remote(r.holder)))
                except Exception as exc:
                    logger.debug("sink '%s': cannot renew its leases: %r", r.name, exc)
            deadline = time.monotonic() + period
            timeouts = []
            for r, ref in calls:
                try:
                    timeouts.append(float(r.channel._get(ref, max(0.0, deadline - time.monotonic()))))
                except Exception as exc:
                    logger.debug("sink '%s': cannot renew its leases: %r", r.name, exc)
            if timeouts:
                period = min(max(min(timeouts) / 3, self.HEARTBEAT_MIN_S), self.HEARTBEAT_MAX_S)
            self._heartbeat_stop.wait(period)

    def set_hop_targets(self, tier: str, source: str, targets: list) -> int:
        """The controller's push of ``tier``'s live receiving instances, for this group's sinks that
        send there; returns how many took them (0 before the sinks started: they ask at start)."""
        return sum(bool(getattr(r.sink, "set_hop_targets", lambda *a: False)(tier, source, targets))
                   for r in self.runners)

    def set_paused(self, sinks: list[str], seq: int) -> dict:
        """The controller's push: exactly ``sinks`` of this group are paused (the others run), as of
        its pause state number ``seq``; ignored when older than the state applied here. A sink
        being paused finishes (or rolls back) the batch in hand and returns its prefetched take;
        then it takes nothing until resumed.

        Waits up to PAUSE_SETTLE_WAIT_S for that, so that a pause that answers ``settled`` means
        the sinks write nothing more. Returns ``{"seq", "paused", "settled"}`` as applied."""
        with self._pause_lock:
            if seq >= self._pause_seq:
                self._apply_pause(seq, set(sinks))
            applied = {"seq": self._pause_seq, "paused": sorted(self._paused)}
        deadline = time.monotonic() + PAUSE_SETTLE_WAIT_S
        while not self._pause_settled() and time.monotonic() < deadline and not self.stopping.is_set():
            time.sleep(PAUSE_SETTLE_POLL_S)
        return {**applied, "settled": self._pause_settled()}

    def _pause_settled(self) -> bool:
        """Whether every paused sink that runs has settled its batch in hand (its gauge is 1)."""
        return all(r.counters.get("Paused") == 1 for r in list(self.runners) if r.paused)

    def _apply_pause(self, seq: int, sinks: set[str]) -> None:
        """Under ``_pause_lock``: make ``sinks`` (of this group) the paused ones."""
        self._pause_seq, self._paused = seq, {s for s in sinks if s in self.configs}
        if not self.runners:  # not started: nothing in hand, so the gauge is right at once
            for s in self.configs:
                self.counters[s]["Paused"] = int(s in self._paused)
        for r in self.runners:  # a running sink's gauge turns 1 once its batch in hand settled
            r.set_paused(r.name in self._paused)

    def tap(self, sink_name: str, max_events: int = 100, wait_s: float = 1.0, sample: float = 1.0) -> EventBatch:
        """Up to ``max_events`` of the events sink ``sink_name`` of this group wrote since the last
        tap, waiting up to ``wait_s`` (at most TAP_MAX_WAIT_S) for some; see
        :class:`~rayflume._private.tap.TapPoint`. ValueError for a sink not in this group."""
        tap = self.taps.get(sink_name)
        if tap is None:
            raise ValueError(f"sink group '{self.name}' of topology '{self.topology}' has no sink "
                             f"'{sink_name}'; its sinks: {', '.join(self.taps)}")
        return tap.read(max_events, min(wait_s, TAP_MAX_WAIT_S), sample)

    def metrics(self) -> dict:
        """Counters per sink of this group."""
        return {name: {**c, **self._times()} for name, c in self.counters.items()}

    def info(self) -> dict:
        errors = {r.name: r.last_error for r in self.runners if r.last_error}
        if self.error:
            errors = {**{s: self.error for s in self.configs}, **errors}
        state = getattr(getattr(self, "processor", None), "state", None)
        return {**self._base_info(), "sinks": list(self.configs), "errors": errors,
                "started": bool(self.runners), "processor": state() if callable(state) else None,
                "paused": sorted(self._paused), "pause_seq": self._pause_seq}

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the batch in flight, then flush and close every sink."""
        self.stopping.set()
        self._thread.join(timeout_s)
        for r in self.runners:
            r.close()
            try:
                r.sink.stop()
            except Exception:
                logger.exception("sink '%s': stop failed", r.name)
        # Renewed until here: the last batch's write and the runners' settling keep their leases.
        self._heartbeat_stop.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout_s)
        self.stop_time_ms = int(time.time() * 1000)


def actor_options(topology: str, kind: str, name: str, max_restarts: int, **extra) -> dict:
    return dict(name=actor_name(topology, kind, name), namespace=NAMESPACE, lifetime="detached",
                max_restarts=max_restarts, max_task_retries=0, max_concurrency=16, num_cpus=0, **extra)


RemoteChannel = ray.remote(concurrency_groups={"takes": 8})(ChannelActor)
RemoteSource = ray.remote(SourceActor)
RemoteSinkGroup = ray.remote(SinkGroupActor)
