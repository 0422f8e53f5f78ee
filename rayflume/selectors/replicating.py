"""The ``replicating`` selector (Flume's default): every event goes to every channel of the source.

Channels listed in ``optional`` still get every event, but as optional channels: a failed put
there is logged and counted, never retried, and does not fail the source's delivery.
"""
from __future__ import annotations

from pydantic import Field, field_validator

from rayflume.config_base import SelectorConfig
from rayflume.event import EventBatch
from rayflume.registry import register
from rayflume.selectors.base import ChannelSelector, Routing


def channel_list(value, component: str, key: str) -> list[str]:
    """A list of channel names, without repeats; a Flume-style space-separated string is accepted."""
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"selector '{component}': '{key}' must be a list of channel names")
    names = []
    for name in value:
        if not isinstance(name, str) or not name:
            raise ValueError(f"selector '{component}': '{key}' must hold channel names (non-empty strings), "
                             f"got {name!r}")
        names.append(name)
    return list(dict.fromkeys(names))


def check_known(component: str, named, channels: list[str]) -> None:
    unknown = sorted(set(named) - set(channels))
    if unknown:
        raise ValueError(f"selector '{component}' names channel(s) {unknown} that are not in the source's "
                         f"channels {list(channels)}; add them to the source's 'channels' or fix the names")


class ReplicatingChannelSelector(ChannelSelector):
    """Every event to every channel; ``optional`` channels are listed in ``Routing.optional``.

    Stateless and thread-safe. The sub-batches are the input batch itself (no copy).
    """

    reads_events = False

    def __init__(self, channels: list[str], optional: list[str] | None = None):
        super().__init__(channels)
        self.optional = list(optional or [])
        check_known("replicating", self.optional, self.channels)
        optional_set = set(self.optional)
        self.required_channels = [c for c in self.channels if c not in optional_set]
        self.optional_channels = [c for c in self.channels if c in optional_set]

    def route(self, batch: EventBatch) -> Routing:
        if len(batch) == 0:
            return Routing()
        return Routing(required={c: batch for c in self.required_channels},
                       optional={c: batch for c in self.optional_channels})


@register("selector", "replicating")
class ReplicatingSelectorConfig(SelectorConfig):
    """``replicating``: every event to every channel of the source; ``optional`` ones may fail."""

    optional: list[str] = Field(default_factory=list,
                                description="Channels whose put failures are ignored (still get every event).")

    @field_validator("optional", mode="before")
    @classmethod
    def _optional(cls, v):
        return channel_list(v, "replicating", "optional")

    def build(self, channels: list[str]) -> ReplicatingChannelSelector:
        return ReplicatingChannelSelector(channels, self.optional)

    def channels_named(self) -> set[str]:
        return set(self.optional)
