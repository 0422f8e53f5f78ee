"""The channel contract (now public, in :mod:`rayflume.channel_contract`) and its helpers, under the
names the test modules import."""
from rayflume.channel_contract import (ChannelContract, close_quietly, closing_factory, drain, numbered, numbers,
                                       run_contract, wait_until)

__all__ = ["ChannelContract", "close_quietly", "closing_factory", "drain", "numbered", "numbers", "run_contract",
           "wait_until"]
