"""Flume-shaped metrics: per component counters, exported to Ray's metrics and served as JSON.

Every component reports a flat dict of counters. ``flume_shape`` turns a topology's reports
into Flume's JSON (``{"SOURCE.r1": {"EventReceivedCount": "10", "Type": "SOURCE", ...}}``, every
value a string). ``RayExporter`` mirrors the counters into ``ray.util.metrics`` so they reach
Prometheus and the Ray dashboard: running totals (``...Count``, ``...Fail``) as Ray Counters, so
that Prometheus' ``rate()`` works on them, and levels (sizes, fills, ports) as Gauges.

``MetricsServer`` is the controller's HTTP endpoint: ``/metrics`` (Flume's JSON, or Prometheus' text
format with ``?format=prometheus``) and ``/health``, built to survive hostile or careless clients
(bounded handlers, a deadline per request, results cached so that a flood of requests costs one
collection per second, an optional bearer token).
"""
from __future__ import annotations

import hmac
import io
import json
import logging
import math
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger("rayflume.metrics")


def flume_shape(reports: dict[tuple[str, str], dict]) -> dict[str, dict[str, str]]:
    """``{(TYPE, name): counters}`` -> Flume's JSON shape with string values."""
    out = {}
    for (kind, name), counters in sorted(reports.items()):
        entry = {k: ("" if v is None else str(v)) for k, v in counters.items()}
        entry["Type"] = kind
        entry.setdefault("StartTime", "0")
        entry.setdefault("StopTime", "0")
        out[f"{kind}.{name}"] = entry
    return out


# A source's per-header-value counts (``Volume.<value>``, see rayflume._private.volume): read
# through the hourly volume store, never exported (one series per header value would be unbounded
# label-like cardinality hidden in metric names).
VOLUME_PREFIX = "Volume."


def exported(key, export: frozenset | None) -> bool:
    """Whether counter ``key`` goes to Prometheus (the endpoint and Ray's metrics) under the
    topology's ``metrics.export`` list ``export`` (None: every counter but ``Volume.*``)."""
    if not isinstance(key, str) or key.startswith(VOLUME_PREFIX):
        return False
    return export is None or key in export


def filter_metrics(metrics: dict, export: frozenset | None) -> dict:
    """Flume's JSON shape with only the exported counters (and each component's ``Type``); a
    component left with no counter is left out. The controller's own entries (``Type``
    CONTROLLER, e.g. its alert gauges) are kept whole: they are not component counters."""
    out = {}
    for component, counters in metrics.items():
        if not isinstance(counters, dict):
            continue
        if counters.get("Type") == "CONTROLLER":
            out[component] = counters
            continue
        kept = {k: v for k, v in counters.items() if exported(k, export)}
        if kept:
            out[component] = {**kept, **({"Type": counters["Type"]} if "Type" in counters else {})}
    return out


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# Flume counters named ...Count that are levels, going down as well as up: gauges, not counters
_GAUGE_COUNTS = frozenset({"OpenConnectionCount", "ObjectCount", "SegmentCount"})


def is_running_total(key: str) -> bool:
    """Whether the counter ``key`` only ever grows while its component runs (Flume's ``...Count``
    counters and its ``...Fail`` tallies such as ``ChannelWriteFail``), as opposed to a level such
    as ``ChannelSize``, ``ChannelFillPercentage``, ``BoundPort`` or ``OpenConnectionCount``."""
    return (key.endswith("Count") and key not in _GAUGE_COUNTS) or key.endswith("Fail")


class RunningTotals:
    """Turns successive readings of running totals into the increments a Prometheus counter takes.

    ``increment(key, value)`` returns how much ``key`` grew since its previous reading, and is never
    negative. A reading below the previous one (the component re-read its total from a durable
    record, or started counting again after a restart) re-bases: it returns 0 and counts on from the
    new reading. A drop is not taken as a reset to zero, because totals here are mostly restored
    from the channels' ledgers rather than restarted, and counting the restored total again would
    count the same events twice; what a true reset counted before the next reading is left out.

    The first reading of a key counts from zero, unless ``restored``: a restarted component reloads
    totals that its previous process exported already, so its first readings are only baselines.
    """

    def __init__(self, restored: bool = False):
        self.restored = restored
        self._last: dict[str, float] = {}

    def increment(self, key: str, value: float) -> float:
        previous = self._last.get(key)
        self._last[key] = value
        if previous is None:
            return 0 if self.restored or value <= 0 else value
        return value - previous if value > previous else 0


def _restarted_actor() -> bool:
    """Whether this process is a Ray actor restarted after its process died (False elsewhere)."""
    try:
        import warnings

        import ray

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ray's accessor is deprecated; the warning is noise
            return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # not in an actor, or Ray not initialised: nothing was exported before
        return False


class RayExporter:
    """Mirrors a component's numeric counters into Ray metrics ``rayflume_<counter in snake_case>``
    tagged with topology, tier and instance ("" in a topology without tiers), kind and component,
    so that the instances of a tier are series of their own.

    Running totals (:func:`is_running_total`) become ``ray.util.metrics.Counter`` s, increased by
    what they grew since the last export (see :class:`RunningTotals`: never decreased); every other
    number becomes a ``Gauge`` set to its value. ``restored`` (default: whether this is a restarted
    Ray actor) makes the first export a baseline only. Outside a Ray worker nothing is exported.
    ``export`` (the topology's ``metrics.export``; None: all) names the only counters exported;
    ``Volume.*`` counters are never exported (see :func:`exported`).
    """

    def __init__(self, topology: str, kind: str, name: str, scope: str = "", restored: bool | None = None,
                 export=None):
        self.exported_counters = frozenset(export) if export is not None else None
        tier, _, instance = scope.partition("/")
        self.tags = {"topology": topology, "tier": tier, "instance": instance, "kind": kind, "component": name}
        self._metrics: dict[str, object] = {}
        self._totals = RunningTotals(_restarted_actor() if restored is None else restored)

    def metric_types(self) -> dict[str, str]:
        """``{counter: "counter" | "gauge"}``: the Ray metric type each exported counter got."""
        from ray.util.metrics import Counter

        return {key: "counter" if isinstance(metric, Counter) else "gauge" for key, metric in self._metrics.items()}

    def export(self, counters: dict) -> None:
        try:
            from ray.util.metrics import Counter, Gauge
        except ImportError:  # pragma: no cover - ray always ships it
            return
        # a copy: the component's threads may add counters meanwhile (a new header value, say)
        for key, value in list(counters.items()):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                continue
            if not exported(key, self.exported_counters):
                continue
            total = is_running_total(key)
            metric = self._metrics.get(key)
            if metric is None:
                kind_of = Counter if total else Gauge
                try:
                    metric = kind_of(prometheus_name(key), description=f"Flume's {key}",
                                     tag_keys=tuple(self.tags))
                except Exception:  # metrics unavailable (e.g. outside a Ray worker)
                    return
                self._metrics[key] = metric
            if total:
                grown = self._totals.increment(key, value)
                if grown > 0:  # Ray refuses an increment of 0
                    metric.inc(grown, tags=self.tags)
            else:
                metric.set(value, tags=self.tags)


# -- Prometheus text exposition -------------------------------------------------------------------
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NUMBER = re.compile(r"^-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$")


def _number(value) -> str | None:
    """A sample value in Prometheus' spelling, or None for what is not a finite number."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        text = value.strip()
        try:
            return str(int(text)) if re.fullmatch(r"-?\d+", text) else repr(float(text))
        except (ValueError, OverflowError):
            return None
    return None


def _label_value(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus_name(counter: str) -> str:
    """``EventReceivedCount`` -> ``rayflume_event_received_count``."""
    name = re.sub(r"[^a-zA-Z0-9_]", "_", _snake(counter))
    return f"rayflume_{name}"


def prometheus_text(metrics: dict, labels: dict | None = None) -> str:
    """Flume's JSON shape -> Prometheus' text exposition format (0.0.4).

    Every numeric value becomes a sample ``rayflume_<counter in snake_case>{component="SOURCE.r1",
    kind="SOURCE", <labels>} <value>``; non-numeric values (``Type``, empty strings) are left out.
    Samples are grouped per metric, each group after its ``# TYPE`` line: ``counter`` for running
    totals (:func:`is_running_total`: Flume's ``...Count`` and ``...Fail`` counters), ``gauge`` for
    the rest (``ChannelSize``, ``OpenConnectionCount``, ``StartTime``, ``Restarts``...).
    """
    families: dict[str, tuple[str, str, list[str]]] = {}
    for component, counters in sorted(metrics.items()):
        if not isinstance(counters, dict):
            continue
        kind = counters.get("Type") or str(component).split(".", 1)[0]
        tags = {**(labels or {}), "component": component, "kind": kind}
        label_text = ",".join(f'{k}="{_label_value(v)}"' for k, v in tags.items())
        for key, value in counters.items():
            number = _number(value)
            if number is None or key == "Type":
                continue
            name = prometheus_name(str(key))
            kind_of = "counter" if is_running_total(str(key)) else "gauge"
            family = families.setdefault(name, (kind_of, str(key), []))
            family[2].append(f"{name}{{{label_text}}} {number}")
    lines = []
    for name in sorted(families):
        kind_of, key, samples = families[name]
        lines.append(f"# HELP {name} Flume's {key}")
        lines.append(f"# TYPE {name} {kind_of}")
        lines.extend(samples)
    return "\n".join(lines) + "\n" if lines else ""


# -- the bearer token -------------------------------------------------------------------------------
ENV_REF = re.compile(r"^\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}$")
MAX_TOKEN_FILE_BYTES = 64 << 10


class TokenUnavailable(ValueError):
    """The metrics token cannot be read where the endpoint runs. The message names the key and what
    to do; it never holds the token."""


def resolve_token(token: str | None, token_file: str | None) -> str | None:
    """The bearer token the endpoint requires (None: no token), from ``metrics.token`` (a literal, or
    ``${env:NAME}``: the environment variable NAME) or ``metrics.token_file``. Read where this runs,
    that is on the controller's node; surrounding whitespace is ignored."""
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as f:
                text = f.read(MAX_TOKEN_FILE_BYTES + 1)
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or type(exc).__name__
            raise TokenUnavailable(f"metrics.token_file: cannot read {token_file!r} on the node that runs the "
                                   f"controller ({why}); put the token file there, readable by Ray, or fix "
                                   f"metrics.token_file") from None
        if len(text) > MAX_TOKEN_FILE_BYTES:
            raise TokenUnavailable(f"metrics.token_file: {token_file!r} is larger than {MAX_TOKEN_FILE_BYTES} "
                                   f"bytes; it should hold the token only")
        if not text.strip():
            raise TokenUnavailable(f"metrics.token_file: {token_file!r} is empty; write the token into it")
        return text.strip()
    if token is None:
        return None
    ref = ENV_REF.match(token.strip())
    if ref:
        value = os.environ.get(ref.group(1), "").strip()
        if not value:
            raise TokenUnavailable(f"metrics.token: the environment variable {ref.group(1)} is not set (or is "
                                   f"empty) where the controller runs; set it in the environment of the Ray node "
                                   f"that runs the controller, or use metrics.token_file")
        return value
    return token.strip()


# -- the cache --------------------------------------------------------------------------------------
class _Result:
    """One call's outcome: ``value`` or ``error``, obtained at ``at`` (monotonic), and the bodies
    rendered from it (each rendered once, whatever the number of requests)."""

    def __init__(self, value=None, error: BaseException | None = None):
        self.value, self.error, self.at = value, error, time.monotonic()
        self._bodies: dict[str, bytes] = {}

    def body(self, fmt: str, render: Callable[[object], bytes]) -> bytes:
        out = self._bodies.get(fmt)
        if out is None:  # two threads may render it at once: the same bytes either way
            out = self._bodies[fmt] = render(self.value)
        return out


class _Cached:
    """``fn()``, called at most once per ``max_age_s`` and one call at a time, in a thread of its own.

    A request that finds the last result fresh gets it at once. Otherwise it starts a refresh (unless
    one is in flight) and waits for that one refresh, up to ``wait_s``: every request arriving
    meanwhile waits for the same call. A refresh starts ``max_age_s`` after the previous one ended,
    so ``fn`` runs at most once per ``max_age_s`` however many requests arrive.
    """

    def __init__(self, fn: Callable[[], object], max_age_s: float, name: str):
        self._fn = fn
        self.max_age_s = max_age_s
        self._name = name
        self._cond = threading.Condition()
        self._result: _Result | None = None
        self._refreshing = False
        self._refreshes = 0
        self.calls = 0

    def get(self, wait_s: float) -> _Result | None:
        """The fresh result; or, when the refresh takes longer than ``wait_s``, the previous one (its
        ``at`` says how old) or None if there never was one."""
        with self._cond:
            result = self._result
            if result is not None and time.monotonic() - result.at < self.max_age_s:
                return result
            if not self._refreshing:
                self._refreshing = True
                self.calls += 1
                threading.Thread(target=self._refresh, name=f"rayflume-metrics-{self._name}",
                                 daemon=True).start()
            seen = self._refreshes
            self._cond.wait_for(lambda: self._refreshes != seen, timeout=wait_s)
            return self._result

    def _refresh(self) -> None:
        result = _Result(error=RuntimeError("not collected"))
        try:
            result = _Result(self._fn())
        except Exception as exc:
            logger.info("metrics endpoint: %s failed: %s: %s", self._name, type(exc).__name__, exc)
            result = _Result(error=exc)
        finally:
            with self._cond:
                self._result = result
                self._refreshing = False
                self._refreshes += 1
                self._cond.notify_all()


# -- the server -------------------------------------------------------------------------------------
class _DeadlineReader(io.RawIOBase):
    """Reads a socket until ``deadline`` (monotonic) in all: a client sending a byte a second
    (slowloris) is cut off there, however often its bytes come."""

    def __init__(self, sock: socket.socket, deadline: float):
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _BoundedHTTPServer(HTTPServer):
    """An HTTP server with at most ``max_handlers`` requests in hand at once.

    The accept loop takes a handler slot *before* it accepts a connection: while every slot is
    busy, new connections wait in the kernel's listen backlog (``request_queue_size``), not in
    this process, so a flood costs neither threads nor file descriptors; they are accepted as slots
    free up (each is held at most about three request timeouts). Beyond the backlog, the kernel
    drops the connection attempt and the client retries it.
    """

    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, address, handler, max_handlers: int):
        self._slots = threading.BoundedSemaphore(max_handlers)
        self._pool = ThreadPoolExecutor(max_handlers, thread_name_prefix="rayflume-metrics-handler")
        self._closing = threading.Event()
        super().__init__(address, handler)
        self.socket.settimeout(1.0)  # an accept never blocks the loop for long

    def get_request(self):
        while not self._slots.acquire(timeout=0.2):
            if self._closing.is_set():
                raise OSError("metrics endpoint closing")
        try:
            return super().get_request()
        except BaseException:
            self._slots.release()
            raise

    def process_request(self, request, client_address) -> None:
        try:
            self._pool.submit(self._handle, request, client_address)
        except RuntimeError:  # closing: the pool takes no more work
            self.shutdown_request(request)
            self._slots.release()

    def _handle(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        # a client that went away mid-request, mostly: not worth a traceback on stderr
        logger.debug("metrics http: request from %s failed", client_address, exc_info=True)

    def close(self) -> None:
        self._closing.set()
        self.shutdown()
        self.server_close()
        self._pool.shutdown(wait=False)  # requests in hand finish (each bounded by its timeouts)


class MetricsServer:
    """Serves the topology's metrics on ``host:port`` (port 0 picks a free one); only GET is allowed
    (Flume rejects TRACE and OPTIONS too).

    * ``GET /metrics``: Flume's JSON. ``GET /metrics?format=prometheus``, or ``GET /metrics`` with an
      ``Accept`` header naming ``text/plain`` (as Prometheus' scraper sends) and not
      ``application/json``: Prometheus' text format (see :func:`prometheus_text`).
    * ``GET /health``: 200 ``{"status": "UP"}`` when ``health()`` names no problem, else 503
      ``{"status": "DOWN", "unhealthy": [names], "reasons": {name: why}}``. ``health()`` returns the
      names of the components that are not running, or a mapping of those names to why. 404
      when no ``health`` callable was given.

    Against hostile or careless clients:

    * at most ``max_handlers`` requests are handled at once; further connections wait in the listen
      backlog until a handler is free (see :class:`_BoundedHTTPServer`);
    * a request (request line and headers) must arrive within ``request_timeout_s`` of the
      connection, in all: a slow client is disconnected then. Writing the response has its own
      ``request_timeout_s``. One request per connection (HTTP/1.0);
    * ``collect()`` and ``health()`` are each called at most once per ``refresh_interval_s``, in a
      thread of their own, one call at a time; requests meanwhile share the last result. A request
      that finds it stale waits up to ``request_timeout_s`` for the refresh, then gets the previous
      result (header ``X-Rayflume-Metrics-Age``) or 503 when there is none yet;
    * with ``token`` set, every request needs ``Authorization: Bearer <token>`` (compared in
      constant time), else 401. The token is never logged.
    """

    def __init__(self, host: str, port: int, collect: Callable[[], dict],
                 health: Callable[[], object] | None = None, *, token: str | None = None,
                 max_handlers: int = 16, request_timeout_s: float = 5.0, refresh_interval_s: float = 1.0,
                 labels: dict | None = None, export=None):
        self.request_timeout_s = request_timeout_s
        # the topology's metrics.export (None: every counter): what both formats serve
        self.exported_counters = frozenset(export) if export is not None else None
        self.labels = dict(labels or {})
        self.metrics_cache = _Cached(collect, refresh_interval_s, "collect")
        self.health_cache = _Cached(health, refresh_interval_s, "health") if health is not None else None
        self._token = token.encode("utf-8") if token else None
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = request_timeout_s
            server_version = "rayflume-metrics"
            sys_version = ""

            def setup(self):
                super().setup()
                # the whole request line and headers within request_timeout_s, not per read
                self.rfile.close()
                self.rfile = io.BufferedReader(
                    _DeadlineReader(self.connection, time.monotonic() + request_timeout_s))

            def do_GET(self):  # noqa: N802 - http.server's naming
                self.connection.settimeout(request_timeout_s)  # for writing the response
                if not server._authorized(self.headers.get("Authorization")):
                    self._send(401, b'{"error": "unauthorized: send Authorization: Bearer <token>"}',
                               "application/json", {"WWW-Authenticate": 'Bearer realm="rayflume-metrics"'})
                    return
                url = urlsplit(self.path)
                path = url.path.rstrip("/")
                if path in ("", "/metrics"):
                    fmt = server._format(parse_qs(url.query).get("format"), self.headers.get("Accept", ""))
                    if fmt is None:
                        self._send(400, b'{"error": "format must be json or prometheus"}', "application/json")
                    else:
                        self._send(*server._metrics_response(fmt))
                elif path == "/health":
                    self._send(*server._health_response())
                else:
                    self._send(404, b'{"error": "not found; try /metrics, /metrics?format=prometheus or '
                                    b'/health"}', "application/json")

            def _send(self, code: int, body: bytes, content_type: str, headers: dict | None = None):
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def _refuse(self):
                self.send_error(405, "only GET is allowed")

            do_POST = do_PUT = do_DELETE = do_PATCH = do_TRACE = do_OPTIONS = _refuse

            def log_message(self, fmt, *args):
                logger.debug("metrics http: " + fmt, *args)

        self.server = _BoundedHTTPServer((host, port), Handler, max_handlers)
        self.host, self.port = self.server.server_address[:2]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="rayflume-metrics", daemon=True)
        self._thread.start()

    # -- request handling (in handler threads) ----------------------------------------------------
    def _authorized(self, header: str | None) -> bool:
        if self._token is None:
            return True
        scheme, _, given = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("utf-8", "replace"), self._token)

    @staticmethod
    def _format(asked: list[str] | None, accept: str) -> str | None:
        if asked:
            fmt = asked[-1].strip().lower()
            return fmt if fmt in ("json", "prometheus") else None
        accept = accept.lower()
        if "text/plain" in accept and "application/json" not in accept:
            return "prometheus"
        return "json"

    def _metrics_response(self, fmt: str) -> tuple:
        result = self.metrics_cache.get(self.request_timeout_s)
        if result is None:
            return (503, b'{"error": "metrics are being collected; retry in a second"}', "application/json",
                    {"Retry-After": "1"})
        if result.error is not None:
            body = json.dumps({"error": f"metrics unavailable: {type(result.error).__name__}: {result.error}"})
            return 500, body.encode(), "application/json"
        try:
            if fmt == "prometheus":
                body = result.body(fmt, lambda v: prometheus_text(filter_metrics(v, self.exported_counters),
                                                                  self.labels).encode())
                content_type = PROMETHEUS_CONTENT_TYPE
            else:
                body = result.body(fmt, lambda v: json.dumps(filter_metrics(v, self.exported_counters)).encode())
                content_type = "application/json"
        except Exception as exc:
            logger.info("metrics endpoint: cannot render metrics as %s: %s", fmt, exc)
            return 500, json.dumps({"error": f"metrics unrenderable: {type(exc).__name__}"}).encode(), \
                "application/json"
        return 200, body, content_type, self._age(result)

    def _health_response(self) -> tuple:
        if self.health_cache is None:
            return 404, b'{"error": "no health information here"}', "application/json"
        result = self.health_cache.get(self.request_timeout_s)
        if result is None:
            return (503, b'{"status": "UNKNOWN", "error": "health is being checked; retry in a second"}',
                    "application/json", {"Retry-After": "1"})
        if result.error is not None:
            body = {"status": "UNKNOWN", "error": f"health unavailable: {type(result.error).__name__}"}
            return 503, json.dumps(body).encode(), "application/json"
        problems = result.value or []
        reasons = ({str(k): ("" if v is None else str(v)) for k, v in problems.items()}
                   if isinstance(problems, dict) else {})
        names = sorted(str(p) for p in problems)
        if not names:
            return 200, b'{"status": "UP"}', "application/json", self._age(result)
        body = {"status": "DOWN", "unhealthy": names, "reasons": reasons}
        return 503, json.dumps(body).encode(), "application/json", self._age(result)

    def _age(self, result: _Result) -> dict:
        age = time.monotonic() - result.at
        return {"X-Rayflume-Metrics-Age": f"{age:.1f}"} if age >= self.metrics_cache.max_age_s else {}

    def close(self) -> None:
        self.server.close()
        self._thread.join(5)
