"""The Python API: deploy a topology to the connected Ray cluster and manage it.

    import ray, rayflume
    ray.init()                                   # or ray.init(address="auto")
    handle = rayflume.deploy("topologies/quickstart.yaml")
    handle.wait_finished(timeout_s=60)           # finite sources only
    print(handle.metrics()["SINK.out"]["EventDrainSuccessCount"])
    handle.metrics_frame()                       # one typed row per component, with rates
    handle.history(window_s=300)                 # the same over time, sampled by the controller
    handle.plot()                                # throughput and channel fill (matplotlib)
    handle.tap("out", n=5)                       # events in flight, as an Arrow table
    handle.pause("out"); handle.resume("out")    # stop a sink taking (events wait in its channel)
    handle.stop()

In a notebook the handle displays itself as a table of its components with live rates and channel
fill. Only ``deploy`` connects to (or starts) a Ray when none is connected, and it logs where; every
other call raises :class:`~rayflume.errors.ClusterUnavailable` instead of starting one, and a handle
of a topology that was stopped raises :class:`~rayflume.errors.TopologyNotRunning`. Topologies run
in detached actors: they outlive the Python process that deployed them until ``stop()``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

import ray

from rayflume._private import frames, logs
from rayflume._private.actor_base import local_ray_env
from rayflume._private.actors import NAMESPACE
from rayflume._private.controller import RemoteController, controller_name, controller_options

# public here: the notebook's frame columns and the shortest interval of its rates
from rayflume._private.frames import IDENTITY_COLUMNS, rate_column
from rayflume.errors import ClusterUnavailable, TopologyNotRunning
from rayflume.topology import Topology, load_topology, loads_topology, validate, with_runtime_env

logger = logging.getLogger("rayflume.api")


def load(path: str | os.PathLike) -> Topology:
    """Read and validate a topology file (raises ConfigError listing every problem)."""
    return load_topology(path)


def loads(text: str) -> Topology:
    """Validate a topology given as YAML text."""
    return loads_topology(text)


def _as_topology(topology: Topology | dict | str | os.PathLike, runtime_env: dict | None = None) -> Topology:
    """``topology`` validated, with ``runtime_env`` laid over its own (validated with it, so that
    the import paths it ships are resolved against it)."""
    if isinstance(topology, Topology):
        return validate(with_runtime_env(topology.raw, runtime_env)) if runtime_env else topology
    if isinstance(topology, dict):
        return validate(with_runtime_env(topology, runtime_env))
    return load_topology(topology, runtime_env=runtime_env)


CONNECT_TIMEOUT_S = 15.0


def ensure_ray(address: str | None = None, num_cpus: int | None = None,
               connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Connect to Ray unless already connected.

    With no address, do what ``ray.init()`` does: use the Ray instance this machine runs, else
    start one. ``local`` always starts a new local instance (the CLI's embedded Ray): a cluster
    someone else started on the machine is not taken over. Connecting to ``address``
    (``host:port`` or ``auto``) gives up after ``connect_timeout_s``
    with :class:`~rayflume.errors.ClusterUnavailable`, whatever listens there; the wait answers
    Ctrl-C. Starting a local instance is not bounded (it does not wait on anything remote).
    """
    if ray.is_initialized():
        return
    if not address or address == "local":
        with _quiet_ray_thread_warning(), local_ray_env():
            ray.init(address=address or None, num_cpus=num_cpus, include_dashboard=False, namespace=NAMESPACE,
                     logging_level=logging.WARNING)
        return
    _check_reachable(address, connect_timeout_s)
    _use_token_auth_if_available()
    outcome: list = []

    def connect():
        try:
            with _quiet_ray_thread_warning():
                ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING)
            outcome.append(None)
        except BaseException as exc:  # handed to the caller's thread below
            outcome.append(exc)

    # ray.init blocks in native code while it waits for a GCS, deaf to signals and with no deadline
    # of its own; waiting for it in another thread keeps this one responsive to Ctrl-C.
    worker = threading.Thread(target=connect, daemon=True, name="rayflume-connect")
    worker.start()
    deadline = time.monotonic() + connect_timeout_s
    while worker.is_alive() and time.monotonic() < deadline:
        worker.join(0.1)
    if worker.is_alive():
        raise ClusterUnavailable(
            f"no Ray cluster answered at {address} within {connect_timeout_s:g} s: something may listen "
            f"there that is not Ray's GCS port, or the cluster is overloaded. `ray status` on the head node "
            f"prints the right address; raise --connect-timeout-s for a slow cluster")
    if outcome and outcome[0] is not None:
        exc = outcome[0]
        if address == "auto":
            raise ClusterUnavailable(
                f"no running Ray cluster found for --address auto ({_first_line(exc)}). Start one with "
                f"`ray start --head`, give --address HOST:PORT, or omit --address to run on an embedded "
                f"local Ray") from None
        raise ClusterUnavailable(f"cannot connect to Ray at {address}: {_first_line(exc)}. Check the address "
                                 f"(`ray status` on the head node prints it)") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_reachable(address: str, timeout_s: float) -> None:
    """Fail fast on a host:port where nothing listens (Ray itself would retry for minutes)."""
    if address == "auto" or ":" not in address:
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=min(3.0, timeout_s)).close()
    except (OSError, ValueError) as exc:
        raise ClusterUnavailable(f"cannot reach a Ray cluster at {address}: {exc}. Start one with "
                                 f"`ray start --head`, or omit --address to run on an embedded local Ray") from None


@contextlib.contextmanager
def _quiet_ray_thread_warning():
    """Ray warns that a driver connected outside the main thread sets no SIGTERM handler; the
    CLI handles SIGTERM itself, so the warning only confuses."""
    class _Drop(logging.Filter):
        def filter(self, record):
            return "SIGTERM handler is not set" not in record.getMessage()

    ray_logger = logging.getLogger("ray")
    drop = _Drop()
    targets = [ray_logger, *ray_logger.handlers]
    for t in targets:
        t.addFilter(drop)
    try:
        yield
    finally:
        for t in targets:
            t.removeFilter(drop)


def cluster_address() -> str:
    """The GCS address of the connected Ray cluster."""
    return ray.get_runtime_context().gcs_address


def _use_token_auth_if_available() -> None:
    """Send the local Ray auth token (~/.ray/auth_token) when connecting to a cluster.

    A cluster started by ``ray.init()`` (as ``rayflume deploy`` does) requires the token, but a
    client connecting by address only sends it when token mode is switched on for it.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    try:
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


CONTROLLER_RESTART_WAIT_S = 120.0
DISPLAY_TIMEOUT_S = 5.0  # a repr waits no longer than this for the controller


def _require_connected(what: str) -> None:
    """Raise ClusterUnavailable unless this process is connected to Ray.

    Checked before every call that reaches Ray: Ray's own functions would start a new local Ray
    here (and then find no topology in it), hiding that the connection is gone.
    """
    if ray.is_initialized():
        return
    raise ClusterUnavailable(
        f"{what}: this Python process is not connected to Ray (ray.shutdown() was called, or the "
        f"connection to the cluster was lost), and rayflume does not start a new Ray behind your back. "
        f"If the cluster still runs, connect again with ray.init(address='auto') (or its address) and "
        f"retry; a local Ray that this process started ended with it, and so did its topologies: "
        f"deploy them again with rayflume.deploy(...)")


def _job_id() -> str:
    """The current connection to Ray: it changes with every ray.init, and actor handles obtained
    through an earlier connection do not work through a new one."""
    return ray.get_runtime_context().get_job_id()


class TopologyHandle:
    """A deployed topology, reached through its controller actor. Safe to pickle and share.

    A handle names the topology, not one deployment of it: when the topology is stopped and
    deployed again, or this process connects to Ray anew, the handle finds the new controller by
    name. Every method first checks that this process is connected to Ray and raises
    :class:`~rayflume.errors.ClusterUnavailable` otherwise (no Ray is started for it); a topology
    that is not deployed any more raises :class:`~rayflume.errors.TopologyNotRunning`.
    """

    def __init__(self, name: str, controller=None):
        self.name = name
        self.last_update: dict | None = None  # {"kept": n, "replaced": m} after a redeploy
        if controller is None:
            _require_connected(f"topology '{name}'")
            controller = ray.get_actor(controller_name(name), namespace=NAMESPACE)
        self._controller = controller
        self._controller_job = _job_id()
        self._rate_history = frames.RateHistory()  # earlier samples of the counters, for rates
        # (version, Topology or None) of the deployed spec, for the components' types
        self._topology_cache: tuple[object, Topology | None] | None = None

    # -- reaching the controller ------------------------------------------------------------------
    def _not_running(self) -> TopologyNotRunning:
        return TopologyNotRunning(
            f"topology '{self.name}' is not running on the connected Ray cluster: it was stopped (by "
            f"stop(), `rayflume stop` or a lost cluster) or never deployed there. Deploy it again with "
            f"rayflume.deploy(...) (a collector it names starts from zero); rayflume.list_deployed() "
            f"names the topologies that run")

    def _find_controller(self):
        """The controller actor registered under this topology's name, or None."""
        try:
            return ray.get_actor(controller_name(self.name), namespace=NAMESPACE)
        except ValueError:
            return None

    def _current_controller(self):
        """The controller to call: looked up again by name after a reconnection to Ray."""
        _require_connected(f"topology '{self.name}'")
        job = _job_id()
        if job != self._controller_job:
            found = self._find_controller()
            if found is None:
                raise self._not_running()
            if found._actor_id != self._controller._actor_id:
                self._forget_samples()
            self._controller, self._controller_job = found, job
        return self._controller

    def _forget_samples(self) -> None:
        """Drop what the handle remembers of a deployment: the next rates start afresh."""
        self._rate_history.forget()
        self._topology_cache = None

    def _call(self, method: str, *args, timeout_s: float = 60.0):
        """Call the controller, waiting out a restart of it (it re-attaches to its components).

        A controller that died for good was stopped; if the topology was deployed again since,
        the call goes to its new controller, else TopologyNotRunning is raised.
        """
        controller = self._current_controller()
        deadline = time.monotonic() + CONTROLLER_RESTART_WAIT_S
        looked_up_again = False
        while True:
            try:
                return ray.get(getattr(controller, method).remote(*args), timeout=timeout_s)
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
            except ray.exceptions.ActorDiedError:
                # Gone for good (a restarting controller raises ActorUnavailableError): stopped,
                # and maybe deployed again under a new controller since.
                replacement = None if looked_up_again else self._find_controller()
                if replacement is None or replacement._actor_id == controller._actor_id:
                    raise self._not_running() from None
                looked_up_again = True
                controller = self._controller = replacement
                self._forget_samples()  # a new deployment: its counters started from zero

    # -- state and counters -----------------------------------------------------------------------
    def status(self) -> dict:
        """State, tiers, components (state, restarts, counters, errors) and recent controller events."""
        return self._call("status")

    def alerts(self) -> dict:
        """The topology's alerts (``rayflume alerts``): ``{"name", "rules", "firing", "recent"}``,
        ``firing`` the alerts firing now and ``recent`` the last firing/resolved transitions, oldest
        first (bounded), each ``{rule, type, component, state, value, threshold, for_s, since, time,
        message}`` with times in seconds since the epoch. Empty lists when it has no alert rules."""
        return self._call("alerts_report")

    def metrics(self) -> dict:
        """Flume-shaped counters, every value a string as in Flume's JSON:
        ``{"SOURCE.gen": {"EventAcceptedCount": "10", ...}, ...}``; in a tiered topology the key is
        ``KIND.<tier>.<instance>.<component>``. :meth:`metrics_frame` gives them typed. A sink's
        counters appear once it started (it first reads its totals from its channel, so that a
        restarted sink counts on rather than from zero); until then it has only its times.
        ``ProcessRssBytes`` and ``ProcessPeakRssBytes`` are the memory of the component's actor
        process (a sink group's sinks share one)."""
        return self._call("metrics")

    def metrics_frame(self):
        """The counters of every component as a table, one row per component (a sink group gives
        one row per sink), typed, with rates.

        Returns a pandas DataFrame when pandas can be imported (``pip install rayflume[notebook]``),
        else a pyarrow Table with the same columns:

        * ``topology``; ``tier`` (None in a topology without tiers) and ``instance`` (``main``
          there); ``kind`` (SOURCE, CHANNEL or SINK); ``component``; ``type`` (the configured
          type, e.g. ``memory``; None if unknown); ``node`` (the Ray node id; None while unknown);
          ``state`` (as ``status()`` says: ALIVE, FINISHED, RESTARTING, LOST...);
        * then every counter any component reports, in alphabetical order, as Flume names it:
          whole numbers (``...Count``, ``ChannelSize``, ``Restarts``) as 64-bit integers (pandas'
          nullable ``Int64``), times (``StartTime``, ``StopTime``: Flume's epoch milliseconds) as
          UTC timestamps in milliseconds, other numbers as floats, the rest as text. A value a
          component does not report is null (NA/NaN/NaT); so is a time of 0 (not started, or not
          stopped yet);
        * then, for every monotonic counter ``<Name>Count``, ``<Name>PerSecond``: its increase per
          second since the latest earlier sample of this handle (taken by this method or by
          displaying the handle) that is at least ``MIN_RATE_INTERVAL_S`` (1 s) old. Null (NaN)
          when there is none: on the first call of a handle, on calls less than a second after
          it, after the topology was deployed anew, and for components new since that sample.
          Never negative: a counter that went down (its component restarted from zero) counts its
          new value as the increase.
        """
        return frames.as_frame(self._sample().table)

    def _sample(self) -> frames.Sample:
        """One status call, turned into rows and rates (see metrics_frame); kept for later rates."""
        status = self._call("status")
        taken = time.monotonic()
        rows = frames.component_rows(self.name, status, self._topology(status))
        return self._rate_history.sample(status, rows, taken)

    def _topology(self, status: dict) -> Topology | None:
        """The deployed topology (for the components' types), fetched again when its version
        changes; None if it cannot be read (types are then unknown)."""
        cached = self._topology_cache
        version = status.get("version")
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            topology = validate(self._call("raw_topology"))
        except (TopologyNotRunning, ClusterUnavailable):
            raise
        except Exception as exc:  # a spec this version of rayflume cannot read: types stay unknown
            logger.debug("topology '%s': cannot read its spec for component types: %s", self.name, exc)
            topology = None
        self._topology_cache = (version, topology)
        return topology

    # -- history ----------------------------------------------------------------------------------
    def history(self, window_s: float = 300.0):
        """The counters of every component over the last ``window_s`` seconds, as the controller
        sampled them: a long table, one row per (sample time, component), oldest first.

        The controller samples every 2 s (``RAYFLUME_HISTORY_INTERVAL_S`` in its environment says
        otherwise, e.g. through the topology's ``runtime_env: {env_vars: ...}``) and keeps at most
        1,800 samples (an hour at 2 s) and 2,000,000 values in all, whatever the number of
        components (a large topology keeps a shorter span). The history is in the controller's
        memory: it starts anew when the controller restarts, and ends with ``stop()``. A
        component that did not answer within a second is missing from that sample.

        Returns a pandas DataFrame when pandas can be imported (``pip install rayflume[notebook]``),
        else a pyarrow Table with the same columns:

        * ``time`` (the sample's time, a UTC timestamp in ms), ``tier`` (None in a topology without
          tiers), ``instance``, ``kind`` (SOURCE, CHANNEL or SINK), ``component`` (a sink group
          gives one row per sink);
        * every numeric counter, typed as in :meth:`metrics_frame` (whole numbers as nullable
          ``Int64``, ``StartTime``/``StopTime`` as timestamps), ``Restarts`` included; null where
          a component did not report it;
        * for every monotonic counter ``<Name>Count``, ``<Name>PerSecond``: its increase per second
          since the component's previous sample. Null for its first sample; never negative (a
          counter that went down, its component restarted, counts from zero).

        Raises ValueError for a ``window_s`` that is not a positive number; TopologyNotRunning
        after ``stop()``.
        """
        return frames.as_frame(self._history_table(window_s))

    def volume(self, days: float = 8, by_header: bool = False):
        """Events accepted per UTC hour over the last ``days`` days (the current hour included), as
        the controller counted them: per source instance, or with ``by_header`` per value of the
        topology's ``volume: {header: NAME}`` (after the source's interceptors; ``(none)`` for
        events without it, ``(other)`` beyond ``volume.max_values`` values per source).

        Kept for 8 days and 1 hour, stored by the controller at least every 30 s, so a controller
        restart loses none of it (what it counted since its last save is counted again from the
        sources' counters, in the hour of the restart). Hours without events have no row.

        Returns a pandas DataFrame when pandas can be imported, else a pyarrow Table, with columns
        ``hour`` (the hour's start, a UTC timestamp), ``tier`` (None without tiers), ``instance``,
        ``source``, ``header_value`` (null unless ``by_header``), ``events``; oldest hour first.
        Raises ValueError for a ``days`` that is not a positive number.
        """
        return frames.as_frame(self._volume_table(days, by_header))

    def _volume_table(self, days: float = 8, by_header: bool = False):
        """:meth:`volume` as the pyarrow Table the controller returns."""
        if isinstance(days, bool) or not isinstance(days, (int, float)) or not 0 < days < float("inf"):
            raise ValueError(f"days must be a positive number, not {days!r}")
        return self._call("volume", float(days), bool(by_header))

    def _history_table(self, window_s: float):
        """:meth:`history` as the pyarrow Table the controller returns (pandas or not)."""
        if isinstance(window_s, bool) or not isinstance(window_s, (int, float)) or not window_s > 0 \
                or window_s == float("inf"):
            raise ValueError(f"window_s must be a positive number of seconds, not {window_s!r}")
        return self._call("history", float(window_s))

    def plot(self, window_s: float = 300.0):
        """A matplotlib Figure of the last ``window_s`` seconds of :meth:`history`: events per
        second of each source (accepted) and sink (delivered) on the upper axes, each channel's
        fill (%) on the lower, over time (UTC), labelled, with legends. A notebook shows it as the
        cell's value; ``fig.savefig("pipeline.png")`` writes it (headless too).

        Needs matplotlib (``pip install 'rayflume[notebook]'``; an ImportError says so), not
        pandas. Lines start from the second sample (rates are measured between samples).
        """
        from rayflume._private import plot  # matplotlib is optional: imported only to plot

        plot.require_matplotlib()  # before asking the controller: say what to install first
        return plot.history_figure(self.name, self._history_table(window_s), window_s)

    # -- display ----------------------------------------------------------------------------------
    def __repr__(self) -> str:
        """Name and state; asks the controller (for at most DISPLAY_TIMEOUT_S), never raises."""
        return f"TopologyHandle({self.name!r}, state={self._display_state()})"

    def _display_state(self) -> str:
        if not ray.is_initialized():
            return "unknown: not connected to Ray"
        try:
            controller = self._current_controller()
            return str(ray.get(controller.ping.remote(), timeout=DISPLAY_TIMEOUT_S))
        except TopologyNotRunning:
            return "NOT RUNNING"
        except ray.exceptions.ActorDiedError:
            return "NOT RUNNING"
        except Exception as exc:  # a repr must not raise: say why the state is unknown
            return f"unknown: {type(exc).__name__}"

    def _repr_html_(self) -> str:
        """The notebook view: state, tiers, and each component's state, rates and channel fill.
        Every string from the topology is escaped. Never raises: a topology that cannot be asked
        shows why."""
        try:
            return frames.html_view(self.name, self._sample())
        except Exception as exc:  # shown instead of a traceback in the notebook's output
            return frames.html_failure(self.name, exc)

    def metrics_url(self) -> str | None:
        """Where the controller serves the metrics over HTTP, or None when it serves none."""
        return self._call("metrics_url")

    def finished(self) -> bool:
        """True when every source is finished and every channel is empty."""
        return self._call("finished")

    def wait_finished(self, timeout_s: float = 300.0, poll_s: float = 0.25) -> None:
        """Block until ``finished()``; raises TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self.finished():
            if time.monotonic() > deadline:
                raise TimeoutError(f"topology '{self.name}' did not finish within {timeout_s}s")
            time.sleep(poll_s)

    # -- events in flight -------------------------------------------------------------------------
    def tap(self, component: str, n: int = 10, timeout_s: float = 10.0, sample: float = 1.0):
        """Up to ``n`` of the events flowing through ``component`` now, as a pyarrow Table with
        columns ``tier`` (None in a topology without tiers), ``instance`` (``main`` there),
        ``component``, ``headers`` (map<string, string>) and ``body`` (binary).

        A source shows the events it hands to its channels (after its interceptors), a sink those
        its ``write`` delivered; from every instance of the component (every tier that has one of
        that name). Returns once ``n`` events came, or after ``timeout_s`` with fewer (an empty
        table when nothing flowed). Events that flowed before the call are not shown.

        Taps take nothing from any channel: every event is delivered as if untapped. ``sample``
        (in (0, 1]) keeps that fraction of the events, evenly spaced; each instance buffers at most
        1,000 events (16 MiB) between reads, dropping the oldest, and stops keeping any about 5 s
        after the last read, so an abandoned tap costs nothing.

        Raises ValueError when ``component`` is not a source or sink of the topology (naming them),
        TopologyNotRunning after ``stop()``.
        """
        from rayflume._private import tapping

        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a whole number of events >= 0, not {n!r}")
        if not timeout_s >= 0:
            raise ValueError(f"timeout_s must be >= 0 seconds, not {timeout_s!r}")
        parts = tapping.tap_stream(self, component, limit=n, idle_timeout_s=timeout_s, sample=sample,
                                   timeout_s=timeout_s)
        return tapping.events_table(parts)

    # -- the pause switch ---------------------------------------------------------------------------
    def pause(self, sink: str, tier: str | None = None) -> dict:
        """Stop sink ``sink`` from taking, on every instance of its tier, until :meth:`resume`
        (``rayflume pause``). ``tier`` is needed only when several tiers have a sink of that name.

        The sink finishes (or rolls back) the batch in hand and returns its prefetched take;
        nothing is lost or written twice. Its channel keeps accepting events until it is full, then
        the sources back off as for any full channel (with a durable channel, everything accepted
        waits on disk). In a sink group the processor skips the paused sink (failover: the next
        sink by priority delivers; with every sink paused, nothing is taken). The pause is stored
        by the controller: it holds across restarts of the controller and of the sink's actor, until
        resumed or the topology is stopped. ``status()`` shows it with the channel's backlog, and
        the sink's ``Paused`` counter is 1. Pausing a paused sink changes nothing.

        Returns ``{"sink", "tiers", "paused", "changed", "channel", "instances"}``: ``instances``
        maps each instance to ``confirmed`` or why its sink group has not confirmed yet (it is told
        again every second and reads the pause when it starts). Raises ValueError naming the
        sinks when ``sink`` is not one.
        """
        return self._set_paused(sink, True, tier)

    def resume(self, sink: str, tier: str | None = None) -> dict:
        """Undo :meth:`pause`: the sink takes again and drains its channel's backlog (``rayflume
        resume``). Resuming a running sink changes nothing. Returns and raises as :meth:`pause`."""
        return self._set_paused(sink, False, tier)

    def _set_paused(self, sink: str, paused: bool, tier: str | None) -> dict:
        try:
            return self._call("set_paused", sink, paused, tier)
        except ValueError as exc:  # raised in the controller: its message without the remote traceback
            raise ValueError(str(getattr(exc, "cause", None) or exc)) from None

    def stop(self, drain_timeout_s: float = 30.0) -> dict:
        """Stop sources, drain channels (up to ``drain_timeout_s``), stop sinks, remove all actors.
        Raises TopologyNotRunning when it is not running (stopped already)."""
        result = self._call("stop", drain_timeout_s, timeout_s=drain_timeout_s + 180)
        ray.kill(self._controller, no_restart=True)
        self._wait_until_gone(self._controller)
        self._forget_samples()
        return result

    def _wait_until_gone(self, controller, timeout_s: float = 30.0) -> None:
        """Wait until the killed ``controller`` no longer holds the topology's name. ``ray.kill``
        only asks for the kill: a call made right after it could still be served by the dying
        controller, and a deploy right after it would find the name taken."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self._find_controller()
            if found is None or found._actor_id != controller._actor_id:
                return
            time.sleep(0.05)  # the poll interval of this condition wait, bounded by timeout_s
        logger.warning("topology '%s': its controller still holds its name %.0f s after being killed",
                       self.name, timeout_s)


def deploy(topology: Topology | dict | str | os.PathLike, *, address: str | None = None,
           log_level: str | None = None, runtime_env: dict | None = None) -> TopologyHandle:
    """Validate and deploy ``topology`` (a file path, YAML mapping or Topology) under its name.

    Deploying a name that is already running updates it: components whose configuration did not
    change keep running; changed ones are replaced; an identical configuration changes nothing.
    ``log_level`` (DEBUG, INFO, WARNING, ERROR; INFO when None) applies to every actor of a newly
    deployed topology; a redeploy keeps the level the topology was first deployed with.

    When this process is not connected to Ray, ``deploy`` connects to ``address`` (None: as
    ``ray.init()`` does, to the Ray this machine runs, else a new local one; ``local``: a new
    local one) and logs where (a warning when it started or picked a Ray by itself). It is the only
    call of the API that does.

    A fresh deploy (no topology of that name running) empties the ``rayflume.testing`` collectors
    the topology's sinks name, so that a re-run counts from zero; an update of a running topology
    keeps them.

    ``runtime_env`` (Ray's ``working_dir``, ``py_modules``, ``pip``, ``env_vars``; local paths
    relative to the current directory) is laid over the topology's own ``runtime_env:`` (the call's
    ``env_vars`` win per variable, its other keys replace the topology's), validated with it, and
    applied to the controller and every component actor: the way to ship code the topology's
    components import.
    """
    topo = _as_topology(topology, runtime_env)
    level = (log_level or logs.DEFAULT_LEVEL).upper()
    if level not in logs.LEVELS:
        raise ValueError(f"log_level {log_level!r} is not one of {', '.join(logs.LEVELS)}")
    if not ray.is_initialized():
        ensure_ray(address)
        _say_where_ray_is(address)
    existing = get(topo.name)
    if existing is not None:
        if existing._call("raw_topology") != topo.raw:
            existing.last_update = existing._call("update", topo.raw, timeout_s=600)
        return existing
    _clear_collectors_of(topo)
    # Actors inherit the runtime environment of the actor that creates them: the controller's
    # reaches every component of the topology. Only a level other than the default sets one, since
    # actors with a runtime environment of their own cannot use Ray's pre-started workers (each
    # start costs about a second more).
    options = controller_options(topo.name)
    if level != logs.DEFAULT_LEVEL:
        options["runtime_env"] = {"env_vars": {logs.LEVEL_ENV: level}}
    controller = RemoteController.options(**options).remote(topo.raw)
    ray.get(controller.ping.remote(), timeout=180)
    return TopologyHandle(topo.name, controller)


def _say_where_ray_is(address: str | None) -> None:
    """Log which Ray ``deploy`` connected this process to, having found none connected."""
    where = cluster_address()
    # Ray's private record of this process's node: its ``head`` is true when ray.init started it
    node = getattr(getattr(getattr(ray, "_private", None), "worker", None), "_global_node", None)
    started = address == "local" or bool(getattr(node, "head", False))
    if started:
        logger.warning("rayflume.deploy: no Ray was connected; started a local Ray at %s. It ends with "
                       "ray.shutdown() or with this Python process, and the topologies deployed on it with it. "
                       "Call ray.init(address=...) before deploy() to use a cluster", where)
    elif not address:
        logger.warning("rayflume.deploy: no Ray was connected; connected to the Ray running at %s. Call "
                       "ray.init(address=...) before deploy() to choose another", where)
    else:
        logger.info("rayflume.deploy: connected to the Ray cluster at %s", where)


def _clear_collectors_of(topology: Topology) -> None:
    """Empty the test collectors a topology about to start afresh writes into (see rayflume.testing)."""
    from rayflume import testing  # only topologies with test sinks need it

    names = testing.collectors_named_in(topology)
    if names:
        cleared = testing.clear_collectors(names)
        if cleared:
            logger.info("topology '%s': emptied collector(s) %s for the new run", topology.name, ", ".join(cleared))


def get(name: str) -> TopologyHandle | None:
    """The handle of the running topology ``name``, or None. Raises ClusterUnavailable when this
    process is not connected to Ray."""
    _require_connected(f"get('{name}')")
    try:
        return TopologyHandle(name)
    except ValueError:
        return None


def list_deployed() -> list[str]:
    """Names of the topologies deployed on the connected cluster (ClusterUnavailable when none is
    connected)."""
    _require_connected("list_deployed()")
    names = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") == NAMESPACE and entry["name"].endswith("/controller"):
            names.append(entry["name"].rsplit("/", 1)[0])
    return sorted(names)


def component_logs(name: str, component: str | None = None, lines: int = 100,
                   timeout_s: float = 30.0) -> dict[str, list[str] | str]:
    """Recent log lines of topology ``name``'s actors: ``{actor label: lines}``.

    ``component`` picks actors whose label (``source/gen``, ``agent/r0/channel/disk``) is it or
    ends with ``/<component>``; None takes all. An actor that does not answer maps to a string
    saying why. Lines come from each actor's memory (the last 1,000 since its last restart); the
    whole logs are Ray's worker logs on the actor's node. Raises ClusterUnavailable when this
    process is not connected to Ray.
    """
    _require_connected(f"component_logs('{name}')")
    prefix = f"{name}/"
    labels = sorted(e["name"][len(prefix):] for e in ray.util.list_named_actors(all_namespaces=True)
                    if e.get("namespace") == NAMESPACE and e["name"].startswith(prefix))
    if component is not None:
        labels = [lb for lb in labels if lb == component or lb.endswith(f"/{component}")]
    refs = {}
    for label in labels:
        actor = ray.get_actor(prefix + label, namespace=NAMESPACE)
        if hasattr(actor, "logs"):
            refs[label] = actor.logs.remote(lines)
    out: dict[str, list[str] | str] = {}
    for label, ref in refs.items():
        try:
            out[label] = ray.get(ref, timeout=timeout_s)
        except Exception as exc:
            out[label] = f"no answer ({type(exc).__name__}): the actor is down or restarting"
    return out


__all__: list[Any] = ["load", "loads", "deploy", "get", "list_deployed", "TopologyHandle", "ensure_ray",
                      "ClusterUnavailable", "TopologyNotRunning", "component_logs", "IDENTITY_COLUMNS",
                      "rate_column"]
