"""Typed configuration base classes shared by every component.

A component's config is a pydantic model that forbids unknown keys; its ``build()`` returns the
runtime object. Names follow Flume's property names in snake_case; durations end in ``_s``.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class ComponentConfig(BaseModel):
    """Base of every component config: a ``type`` and nothing unknown."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type_name: ClassVar[str] = ""

    type: str

    def check(self) -> list[str]:
        """Problems with what this config needs from the machine it is called on (a missing
        command, an unwritable directory, a library, a certificate file). Default: none.

        Validation never calls it (a topology is validated on machines other than the nodes that
        run it); ``topology.local_environment_warnings`` does, for warnings. A component makes
        the same checks itself at start, on its node, where a failure is its status error."""
        return []


class ChannelConfig(ComponentConfig):
    # Whether a topology must have a sink draining this channel (False for channels that are a
    # destination themselves, such as ``null``).
    needs_sink: ClassVar[bool] = True
    # Whether a topology must have a source writing to this channel (False for channels others
    # can fill, such as ``kafka``: a topic written by other producers).
    needs_source: ClassVar[bool] = True
    # Whether the channel's data lives on its node's disk: its actor is then pinned to that node,
    # restarts there, and is reported lost (never recreated empty) if the node is gone.
    node_local: ClassVar[bool] = False

    capacity: int = Field(100_000, gt=0, description="Most events the channel holds.")
    transaction_capacity: int = Field(10_000, gt=0, description="Most events in one put or take.")
    byte_capacity: int | None = Field(None, gt=0, description="Most bytes (Arrow buffers) held; None: no limit.")
    lease_timeout_s: float = Field(60.0, gt=0, description="A take not committed in this time returns to the head.")
    max_restarts: int = Field(-1, ge=-1, description="Supervised restarts of the channel actor; -1 forever.")

    @abstractmethod
    def build(self, name: str):
        """The runtime object this config describes."""


class SourceConfig(ComponentConfig):
    channels: list[str] = Field(min_length=1, description="Channels the selector chooses from.")
    interceptors: list[Any] = Field(default_factory=list, description="Interceptor configs, applied in order.")
    selector: Any = Field(default_factory=lambda: {"type": "replicating"})
    batch_size: int = Field(1000, gt=0, description="Most events read into one batch.")
    max_restarts: int = Field(-1, ge=-1)

    @abstractmethod
    def build(self, name: str):
        """The runtime object this config describes."""


class SinkConfig(ComponentConfig):
    channel: str = Field(description="The channel this sink drains.")
    batch_size: int = Field(1000, gt=0, description="Most events taken in one transaction.")
    batch_duration_s: float = Field(0.0, ge=0, description="Longest wait for batch_size events before "
                                                           "taking fewer: fuller batches for a little latency.")
    max_restarts: int = Field(-1, ge=-1)

    @abstractmethod
    def build(self, name: str):
        """The runtime object this config describes."""


class InterceptorConfig(ComponentConfig):
    @abstractmethod
    def build(self):
        """The runtime object this config describes."""


class SelectorConfig(ComponentConfig):
    @abstractmethod
    def build(self, channels: list[str]):
        """The runtime object this config describes."""

    def channels_named(self) -> set[str]:
        """Channels this selector's own keys mention (checked against the source's list)."""
        return set()


class ProcessorConfig(ComponentConfig):
    @abstractmethod
    def build(self, sinks: list):
        """The runtime object this config describes."""

    def sinks_named(self) -> set[str]:
        return set()
