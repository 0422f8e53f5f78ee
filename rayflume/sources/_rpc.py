"""What the RPC sources (``avro``, ``thrift``) share: a source that listens on the TCP core and
answers each request after its events were committed (:class:`RpcSource`), and the connection
that unframes requests, holds memory for them and serves them in order (:class:`RpcSession`).

Memory: the bytes a connection has received of a request it has not finished are held against
``memory_budget_bytes`` (shared by every connection), and a complete request ``DECODE_FACTOR``
times its size plus ``EVENT_COST`` per event while it is decoded (the event count is read before
the events: a request of many tiny events cannot expand past the budget); a connection that
cannot get its share is closed (counted in ``ProtocolErrorCount``). A request larger than
``max_request_bytes`` is refused by the framing before it is buffered, also closing its connection.
"""
from __future__ import annotations

import abc
import logging
import socket

from pydantic import Field, model_validator

from rayflume.sources._limits import DEFAULT_REQUEST_TIMEOUT_S, ByteBudget, ClientLimitsConfig, ConnectionLimits, Watch
from rayflume.sources._network import CONNECTION_COUNTERS, NetworkSourceConfig
from rayflume.sources._queued import ReplyingSource
from rayflume.sources._server import ServerThread, StreamSession, start_stream_server
from rayflume.sources._tls import TlsConfig

log = logging.getLogger("rayflume.source.rpc")

RPC_COUNTERS = CONNECTION_COUNTERS + ("BoundPort", "AppendReceivedCount", "AppendAcceptedCount",
                                      "RequestFailedCount", "ProtocolErrorCount")
DECODE_FACTOR = 3  # bytes held while a request is decoded, per byte received (Python objects, then Arrow)
EVENT_COST = 192  # and per event, however small (measured: 104 for avro, 174 for thrift, per empty event)


class ProtocolError(Exception):
    """Raised by a session's framing or decoding: the peer broke the protocol; its connection closes."""


class RpcSource(ReplyingSource):
    """A source serving one RPC protocol; subclasses set ``protocol_name`` and make sessions."""

    counter_names = RPC_COUNTERS
    protocol_name = ""

    def __init__(self, name: str, bind: str, port: int, batch_size: int, limits: ConnectionLimits, tls,
                 max_request_bytes: int, memory_budget_bytes: int, commit_timeout_s: float, buffer_bytes: int):
        super().__init__(name, batch_size, buffer_bytes)
        self.bind = bind
        self.port = port
        self.limits = limits
        self.tls = tls
        self.max_request_bytes = max_request_bytes
        self.memory = ByteBudget(memory_budget_bytes)
        self.commit_timeout_s = commit_timeout_s
        self.bound_port: int | None = None
        self._server: ServerThread | None = None

    def open(self) -> None:
        self._server = start_stream_server(self, self.protocol_name, self.session)

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()

    @abc.abstractmethod
    def session(self, sock: socket.socket, address, watch: Watch) -> "RpcSession":
        """A new connection's session."""

    def accept(self, events, singular: bool, peer) -> bool:
        """Submit one request's events and wait for their commit; whether they were committed."""
        if singular:
            self.counters.add("AppendReceivedCount")
        code, reason, _ = self.submit(events)
        if code == 200:
            if singular:
                self.counters.add("AppendAcceptedCount")
            return True
        self.counters.add("RequestFailedCount")
        log.debug("%s source '%s': answered a failure to %s: %s", self.protocol_name, self.name, peer, reason)
        return False


class RpcSession(StreamSession):
    """One connection of an :class:`RpcSource`. Subclasses give ``reader`` (a framer with
    ``feed(data) -> [frames]``, ``buffered`` and ``mid_pack``), may transform the bytes received
    (:meth:`decode_stream`) and sent (:meth:`encode_stream`), and answer each frame
    (:meth:`serve`); they raise :class:`ProtocolError` (or the framer's error, listed in
    ``protocol_errors``) for a peer that breaks the protocol."""

    protocol_errors: tuple[type[Exception], ...] = (ProtocolError,)

    def __init__(self, source: RpcSource, sock: socket.socket, address, watch: Watch, reader):
        self.source, self.sock, self.address, self.watch, self.reader = source, sock, address, watch, reader
        self.reserved = 0  # bytes of the source's memory budget this connection holds
        self.reserved_for_events = 0  # and for the events of the request being decoded

    def reserve_events(self, count: int) -> bool:
        """Set budget aside for decoding ``count`` more events of the current request; False when
        the shared budget cannot cover them (the request is refused as a protocol error)."""
        cost = count * EVENT_COST
        if not self.source.memory.try_reserve(cost):
            return False
        self.reserved_for_events += cost
        return True

    def decode_stream(self, data: bytes) -> list[bytes]:
        return [data]

    def frame_size(self, frame) -> int:
        return len(frame)

    def encode_stream(self, data: bytes) -> bytes:
        return data

    @abc.abstractmethod
    def serve(self, frame: bytes) -> bytes:
        """The reply to one request frame (after its events were committed, or not)."""

    def received(self, data: bytes) -> bool:
        if self._receive(data):
            return True
        self._hold(0)  # the connection ends here (ended() is not called): give its share back
        return False

    def _receive(self, data: bytes) -> bool:
        try:
            for chunk in self.decode_stream(data):
                frames = self.reader.feed(chunk)
                # what arrives is held until its frame is complete; a complete one also while decoded
                if not self._hold(self.reader.buffered + DECODE_FACTOR * sum(self.frame_size(f) for f in frames)):
                    return False
                for frame in frames:
                    try:
                        reply = self.serve(frame)
                    finally:
                        self.source.memory.release(self.reserved_for_events)
                        self.reserved_for_events = 0
                    try:
                        self.sock.sendall(self.encode_stream(reply))
                    except OSError:
                        return False
        except self.protocol_errors as exc:
            self._protocol_error(exc)
            return False
        self.watch.pending(self.reader.mid_pack)
        return self._hold(self.reader.buffered)

    def ended(self, eof: bool, by_limit: bool) -> None:
        self._hold(0)

    def _hold(self, nbytes: int) -> bool:
        """Reserve (or give back) budget so that this connection holds ``nbytes``; False (the
        connection must close) when the shared budget cannot cover it."""
        delta = nbytes - self.reserved
        if delta > 0 and not self.source.memory.try_reserve(delta):
            self._protocol_error(f"the source's memory_budget_bytes={self.source.memory.max_bytes} is held by "
                                 f"requests on other connections")
            return False
        if delta < 0:
            self.source.memory.release(-delta)
        self.reserved = nbytes
        return True

    def _protocol_error(self, problem) -> None:
        self.source.counters.add("ProtocolErrorCount")
        log.info("%s source '%s': closing the connection from %s: %s", self.source.protocol_name, self.source.name,
                 self.address, problem)


class RpcSourceConfig(NetworkSourceConfig, TlsConfig, ClientLimitsConfig):
    """Keys of every RPC source (not registered)."""

    max_request_bytes: int = Field(64 << 20, gt=0, description="Largest request (one batch call); a larger one "
                                                               "closes its connection.")
    memory_budget_bytes: int = Field(512 << 20, gt=0, description="Bytes all connections may hold while "
                                                                  "receiving and decoding requests.")
    request_timeout_s: float | None = Field(
        DEFAULT_REQUEST_TIMEOUT_S, gt=0, description="A request must arrive whole within this time from its "
                                                     "first byte, or its connection is closed (null: never).")
    commit_timeout_s: float = Field(15.0, gt=0, description="Longest wait for the channels to commit a request "
                                                            "before answering FAILED; keep it below the "
                                                            "clients' request timeout (Flume's: 20 s).")

    @model_validator(mode="after")
    def _budget(self):
        if self.memory_budget_bytes < (1 + DECODE_FACTOR) * self.max_request_bytes:
            raise ValueError(f"{self.type_name} source: `memory_budget_bytes` ({self.memory_budget_bytes}) is smaller "
                             f"than {1 + DECODE_FACTOR} x `max_request_bytes` ({self.max_request_bytes}), what "
                             f"receiving and decoding the largest request holds; raise the budget or lower "
                             f"max_request_bytes")
        return self

    def check(self) -> list[str]:
        """Whether this machine can load the TLS files; the source loads them on its node at start."""
        return self.tls_problems()

    def rpc_arguments(self, name: str) -> dict:
        return dict(name=name, bind=self.bind, port=self.port, batch_size=self.batch_size,
                    limits=self.limits(self.request_timeout_s), tls=self.tls_loader(name),
                    max_request_bytes=self.max_request_bytes, memory_budget_bytes=self.memory_budget_bytes,
                    commit_timeout_s=self.commit_timeout_s, buffer_bytes=self.buffer_bytes)
