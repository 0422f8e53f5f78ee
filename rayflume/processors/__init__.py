"""Sink processors: drive the sinks of a sink group (``default``, ``failover``, ``load_balance``).

Importing this package registers the three processor types.
"""
from rayflume.processors.base import SinkLike, SinkProcessor, Status
from rayflume.processors.default import DefaultProcessorConfig, DefaultSinkProcessor
from rayflume.processors.failover import FailoverProcessorConfig, FailoverSinkProcessor
from rayflume.processors.load_balance import LoadBalanceProcessorConfig, LoadBalancingSinkProcessor

__all__ = [
    "SinkLike", "SinkProcessor", "Status",
    "DefaultProcessorConfig", "DefaultSinkProcessor",
    "FailoverProcessorConfig", "FailoverSinkProcessor",
    "LoadBalanceProcessorConfig", "LoadBalancingSinkProcessor",
]
