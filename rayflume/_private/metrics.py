"""Flume-shaped metrics: per component counters, exported to Ray's metrics and served as JSON.

Every component reports a flat dict of counters. ``flume_shape`` turns a topology's reports
into Flume's JSON (``{"SOURCE.r1": {"EventReceivedCount": "10", "Type": "SOURCE", ...}}``, every
value a string). ``RayExporter`` mirrors the counters into ``ray.util.metrics`` gauges so they
reach Prometheus and the Ray dashboard.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

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


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class RayExporter:
    """Mirrors numeric counters into Ray gauges ``rayflume_<counter>`` tagged by component."""

    def __init__(self, topology: str, kind: str, name: str):
        self.tags = {"topology": topology, "kind": kind, "component": name}
        self._gauges: dict[str, object] = {}

    def export(self, counters: dict) -> None:
        try:
            from ray.util.metrics import Gauge
        except ImportError:  # pragma: no cover - ray always ships it
            return
        for key, value in counters.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            gauge = self._gauges.get(key)
            if gauge is None:
                try:
                    gauge = Gauge(f"rayflume_{_snake(key)}", description=f"Flume counter {key}",
                                  tag_keys=tuple(self.tags))
                except Exception:  # metrics unavailable (e.g. outside a Ray worker)
                    return
                self._gauges[key] = gauge
            gauge.set(value, tags=self.tags)


class MetricsServer:
    """Serves ``GET /metrics`` as Flume's JSON on ``host:port`` (port 0 picks a free one).

    Only GET is allowed (Flume rejects TRACE and OPTIONS too).
    """

    def __init__(self, host: str, port: int, collect: Callable[[], dict]):
        collect_fn = collect

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                if self.path.rstrip("/") not in ("/metrics", ""):
                    self.send_error(404, "try /metrics")
                    return
                try:
                    body = json.dumps(collect_fn()).encode()
                except Exception as exc:
                    self.send_error(500, f"metrics unavailable: {exc}")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _refuse(self):
                self.send_error(405, "only GET is allowed")

            do_POST = do_PUT = do_DELETE = do_TRACE = do_OPTIONS = _refuse

            def log_message(self, fmt, *args):
                logger.debug("metrics http: " + fmt, *args)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.host, self.port = self.server.server_address[:2]
        self._thread = threading.Thread(target=self.server.serve_forever, name="rayflume-metrics",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
