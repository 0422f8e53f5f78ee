"""The ``avro`` sink (Flume's ``avro`` sink): each batch goes to an Avro RPC source (Flume's or
rayflume's ``avro`` source) in one ``appendBatch`` call, so a rayflume agent can feed Flume
collectors or rayflume sources outside its Ray cluster. Delivery, connections, TLS and metrics:
see :mod:`rayflume.sinks._rpc`.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayflume.client import AvroClient
from rayflume.registry import register
from rayflume.sinks._rpc import RpcSink, RpcSinkConfig


@register("sink", "avro")
class AvroSinkConfig(RpcSinkConfig):
    """``avro`` (Flume's ``avro`` sink)."""

    compression_type: Literal["none", "deflate"] = Field("none", description="deflate compresses the connection "
                                                                             "(the source must match).")
    compression_level: int = Field(6, ge=0, le=9, description="zlib level with deflate.")

    def build(self, name: str) -> RpcSink:
        return self.rpc_sink(name, AvroClient, compression_type=self.compression_type,
                             compression_level=self.compression_level)
