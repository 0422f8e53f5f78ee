"""The ``logger`` sink: logs every event at INFO, for debugging (Flume's ``LoggerSink``).

Each event becomes one record on the ``rayflume.sink.logger`` logger, in Flume's shape::

    out: Event: { headers:{k1=v1, k2=v2} body: 48 65 6C 6C 6F  Hello }

The body shows its first ``max_bytes_to_log`` bytes as hex and as ASCII ('.' for bytes that are not
printable). Bodies are cut with an Arrow kernel before they reach Python, so a huge body costs no
more than a short one; when INFO is disabled for the logger no event is formatted at all. This sink
loops over events in Python and is meant for low rates. ``write`` returns once the records are
handed to ``logging``: the events are as delivered as the log handlers make them.
"""
from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from rayflume.config_base import SinkConfig
from rayflume.event import EventBatch
from rayflume.registry import register
from rayflume.sinks.base import Sink

LOGGER_NAME = "rayflume.sink.logger"

_PRINTABLE = bytes(b if 0x20 <= b < 0x7F else ord(".") for b in range(256))


def dump_body(prefix: bytes, width: int) -> str:
    """Flume's ``EventHelper.dumpEvent`` body: hex bytes, padded to ``width`` bytes, then ASCII."""
    if not prefix:
        return ""
    hexed = prefix.hex(" ").upper()
    pad = " " * (3 * max(width, len(prefix)) - 1 - len(hexed))
    return f" {hexed}{pad}  {prefix.translate(_PRINTABLE).decode('ascii')}"


def format_headers(pairs) -> str:
    """A header map as Java's ``Map.toString()`` prints it: ``{k1=v1, k2=v2}``."""
    if not pairs:
        return "{}"
    return "{" + ", ".join(f"{k}={v}" for k, v in pairs) + "}"


class LoggerSink(Sink):
    """Logs each event at INFO. Called from one thread at a time (see the base class)."""

    def __init__(self, name: str, max_bytes_to_log: int = 16, batch_size: int = 100,
                 logger: logging.Logger | None = None):
        self.name = name
        self.max_bytes_to_log = max_bytes_to_log
        self.batch_size = batch_size
        self.log = logger or logging.getLogger(LOGGER_NAME)

    def write(self, batch: EventBatch) -> None:
        n = len(batch)
        context = getattr(self, "context", None)
        if context is not None:
            context.count("LoggedEventCount", n)
        if n == 0 or not self.log.isEnabledFor(logging.INFO):
            return
        if self.max_bytes_to_log > 0:
            body = batch.body
            if body.null_count:
                body = pc.fill_null(body, pa.scalar(b"", pa.binary()))
            prefixes = pc.binary_slice(body, 0, self.max_bytes_to_log).to_pylist()
        else:
            prefixes = [b""] * n
        headers = batch.headers.to_pylist()
        width = self.max_bytes_to_log
        for pairs, prefix in zip(headers, prefixes):
            self.log.info("%s: Event: { headers:%s body:%s }", self.name, format_headers(pairs),
                          dump_body(prefix, width))


@register("sink", "logger")
class LoggerSinkConfig(SinkConfig):
    """``logger``: logs every event at INFO on the ``rayflume.sink.logger`` logger; for debugging."""

    max_bytes_to_log: int = Field(16, ge=0, description="Bytes of each body shown (Flume's maxBytesToLog).")
    batch_size: int = Field(100, gt=0, description="Most events taken in one transaction.")

    def build(self, name: str) -> LoggerSink:
        return LoggerSink(name, max_bytes_to_log=self.max_bytes_to_log, batch_size=self.batch_size)
