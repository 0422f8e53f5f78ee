"""The ``syslog_tcp`` and ``syslog_udp`` sources (Flume's ``syslogtcp`` and ``syslogudp``).

Both parse RFC 5424 and RFC 3164 into headers (see :mod:`rayflume.sources.syslog_parser` for
the header names, ``keep_fields`` and how malformed messages are kept with
``flume.syslog.status=Invalid``), a batch at a time: server threads only frame bytes into
messages; ``poll()`` parses everything queued (up to ``batch_size`` messages) in one go.

``syslog_tcp``: one thread per connection (at most ``max_connections``; more are refused and
counted). Framing is detected per message: octet-counted (``LEN SP MSG``, RFC 6587) or
newline/NUL-terminated. A message longer than ``max_event_size_bytes`` (Flume's ``eventSize``,
2500) is kept in pieces marked ``Incomplete``. Optional TLS (``ssl``, ``ssl_certfile``,
``ssl_keyfile``). Backpressure: when the hand-off queue (``buffer_bytes``) is full, connection
threads stop reading, so senders block in TCP.

``syslog_udp``: one datagram is one event, cut to ``max_event_size_bytes`` (marked
``Incomplete``); trailing ``\\n``/``\\r``/NUL are removed. UDP has no backpressure: when the
hand-off queue is full, datagrams are dropped and counted in ``DatagramDroppedCount`` and
``EventRejectedCount`` (so are those the kernel drops when its receive buffer overflows, which
nobody can count here).

Delivery: at most once from the sender's point of view, as in Flume. Messages read from a socket
live only in this process until their batch is committed; a crash of the source loses them.
Within a running source nothing received is dropped (TCP) and order is kept per connection.

Metrics beyond the runner's: ``BoundPort`` (the port actually bound, useful with ``port: 0``),
``OpenConnectionCount``, ``ConnectionAcceptedCount``, ``ConnectionRejectedCount``,
``TlsHandshakeFailCount``, ``InvalidEventCount``, ``IncompleteEventCount``,
``DatagramDroppedCount`` (UDP), and the client-limit counters of :mod:`rayflume.sources._limits`
(``ClientNotAllowedCount``, ``ClientLimitRejectedCount``, ``IdleTimeoutCount``,
``RequestTimeoutCount``; ``TlsClientRefusedCount``).
"""
from __future__ import annotations

import socket
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from rayflume.event import EventBatch
from rayflume.registry import register
from rayflume.sources._framing import HEAD, StreamFramer, strip_trailers
from rayflume.sources._limits import DEFAULT_REQUEST_TIMEOUT_S, ClientLimitsConfig, Watch, parse_networks
from rayflume.sources._network import CONNECTION_COUNTERS, HostnameCache, NetworkSourceConfig
from rayflume.sources._queued import Item, QueuedSource
from rayflume.sources._server import ServerThread, StreamSession, start_stream_server
from rayflume.sources._tls import TlsConfig
from rayflume.sources._udp import UdpReceiver
from rayflume.sources.syslog_parser import parse_keep_fields, parse_messages, raw_invalid

READ_BYTES = 1 << 16
SYSLOG_COUNTERS = CONNECTION_COUNTERS + ("InvalidEventCount", "IncompleteEventCount", "DatagramDroppedCount",
                                         "BoundPort")


@dataclass
class _Frames:
    """Messages framed by a server thread, not parsed yet, with their client's address."""

    frames: pa.BinaryArray
    status: np.ndarray | None
    ips: list[str] | str | None          # one address for a TCP connection, one per datagram for UDP
    hosts: list[str] | str | None

    def column(self, value, n: int) -> pa.Array | None:
        if value is None:
            return None
        if isinstance(value, str):
            return pa.repeat(pa.scalar(value, pa.string()), n)
        return pa.array(value, pa.string())


class _SyslogSource(QueuedSource):
    counter_names = SYSLOG_COUNTERS

    def __init__(self, name: str, config: SyslogTcpSourceConfig | SyslogUdpSourceConfig):
        super().__init__(name, config.batch_size, config.buffer_bytes)
        self.bind = config.bind
        self.port = config.port
        self.max_event_size_bytes = config.max_event_size_bytes
        self.keep_fields = parse_keep_fields(config.keep_fields)  # checked by the config
        self.client_ip_header = config.client_ip_header
        self.client_hostname_header = config.client_hostname_header
        self.hostnames = HostnameCache()
        self.bound_port: int | None = None

    def _client_host(self, ip: str) -> str | None:
        return self.hostnames.lookup(ip) if self.client_hostname_header else None

    def assemble(self, items: list[Item]) -> EventBatch:
        pieces: list[_Frames] = [item.payload for item in items]
        frames = [p.frames for p in pieces]
        frames = frames[0] if len(frames) == 1 else pa.concat_arrays(frames)
        n = len(frames)
        status = None
        if any(p.status is not None for p in pieces):
            status = np.concatenate([p.status if p.status is not None else np.zeros(len(p.frames), np.int8)
                                     for p in pieces])
        extra = []
        for header, attr in ((self.client_ip_header, "ips"), (self.client_hostname_header, "hosts")):
            if header:
                cols = [p.column(getattr(p, attr), len(p.frames)) for p in pieces]
                extra.append((header, cols[0] if len(cols) == 1 else pa.concat_arrays(cols)))
        try:
            result = parse_messages(frames, self.keep_fields, status, extra)
        except Exception:
            # The parser is meant never to raise; if it does, keep every byte rather than lose a batch.
            self.context.logger.exception("syslog source '%s': parsing %d messages failed; delivering them "
                                          "raw, marked Invalid", self.name, n)
            self.counters.add("InvalidEventCount", n)
            return raw_invalid(frames, extra)
        if result.counts["invalid"]:
            self.counters.add("InvalidEventCount", result.counts["invalid"])
        if result.counts["incomplete"]:
            self.counters.add("IncompleteEventCount", result.counts["incomplete"])
        return result.batch


class SyslogTcpSource(_SyslogSource):
    """Syslog over TCP (optionally TLS). See the module docstring. ``poll``/``ack`` run on the
    runner's thread; connection threads only frame and queue."""

    def __init__(self, name: str, config: SyslogTcpSourceConfig):
        super().__init__(name, config)
        self.tls = config.tls_loader(name)
        self.limits = config.limits(config.frame_timeout_s)
        self.max_connections = self.limits.max_connections
        self._server: ServerThread | None = None

    def open(self) -> None:
        self._server = start_stream_server(self, "syslog_tcp", self._session)

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()

    def _session(self, sock: socket.socket, address, watch: Watch) -> "_SyslogSession":
        return _SyslogSession(self, address[0], watch)

    def _queue(self, frames: pa.BinaryArray, status, ip: str, host: str | None) -> bool:
        """Queue frames in items of at most ``batch_size``, blocking while the queue is full
        (that is the backpressure). False once the source is stopping."""
        n = len(frames)
        step = self.batch_size
        for start in range(0, n, step):
            part = frames.slice(start, step) if n > step else frames
            part_status = None if status is None else status[start:start + step]
            item = Item(_Frames(part, part_status, ip, host), len(part), part.nbytes)
            if not self.handoff.put(item, block=True):
                return False
        return True


class _SyslogSession(StreamSession):
    """One syslog TCP connection: frames what arrives and queues it (blocking while the queue is
    full, which is the backpressure)."""

    def __init__(self, source: SyslogTcpSource, ip: str, watch: Watch):
        self.source, self.ip, self.watch = source, ip, watch
        self.host = source._client_host(ip)
        self.framer = StreamFramer(source.max_event_size_bytes)

    def received(self, data: bytes) -> bool:
        frames, status = self.framer.feed(data)
        self.watch.pending(self.framer.mid_message)
        return self.source._queue(frames, status, self.ip, self.host)

    def ended(self, eof: bool, by_limit: bool) -> None:
        if not by_limit:  # closed for a time limit: an incomplete message is not an event
            self.source._queue(*self.framer.flush(), self.ip, self.host)


class SyslogUdpSource(_SyslogSource):
    """Syslog over UDP: one datagram, one event. See the module docstring."""

    def __init__(self, name: str, config: SyslogUdpSourceConfig):
        super().__init__(name, config)
        self.allowed_clients = parse_networks(config.allowed_clients)
        self._receiver: UdpReceiver | None = None

    def open(self) -> None:
        self._receiver = UdpReceiver(self.bind, self.port, self._on_datagrams, f"syslog-udp-{self.name}",
                                     burst=min(self.batch_size, 1000), allowed=self.allowed_clients,
                                     counters=self.counters).start()
        self.set_bound_port(self._receiver.port)
        self.context.logger.info("syslog_udp source '%s' listening on %s:%d", self.name, self.bind,
                                 self.bound_port)

    def close(self) -> None:
        if self._receiver is not None:
            self._receiver.stop()

    def _on_datagrams(self, datagrams: list) -> None:
        size = self.max_event_size_bytes
        data = [d for d, _ in datagrams]
        status = None
        if any(len(d) > size for d in data):
            status = np.array([HEAD if len(d) > size else 0 for d in data], dtype=np.int8)
            data = [d[:size] for d in data]
        frames = strip_trailers(pa.array(data, pa.binary()))
        ips = [a[0] for _, a in datagrams] if (self.client_ip_header or self.client_hostname_header) else None
        hosts = [self._client_host(ip) for ip in ips] if self.client_hostname_header else None
        item = Item(_Frames(frames, status, ips, hosts), len(frames), frames.nbytes)
        if not self.handoff.put(item, block=False):
            self.counters.add("DatagramDroppedCount", len(frames))
            self.counters.add("EventRejectedCount", len(frames))


# -- configuration ---------------------------------------------------------------------------------

def _header_name(who: str, key: str, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError(f"{who}: `{key}` must be a header name, or left out")
    return value


class _SyslogConfig(NetworkSourceConfig):
    keep_fields: bool | str | list[str] = Field(
        "none", description="What stays in the body besides MSG: none, all, or a list of priority, version, "
                            "timestamp, hostname, app_name, proc_id, msg_id, structured_data (Flume's keepFields).")
    client_ip_header: str | None = Field(None, description="Header that receives the client's IP address.")
    client_hostname_header: str | None = Field(
        None, description="Header that receives the client's host name (reverse DNS, cached).")

    @field_validator("keep_fields")
    @classmethod
    def _keep(cls, v):
        try:
            parse_keep_fields(v)
        except ValueError as exc:
            raise ValueError(f"{cls.type_name} source: `keep_fields`: {exc}") from None
        return v

    @field_validator("client_ip_header", "client_hostname_header")
    @classmethod
    def _headers(cls, v, info):
        return _header_name(f"{cls.type_name} source", info.field_name, v)


@register("source", "syslog_tcp")
class SyslogTcpSourceConfig(_SyslogConfig, TlsConfig, ClientLimitsConfig):
    """``syslog_tcp`` (Flume's ``syslogtcp``; Flume's ``host`` is ``bind`` here, and defaults to
    127.0.0.1)."""

    max_event_size_bytes: int = Field(2500, gt=0, description="Longest message kept whole (Flume's eventSize); "
                                                              "longer ones are kept in pieces marked Incomplete.")
    frame_timeout_s: float | None = Field(
        DEFAULT_REQUEST_TIMEOUT_S, gt=0, description="A connection that keeps a message incomplete for this long "
                                                     "(a client sending a byte at a time) is closed (null: never).")

    def check(self) -> list[str]:
        """Whether this machine can load the TLS files; the source loads them on its node at start."""
        return self.tls_problems()

    def build(self, name: str) -> SyslogTcpSource:
        return SyslogTcpSource(name, self)


@register("source", "syslog_udp")
class SyslogUdpSourceConfig(_SyslogConfig):
    """``syslog_udp`` (Flume's ``syslogudp``): one datagram is one event; dropped (and counted)
    when the source cannot keep up."""

    max_event_size_bytes: int = Field(65535, gt=0, description="Longer datagrams are cut to this size and "
                                                               "marked Incomplete.")

    def build(self, name: str) -> SyslogUdpSource:
        return SyslogUdpSource(name, self)
