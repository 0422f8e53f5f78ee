"""Exceptions with messages that say which component failed, on which key, and what to do."""
from __future__ import annotations


class RayflumeError(Exception):
    """Base class of every rayflume error."""


class ChannelError(RayflumeError):
    """A channel refused an operation; nothing of that operation was applied."""


class ChannelFull(ChannelError):
    """The channel has no room for the put; retry later (backpressure). Nothing was enqueued."""


class TransactionTooLarge(ChannelError):
    """A put or take exceeds the channel's ``transaction_capacity``."""


class LeaseUnknown(ChannelError):
    """Commit or rollback named a lease the channel no longer holds (it expired and was returned)."""


class ChannelLost(ChannelError):
    """A durable channel's data is unreachable (its node is gone); it is not recreated empty."""


class DeliveryError(RayflumeError):
    """A sink could not deliver a batch; its take is rolled back and retried later."""


class ConfigError(RayflumeError):
    """A topology is invalid. ``errors`` lists every problem as ``path: message``."""

    def __init__(self, errors: list[str], topology: str | None = None):
        self.errors = list(errors)
        self.topology = topology
        head = f"topology '{topology}'" if topology else "topology"
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"{head} is invalid ({len(self.errors)} problem(s)):\n{lines}")


def read_config_file(path: str, what: str) -> str:
    """The UTF-8 text of the file ``path``; a ConfigError ``<path>: cannot read <what>: <reason>``
    when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read {what}: {exc.strerror}"]) from None


class ClusterUnavailable(RayflumeError, ConnectionError):
    """No Ray cluster answered at the given address within the deadline; says what to try."""


class TopologyNotRunning(RayflumeError):
    """The topology a handle names is not deployed on the connected cluster (it was stopped, or
    never deployed there); the message says how to deploy it again."""
