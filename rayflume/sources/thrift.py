"""The ``thrift`` source: Flume's Thrift RPC server (``ThriftSourceProtocol`` over the framed
transport, compact protocol by default or binary with ``protocol: binary``), wire-compatible with
Flume's ``thrift`` sink and its Thrift RpcClient, the ``thrift`` sink here and
:class:`rayflume.client.ThriftClient`.

Each ``append`` / ``appendBatch`` call is one all-or-nothing put, answered ``OK`` only after the
events were committed to every required channel and ``FAILED`` otherwise (so the client
retries); an unknown method gets Thrift's UNKNOWN_METHOD exception and the connection stays
usable. Connections, limits, TLS and memory are those of every RPC source
(:mod:`rayflume.sources._rpc`). Delivery: at least once for a client that resends what was not
answered ``OK``.

Metrics: as the ``avro`` source's.
"""
from __future__ import annotations

import socket
from typing import Literal

from pydantic import Field

from rayflume._private.thrift_rpc import FrameReader, ServerCodec, ThriftRpcError
from rayflume.registry import register
from rayflume.sources._limits import Watch
from rayflume.sources._rpc import RpcSession, RpcSource, RpcSourceConfig


class ThriftSource(RpcSource):
    """Serves Flume's Thrift RPC. See the module docstring."""

    protocol_name = "thrift"

    def __init__(self, protocol: str = "compact", **rpc):
        super().__init__(**rpc)
        self.protocol = protocol

    def session(self, sock: socket.socket, address, watch: Watch) -> "_ThriftSession":
        return _ThriftSession(self, sock, address, watch)


class _ThriftSession(RpcSession):
    protocol_errors = (ThriftRpcError,)

    def __init__(self, source: ThriftSource, sock: socket.socket, address, watch: Watch):
        super().__init__(source, sock, address, watch, FrameReader(source.max_request_bytes))
        self.codec = ServerCodec(source.protocol)

    def serve(self, frame: bytes) -> bytes:
        call = self.codec.read_call(frame, self.reserve_events)
        if call.events is None:
            return self.codec.reply(call, "ERROR")
        return self.codec.reply(call, "OK" if self.source.accept(call.events, call.singular, self.address)
                                else "FAILED")


@register("source", "thrift")
class ThriftSourceConfig(RpcSourceConfig):
    """``thrift`` (Flume's ``thrift`` source; Flume's ``bind`` defaults to 127.0.0.1 here)."""

    protocol: Literal["compact", "binary"] = Field("compact", description="Thrift protocol (Flume's protocol); "
                                                                          "clients must use the same.")

    def build(self, name: str) -> ThriftSource:
        return ThriftSource(self.protocol, **self.rpc_arguments(name))
