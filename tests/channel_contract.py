"""The channel contract (now public, in :mod:`rayflume.channel_contract`) and its helpers, under the
names the test modules import."""
from rayflume.channel_contract import (
    ChannelContract,
    close_quietly,
    closing_factory,
    drain,
    numbered,
    numbers,
    run_contract,
    wait_until,
)

__all__ = ["ChannelContract", "ReopeningContract", "close_quietly", "closing_factory", "drain", "numbered", "numbers",
           "run_contract", "wait_until"]


class ReopeningContract(ChannelContract):
    """The contract for a channel whose ``reopen`` opens it again on the same storage with the
    options it was made with: subclasses define ``open_channel(tmp_path, **options)``."""

    def setup_method(self, method=None) -> None:
        super().setup_method(method)
        self._options: dict[int, dict] = {}

    def make_channel(self, tmp_path, **options):
        made_with = dict(options)
        channel = self.open_channel(tmp_path, **options)
        self._options[id(channel)] = made_with
        return channel

    def open_channel(self, tmp_path, **options):
        raise TypeError(f"{type(self).__name__} must define open_channel(tmp_path, **options)")

    def reopen(self, channel, tmp_path):
        options = self._options[id(channel)]
        channel.close()
        return self.make(**options)
