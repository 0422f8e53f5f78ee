"""The ``netcat`` source (Flume's ``netcat`` and ``netcatudp``): one event per line over TCP or UDP.

TCP (``protocol: tcp``, the default): every connection is read in chunks; each line ended by
``\\n`` becomes an event whose body is the line without the ``\\n`` (and without a ``\\r`` before
it, for telnet-style clients). With ``ack_every_event`` (default, as Flume) the source answers
``OK\\n`` for each event once the batch holding it was committed to every required channel: a
client that got its ``OK`` knows the line is in the channel. A line longer than
``max_line_length_bytes`` including its newline is not an event: the whole line is discarded,
counted in ``EventRejectedCount``, and answered ``FAILED: Event exceeds the maximum length (N
chars, including newline)``, in its place among the replies (Flume's message; Flume makes the rest
of such a line a new event, rayflume drops the line entirely). An unterminated last line is an
event when the client closes its side. A connection waits for the commit of what it sent before
reading more, so a full channel holds the client back (TCP backpressure) and replies keep the
order of lines. At most ``max_connections`` connections; more are refused and counted.

UDP (``protocol: udp``, Flume's ``netcatudp``): each datagram is split into lines (its last line
needs no newline); no replies. Over-long lines are dropped and counted; when the source's queue
is full whole datagrams are dropped and counted in ``DatagramDroppedCount`` (UDP has no
backpressure).

``remote_address_header`` (Flume's ``remoteAddressHeader``) puts the client's IP address into
that header. TCP may be served over TLS, optionally mutual (the ``ssl*`` keys, as on
``syslog_tcp``; Flume's netcat has no TLS).

Delivery: with ``ack_every_event`` over TCP, at least once for a client that resends what was not
acknowledged; otherwise at most once, like Flume (lines read live in this process until their
batch is committed).
"""
from __future__ import annotations

import socket
from typing import Literal

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from rayflume.event import EventBatch, empty_headers
from rayflume.registry import register
from rayflume.sources._framing import LineSplitter, batch_of, datagram_lines, headers_from_columns
from rayflume.sources._limits import DEFAULT_REQUEST_TIMEOUT_S, ClientLimitsConfig, Watch
from rayflume.sources._network import CONNECTION_COUNTERS, NetworkSourceConfig
from rayflume.sources._queued import Completion, Item, QueuedSource
from rayflume.sources._server import ServerThread, StreamSession, start_stream_server
from rayflume.sources._tls import TlsConfig
from rayflume.sources._udp import UdpReceiver

READ_BYTES = 1 << 16
OK = b"OK\n"
NETCAT_COUNTERS = CONNECTION_COUNTERS + ("DatagramDroppedCount", "BoundPort")


def failed_message(max_line_length: int) -> bytes:
    return f"FAILED: Event exceeds the maximum length ({max_line_length} chars, including newline)\n".encode()


class _Replies:
    """The replies to one chunk of lines, released in order as its lines are committed."""

    def __init__(self, rejected_after: list[int], ok: bytes, failed: bytes):
        self.rejected_after = rejected_after
        self.ok = ok
        self.failed = failed
        self._next_reject = 0
        self._done = 0

    def upto(self, accepted: int) -> bytes:
        """Replies for the accepted lines before ``accepted`` and the rejections among them."""
        parts = []
        while self._next_reject < len(self.rejected_after) and self.rejected_after[self._next_reject] <= accepted:
            before = self.rejected_after[self._next_reject]
            parts.append(self.ok * (before - self._done))
            parts.append(self.failed)
            self._done = before
            self._next_reject += 1
        parts.append(self.ok * (accepted - self._done))
        self._done = accepted
        return b"".join(parts)


class NetcatSource(QueuedSource):
    """Lines over TCP or UDP. See the module docstring. Connection threads frame, queue and (with
    ``ack_every_event``) wait for the commit before replying; ``poll``/``ack`` run on the
    runner's thread."""

    counter_names = NETCAT_COUNTERS

    def __init__(self, name: str, config: NetcatSourceConfig):
        super().__init__(name, config.batch_size, config.buffer_bytes)
        self.tls = config.tls_loader(name)
        self.bind = config.bind
        self.port = config.port
        self.protocol = config.protocol
        self.max_line_length_bytes = config.max_line_length_bytes
        self.ack_every_event = config.ack_every_event
        self.limits = config.limits(config.line_timeout_s)
        self.max_connections = self.limits.max_connections
        self.remote_address_header = config.remote_address_header
        self.failed_reply = failed_message(config.max_line_length_bytes)
        self.bound_port: int | None = None
        self._server: ServerThread | None = None
        self._receiver: UdpReceiver | None = None

    def open(self) -> None:
        if self.protocol == "tcp":
            self._server = start_stream_server(self, "netcat", self._session)
            return
        self._receiver = UdpReceiver(self.bind, self.port, self._on_datagrams, f"netcat-udp-{self.name}",
                                     burst=min(self.batch_size, 1000), allowed=self.limits.allowed,
                                     counters=self.counters).start()
        self.set_bound_port(self._receiver.port)
        self.context.logger.info("netcat source '%s' listening on udp %s:%d", self.name, self.bind, self.bound_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
        if self._receiver is not None:
            self._receiver.stop()

    # -- TCP --------------------------------------------------------------------------------------
    def _session(self, sock: socket.socket, address, watch: Watch) -> "_NetcatSession":
        return _NetcatSession(self, sock, address[0], watch)

    def _deliver(self, sock: socket.socket, lines: pa.BinaryArray, rejected_after: list[int], ip: str) -> bool:
        """Queue ``lines`` in items of at most ``batch_size``; with ``ack_every_event`` wait for
        each item's commit in turn and send its ``OK``s (with any ``FAILED`` among them) in line
        order. False when the connection should end."""
        if rejected_after:
            self.counters.add("EventRejectedCount", len(rejected_after))
        n = len(lines)
        replies = _Replies(rejected_after, OK if self.ack_every_event else b"", self.failed_reply)
        items: list[tuple[int, Completion | None]] = []
        step = self.batch_size
        for start in range(0, n, step):
            part = lines.slice(start, step) if n > step else lines
            completion = Completion() if self.ack_every_event else None
            if not self.handoff.put(Item((part, ip), len(part), part.nbytes, completion), block=True):
                return False
            items.append((start + len(part), completion))
        if not self.ack_every_event:
            return self._send(sock, replies.upto(n))
        if not items:
            return self._send(sock, replies.upto(0))
        for end, completion in items:
            while not completion.wait(0.5):
                if self._stopped.is_set():
                    return False
            if not completion.succeeded:
                return False  # stopping: the client sees the connection close without these OKs
            if not self._send(sock, replies.upto(end)):
                return False
        return True

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> bool:
        if not data:
            return True
        try:
            sock.sendall(data)
            return True
        except OSError:
            return False

    # -- UDP --------------------------------------------------------------------------------------
    def _on_datagrams(self, datagrams: list) -> None:
        pieces, ips, rejected = [], [], 0
        for data, address in datagrams:
            lines, bad = datagram_lines(data, self.max_line_length_bytes)
            rejected += bad
            if len(lines):
                pieces.append(lines)
                ips.append((address[0], len(lines)))
        if rejected:
            self.counters.add("EventRejectedCount", rejected)
        if not pieces:
            return
        lines = pieces[0] if len(pieces) == 1 else pa.concat_arrays(pieces)
        addresses = [ip for ip, count in ips for _ in range(count)] if self.remote_address_header else None
        item = Item((lines, addresses), len(lines), lines.nbytes)
        if not self.handoff.put(item, block=False):
            self.counters.add("DatagramDroppedCount", len(datagrams))
            self.counters.add("EventRejectedCount", len(lines))

    # -- runner side ------------------------------------------------------------------------------
    def assemble(self, items: list[Item]) -> EventBatch:
        bodies = [item.payload[0] for item in items]
        body = bodies[0] if len(bodies) == 1 else pa.concat_arrays(bodies)
        if not self.remote_address_header:
            return batch_of(empty_headers(len(body)), body)
        columns = []
        for (lines, address) in (item.payload for item in items):
            if isinstance(address, str):
                columns.append(pa.repeat(pa.scalar(address, pa.string()), len(lines)))
            else:
                columns.append(pa.array(address, pa.string()))
        values = columns[0] if len(columns) == 1 else pa.concat_arrays(columns)
        return batch_of(headers_from_columns(len(body), [(self.remote_address_header, values)]), body)


class _NetcatSession(StreamSession):
    """One netcat TCP connection: splits lines, queues them and (``ack_every_event``) replies."""

    def __init__(self, source: NetcatSource, sock: socket.socket, ip: str, watch: Watch):
        self.source, self.sock, self.ip, self.watch = source, sock, ip, watch
        self.splitter = LineSplitter(source.max_line_length_bytes)

    def received(self, data: bytes) -> bool:
        lines, rejected = self.splitter.feed(data)
        self.watch.pending(self.splitter.mid_line)
        return self.source._deliver(self.sock, lines, rejected, self.ip)

    def ended(self, eof: bool, by_limit: bool) -> None:
        # after a reset what was not acknowledged is the client's to resend; an incomplete line cut
        # by a time limit is not an event
        if eof and not by_limit:
            lines, rejected = self.splitter.flush()
            self.source._deliver(self.sock, lines, rejected, self.ip)


@register("source", "netcat")
class NetcatSourceConfig(NetworkSourceConfig, TlsConfig, ClientLimitsConfig):
    """``netcat`` (Flume's ``netcat``, and ``netcatudp`` with ``protocol: udp``)."""

    protocol: Literal["tcp", "udp"] = Field("tcp", description="tcp (Flume's netcat) or udp (netcatudp).")
    max_line_length_bytes: int = Field(512, ge=2, description="Longest line including its newline "
                                                              "(Flume's max-line-length); longer: FAILED.")
    ack_every_event: bool = Field(True, description="TCP: reply OK per event once committed (Flume's "
                                                    "ack-every-event).")
    line_timeout_s: float | None = Field(
        DEFAULT_REQUEST_TIMEOUT_S, gt=0, description="TCP: a connection that keeps a line incomplete for this long "
                                                     "(a client sending a byte at a time) is closed (null: never).")
    remote_address_header: str | None = Field(None, description="Header that receives the client's IP "
                                                                "address (Flume's remoteAddressHeader).")

    @field_validator("remote_address_header")
    @classmethod
    def _header(cls, v):
        if v is not None and not v.strip():
            raise ValueError("netcat source: `remote_address_header` must be a header name, or left out")
        return v

    @model_validator(mode="after")
    def _tls_over_tcp(self):
        if self.ssl and self.protocol == "udp":
            raise ValueError("netcat source: `ssl` needs protocol: tcp (there is no TLS over UDP here); "
                             "remove the ssl keys or use TCP")
        return self

    def check(self) -> list[str]:
        """Whether this machine can load the TLS files; the source loads them on its node at start."""
        return self.tls_problems()

    def build(self, name: str) -> NetcatSource:
        return NetcatSource(name, self)
