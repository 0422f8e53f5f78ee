"""Sinks: deliver batches taken from one channel."""
from rayflume.sinks.base import Sink, SinkContext

__all__ = ["Sink", "SinkContext"]
