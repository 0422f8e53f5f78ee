"""Channels: bounded, transactional queues of event batches."""
from rayflume.channels.base import Channel, Lease

__all__ = ["Channel", "Lease"]
