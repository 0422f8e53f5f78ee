"""The ``avro`` source: Flume's Avro RPC server (``AvroSourceProtocol`` over Avro's Netty framing),
wire-compatible with Flume's ``avro`` sink, its RpcClient and log4j appender,
``flume-ng avro-client``, the ``avro`` sink here and :class:`rayflume.client.AvroClient`.

Each ``append`` / ``appendBatch`` request is one all-or-nothing put: the source answers ``OK``
only after the events were committed to every required channel, and ``FAILED`` when they were
not (a full or unavailable channel, more events than a channel's transaction takes, a request
that waited ``commit_timeout_s``, a source stopping), so the client retries. A connection's
requests are served in order, one at a time: a client that waits for its answers (as Flume's do)
is held back by a slow channel.

Delivery: at least once for a client that resends what was not answered ``OK`` (Flume's sink
does). Only when the commit wait timed out after the runner took the events may they still be
committed after ``FAILED``, so a retry can duplicate them.

Connections are served by the shared TCP core (:mod:`rayflume.sources._server`): the client
limits (``allowed_clients``, ``max_connections``, ``max_connections_per_client``,
``idle_timeout_s``), ``request_timeout_s`` for a request from its first byte to its last, optional
TLS and mutual TLS (PEM files, where Flume takes a Java keystore), and idle connections parked
without a thread. ``compression_type: deflate`` (both ends must agree, as in Flume) compresses
the whole connection. Memory: a request larger than ``max_request_bytes`` closes its connection
(counted in ``ProtocolErrorCount``); bytes being received and decoded are reserved from
``memory_budget_bytes``, shared by all connections, before they are held (a request that does not
fit is answered ``FAILED``, or its connection closed while it is still arriving).

Metrics beyond the runner's and the network sources': ``AppendReceivedCount`` /
``AppendAcceptedCount`` (single-event ``append`` calls), ``RequestFailedCount`` (answered
``FAILED``), ``ProtocolErrorCount`` (connections closed for a protocol violation).
"""
from __future__ import annotations

import socket
from typing import Literal

from pydantic import Field

from rayflume._private.avro_ipc import FAILED, OK, AvroRpcError, Deflater, Inflater, PackReader, ServerConnection
from rayflume.registry import register
from rayflume.sources._limits import Watch
from rayflume.sources._rpc import RpcSession, RpcSource, RpcSourceConfig


class AvroSource(RpcSource):
    """Serves Flume's Avro RPC. See the module docstring. Connection threads decode, queue and
    wait for the commit before answering; ``poll``/``ack`` run on the runner's thread."""

    protocol_name = "avro"

    def __init__(self, compression_type: str = "none", compression_level: int = 6, **rpc):
        super().__init__(**rpc)
        self.compression_type = compression_type
        self.compression_level = compression_level

    def session(self, sock: socket.socket, address, watch: Watch) -> "_AvroSession":
        return _AvroSession(self, sock, address, watch)


class _AvroSession(RpcSession):
    """One connection: unframes (and inflates) requests, answers each after its commit."""

    protocol_errors = (AvroRpcError,)

    def __init__(self, source: AvroSource, sock: socket.socket, address, watch: Watch):
        super().__init__(source, sock, address, watch, PackReader(source.max_request_bytes))
        self.rpc = ServerConnection()
        deflate = source.compression_type == "deflate"
        self.inflate = Inflater(source.max_request_bytes) if deflate else None
        self.deflate = Deflater(source.compression_level) if deflate else None

    def decode_stream(self, data: bytes) -> list[bytes]:
        return self.inflate(data) if self.inflate else [data]

    def encode_stream(self, data: bytes) -> bytes:
        return self.deflate(data) if self.deflate else data

    def frame_size(self, frame) -> int:
        return len(frame[1])  # (serial, payload)

    def serve(self, frame) -> bytes:
        serial, payload = frame
        call = self.rpc.read_call(serial, payload, self.reserve_events)
        status = None
        if call.events is not None:
            status = OK if self.source.accept(call.events, call.message == "append", self.address) else FAILED
        return self.rpc.reply(call, status)


@register("source", "avro")
class AvroSourceConfig(RpcSourceConfig):
    """``avro`` (Flume's ``avro`` source: ``AvroSourceProtocol`` over Netty framing; Flume's ``host``
    is ``bind`` here and defaults to 127.0.0.1)."""

    compression_type: Literal["none", "deflate"] = Field(
        "none", description="deflate compresses the connection (Flume's compression-type); the client must match.")
    compression_level: int = Field(6, ge=0, le=9, description="zlib level of the answers with deflate "
                                                              "(Flume's compression-level).")

    def build(self, name: str) -> AvroSource:
        return AvroSource(self.compression_type, self.compression_level, **self.rpc_arguments(name))
