"""What every component actor shares: names, options, config, process and start-up.

* Naming: every actor lives in the ``rayflume`` namespace (:data:`NAMESPACE`), named after its
  topology, kind and component (:func:`actor_name`, :func:`channel_actor_name`), so the
  controller re-attaches to it by name; :func:`actor_options` makes it named, detached and
  supervised (``max_restarts``), threaded (``max_concurrency``) and free of CPU reservations.
* Config: :func:`_typed` rebuilds a component's typed config from the mapping the topology
  validated, in the actor's own runtime environment, as every restart of the actor does.
* Process: :func:`keep_pandas_out_of_pyarrow` keeps pandas out of the actor's memory unless a
  component loads it; :func:`local_ray_env` gives the worker processes of a local Ray an allocator
  that hands freed memory back; :func:`process_memory` says what the process holds.
* :class:`_Component`: identity (incarnation, start time, whether this is a restart after the
  process died), metrics export, logs; :func:`start_with_retries` starts a component in its own
  thread, so that a slow or failing start leaves the actor answering status calls.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import uuid
import warnings

import ray

from rayflume._private import logs
from rayflume._private.backoff import Backoff
from rayflume._private.metrics import RayExporter
from rayflume.errors import ConfigError

logger = logging.getLogger("rayflume")
NAMESPACE = "rayflume"
EXPORT_EVERY_S = 5.0
START_RETRY_MAX_S = 60.0
# A tap read holds one of the actor's threads while it waits: bounded, so that readers cannot
# keep its status and stop calls waiting for threads.
TAP_MAX_WAIT_S = 10.0


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


def actor_options(topology: str, kind: str, name: str, max_restarts: int, **extra) -> dict:
    return dict(name=actor_name(topology, kind, name), namespace=NAMESPACE, lifetime="detached",
                max_restarts=max_restarts, max_task_retries=0, max_concurrency=16, num_cpus=0, **extra)


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


# pyarrow's default allocator (mimalloc) keeps the pages of freed buffers until later allocations
# happen to purge them: tens of MB per actor that moves large batches (the agent of
# scripts/bench_e2e.py: 655 MB of its own with the default, 575 MB with this). A purge delay of 0
# hands them back on free; the speed is the same within noise.
WORKER_MEMORY_ENV = {"MIMALLOC_PURGE_DELAY": "0"}


@contextlib.contextmanager
def local_ray_env():
    """Within this block, this process's environment carries :data:`WORKER_MEMORY_ENV` (a variable
    the user set keeps the user's value), so that a local Ray started here (``ray.init``) hands it
    to its worker processes; the environment is as it was afterwards. The allocator reads it when a
    process starts, so a cluster started with ``ray start`` needs it in that command's environment."""
    added = {k: v for k, v in WORKER_MEMORY_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


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
