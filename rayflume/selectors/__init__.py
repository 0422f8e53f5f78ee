"""Channel selectors: which channels each event of a batch must (required) or may (optional) go to.

Importing this package registers the built-in selectors ``replicating`` and ``multiplexing``.
"""
from rayflume.selectors.base import ChannelSelector, Routing
from rayflume.selectors.multiplexing import MultiplexingChannelSelector, MultiplexingSelectorConfig
from rayflume.selectors.replicating import ReplicatingChannelSelector, ReplicatingSelectorConfig

__all__ = ["ChannelSelector", "Routing", "ReplicatingChannelSelector", "ReplicatingSelectorConfig",
           "MultiplexingChannelSelector", "MultiplexingSelectorConfig"]
