"""The ``thrift`` sink (Flume's ``thrift`` sink): each batch goes to a Thrift RPC source (Flume's
or rayflume's ``thrift`` source) in one ``appendBatch`` call over the framed transport. Delivery,
connections, TLS and metrics: see :mod:`rayflume.sinks._rpc`.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayflume.client import ThriftClient
from rayflume.registry import register
from rayflume.sinks._rpc import RpcSink, RpcSinkConfig


@register("sink", "thrift")
class ThriftSinkConfig(RpcSinkConfig):
    """``thrift`` (Flume's ``thrift`` sink)."""

    protocol: Literal["compact", "binary"] = Field("compact", description="Thrift protocol (Flume's protocol); the "
                                                                          "source must use the same.")

    def build(self, name: str) -> RpcSink:
        return self.rpc_sink(name, ThriftClient, protocol=self.protocol)
