"""Send events to a Flume or rayflume ``avro`` or ``thrift`` source without Ray: Flume's RpcClient
for Python.

    from rayflume.client import AvroClient

    with AvroClient("collector.example", 41414) as client:
        client.append_batch([b"one line", b"another"])               # bodies
        client.append_batch([Event(b"x", {"host": "web1"})])          # or events with headers

:meth:`AvroClient.append_batch` (and :class:`ThriftClient`'s) returns once the source answered
``OK`` (its channels committed the events) and raises :class:`~rayflume.errors.DeliveryError`
otherwise (``FAILED``, a timeout, a refused or broken connection); what was not answered ``OK`` is
the caller's to resend, so delivery is at least once. After an error the connection is closed and
the next call opens a new one. Not thread-safe: use one client per thread.
"""
from __future__ import annotations

import abc
import socket
import ssl
import time
from typing import Iterable

from rayflume._private.avro_ipc import OK, ClientConnection, Deflater, Inflater, PackReader
from rayflume._private.thrift_rpc import ClientCodec, FrameReader
from rayflume.errors import DeliveryError, RayflumeError
from rayflume.event import Event, EventBatch

MAX_REPLY_BYTES = 1 << 20
READ_BYTES = 1 << 16


class NotCommitted(DeliveryError):
    """The source answered FAILED: it did not commit the events (a full channel, say). The
    connection stays open; send the events again."""


def as_batch(events) -> EventBatch:
    """``events`` (an EventBatch, or bodies as bytes/str, or :class:`Event` objects) as a batch."""
    if isinstance(events, EventBatch):
        return events
    items = list(events)
    if items and all(isinstance(e, Event) for e in items):
        return EventBatch.from_events(items)
    return EventBatch.from_bodies([e.encode("utf-8") if isinstance(e, str) else e for e in items])


class _RpcClient(abc.ABC):
    """One connection to an RPC source; subclasses encode requests and decode replies."""

    reader_type = PackReader

    def __init__(self, host: str, port: int, *, connect_timeout_s: float = 20.0, request_timeout_s: float = 20.0,
                 ssl: bool = False, ssl_ca_file: str | None = None, ssl_certfile: str | None = None,
                 ssl_keyfile: str | None = None, trust_all_certs: bool = False):
        self.host, self.port = host, port
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self._tls = _client_context(ssl_ca_file, ssl_certfile, ssl_keyfile, trust_all_certs) if ssl else None
        self._sock: socket.socket | None = None
        self._reader = None
        self.connected_at = 0.0
        self.connections_opened = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def append_batch(self, events) -> None:
        """Send ``events`` in one ``appendBatch`` call; return once the source answered OK."""
        batch = as_batch(events)
        if not len(batch):
            return
        try:
            if self._sock is None:
                self._connect()
            call, pieces = self._request(batch)
            self._send(pieces)
            status = self._await(call)
        except (OSError, RayflumeError) as exc:
            self.close()
            raise DeliveryError(f"{self.kind} client: sending {len(batch)} events to {self.address} failed: "
                                f"{exc}") from exc
        if status != OK:
            raise NotCommitted(f"{self.kind} client: {self.address} answered {status} to {len(batch)} events (not "
                               f"committed, e.g. a full channel); send them again")

    def append(self, body: bytes | str, headers: dict[str, str] | None = None) -> None:
        """Send one event (as a batch of one: Flume's sources treat both calls alike)."""
        self.append_batch([Event(body.encode("utf-8") if isinstance(body, str) else body, headers or {})])

    def _connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(self.request_timeout_s)
        except (OSError, ssl.SSLError):
            sock.close()
            raise
        self._sock = sock
        self._reader = self.reader_type(MAX_REPLY_BYTES)
        self._opened()
        self.connected_at = time.monotonic()
        self.connections_opened += 1

    def _send(self, pieces: list) -> None:
        if isinstance(self._sock, ssl.SSLSocket):  # no sendmsg over TLS
            for piece in pieces:
                self._sock.sendall(piece)
        else:
            _send_pieces(self._sock, pieces)

    def _await(self, call: int) -> str:
        while True:
            data = self._sock.recv(READ_BYTES)
            if not data:
                raise ConnectionError("the source closed the connection before answering")
            for chunk in self._received(data):
                for frame in self._reader.feed(chunk):
                    return self._reply(call, frame)

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass  # already broken: closing is all that was wanted
        self._sock = self._reader = None

    # protocol --------------------------------------------------------------------------------------
    kind = ""

    def _opened(self) -> None:
        """A new connection: reset the protocol's per-connection state."""

    @abc.abstractmethod
    def _request(self, batch: EventBatch) -> tuple[int, list]:
        """``(call id, pieces to send)`` of an appendBatch of ``batch``."""

    def _received(self, data: bytes) -> list[bytes]:
        return [data]

    @abc.abstractmethod
    def _reply(self, call: int, frame) -> str:
        """The status in the reply ``frame`` to call ``call``."""


class AvroClient(_RpcClient):
    """A connection to an Avro RPC source (Flume's ``AvroSourceProtocol``). See the module docstring.

    ``compression_type`` must match the source's. With ``ssl``, the server is verified against
    ``ssl_ca_file`` (PEM; None: the system's CAs) unless ``trust_all_certs``; ``ssl_certfile`` /
    ``ssl_keyfile`` present a client certificate to a source that requires mutual TLS.
    """

    kind = "avro"

    def __init__(self, host: str, port: int, *, compression_type: str = "none", compression_level: int = 6,
                 **options):
        if compression_type not in ("none", "deflate"):
            raise ValueError(f"AvroClient: compression_type must be none or deflate, got {compression_type!r}")
        super().__init__(host, port, **options)
        self.compression_type = compression_type
        self.compression_level = compression_level
        self._rpc: ClientConnection | None = None
        self._deflate: Deflater | None = None
        self._inflate: Inflater | None = None

    def _opened(self) -> None:
        self._rpc = ClientConnection()
        deflate = self.compression_type == "deflate"
        self._deflate = Deflater(self.compression_level) if deflate else None
        self._inflate = Inflater(MAX_REPLY_BYTES) if deflate else None

    def _request(self, batch: EventBatch) -> tuple[int, list]:
        serial, pieces = self._rpc.request(batch)
        return serial, [self._deflate(b"".join(pieces))] if self._deflate else pieces

    def _received(self, data: bytes) -> list[bytes]:
        return self._inflate(data) if self._inflate else [data]

    def _reply(self, call: int, frame) -> str:
        serial, payload = frame
        return self._rpc.read_reply(serial, call, payload)


class ThriftClient(_RpcClient):
    """A connection to a Thrift RPC source (Flume's ``ThriftSourceProtocol``, framed transport).
    ``protocol`` (compact, Flume's default, or binary) must match the source's. TLS options as
    :class:`AvroClient`'s."""

    kind = "thrift"
    reader_type = FrameReader

    def __init__(self, host: str, port: int, *, protocol: str = "compact", **options):
        if protocol not in ("compact", "binary"):
            raise ValueError(f"ThriftClient: protocol must be compact or binary, got {protocol!r}")
        super().__init__(host, port, **options)
        self.protocol = protocol
        self._codec: ClientCodec | None = None

    def _opened(self) -> None:
        self._codec = ClientCodec(self.protocol)

    def _request(self, batch: EventBatch) -> tuple[int, list]:
        seqid, frame = self._codec.request(batch)
        return seqid, [frame]

    def _reply(self, call: int, frame) -> str:
        return self._codec.read_reply(call, frame)


def _send_pieces(sock: socket.socket, pieces: list) -> None:
    """Send every piece, in order, with as few system calls as the kernel allows and no copy."""
    views = [memoryview(p).cast("B") for p in pieces if len(p)]
    while views:
        sent = sock.sendmsg(views[:64])
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if sent:
            views[0] = views[0][sent:]


def _client_context(cafile, certfile, keyfile, trust_all: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if trust_all:
        # Flume's trust-all-certs: encryption without authenticating the server (testing only)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if certfile:
        ctx.load_cert_chain(certfile, keyfile)
    return ctx


def send_file(client: AvroClient, lines: Iterable[bytes], batch_size: int = 100,
              headers: dict[str, str] | None = None) -> int:
    """Send each line (without its newline) as an event, ``batch_size`` per call, like
    ``flume-ng avro-client``; returns how many were sent. Raises on the first failed call."""
    sent = 0
    pending: list[Event] = []
    for line in lines:
        pending.append(Event(line.rstrip(b"\r\n"), dict(headers or {})))
        if len(pending) >= batch_size:
            client.append_batch(pending)
            sent += len(pending)
            pending = []
    if pending:
        client.append_batch(pending)
        sent += len(pending)
    return sent
