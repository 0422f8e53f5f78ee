"""The ``multiplexing`` selector: routes each event on the value of one header.

For an event whose header ``header`` has value ``v``:

- required channels: ``mapping[v]``; when ``v`` has no mapping (or the event lacks the header),
  the ``default`` channels;
- optional channels: ``optional[v]`` (nothing when ``v`` has no optional entry), minus any channel
  already required for that event (a channel both required and optional counts as required).

An event with no required channel (its value has no mapping and ``default`` is empty) is not
written to any channel as required: it goes only to its optional channels, if any, and is
otherwise dropped by the selector (the source still acknowledges it). Header values match
exactly and case-sensitively.

Routing is vectorised: the header is looked up once per batch (``EventBatch.header``), each
event's value is turned into an index into the configured values with
``pyarrow.compute.index_in``, and each channel's sub-batch is one boolean-mask filter.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from rayflume.config_base import SelectorConfig
from rayflume.event import EventBatch
from rayflume.registry import register
from rayflume.selectors.base import ChannelSelector, Routing
from rayflume.selectors.replicating import channel_list, check_known


class MultiplexingChannelSelector(ChannelSelector):
    """Routes on one header's value; see the module docstring for the rules.

    Stateless after construction and thread-safe. A channel that gets every event of a batch gets
    the batch itself (no copy); channels that get no event are left out of the routing.
    """

    def __init__(self, channels: list[str], header: str = "flume.selector.header",
                 mapping: dict[str, list[str]] | None = None, default: list[str] | None = None,
                 optional: dict[str, list[str]] | None = None):
        super().__init__(channels)
        self.header = header
        self.mapping = {k: list(v) for k, v in (mapping or {}).items()}
        self.default = list(default or [])
        self.optional = {k: list(v) for k, v in (optional or {}).items()}
        named = set(self.default).union(*self.mapping.values(), *self.optional.values())
        check_known("multiplexing", named, self.channels)

        # Configured values get indices 0..K-1; index K stands for "any other value, or missing".
        self.values = list(dict.fromkeys([*self.mapping, *self.optional]))
        self._value_set = pa.array(self.values, pa.string())
        k = len(self.values)
        self._required_lut: dict[str, np.ndarray] = {}
        self._optional_lut: dict[str, np.ndarray] = {}
        for channel in self.channels:
            req = np.zeros(k + 1, dtype=bool)
            opt = np.zeros(k + 1, dtype=bool)
            for i, value in enumerate(self.values):
                required = self.required_for(value)
                req[i] = channel in required
                opt[i] = channel in self.optional.get(value, ()) and not req[i]
            req[k] = channel in self.default
            if req.any():
                self._required_lut[channel] = req
            if opt.any():
                self._optional_lut[channel] = opt

    def required_for(self, value: str | None) -> list[str]:
        """The required channels of an event whose header value is ``value`` (None: missing)."""
        if value is not None and value in self.mapping:
            return self.mapping[value]
        return self.default

    def optional_for(self, value: str | None) -> list[str]:
        """The optional channels of an event whose header value is ``value`` (None: missing)."""
        if value is None:
            return []
        required = set(self.required_for(value))
        return [c for c in self.optional.get(value, ()) if c not in required]

    def _codes(self, batch: EventBatch) -> np.ndarray:
        other = len(self.values)
        if other == 0:
            return np.zeros(len(batch), dtype=np.int64)
        index = pc.index_in(batch.header(self.header), value_set=self._value_set)
        return np.asarray(pc.fill_null(index, other), dtype=np.int64)

    def route(self, batch: EventBatch) -> Routing:
        routing = Routing()
        n = len(batch)
        if n == 0 or not (self._required_lut or self._optional_lut):
            return routing
        codes = self._codes(batch)
        for table, out in ((self._required_lut, routing.required), (self._optional_lut, routing.optional)):
            for channel, lut in table.items():
                mask = lut[codes]
                selected = int(np.count_nonzero(mask))
                if selected == n:
                    out[channel] = batch
                elif selected:
                    out[channel] = batch.filter(pa.array(mask, pa.bool_()))
        return routing


def _mapping_of_lists(value, key: str, allow_empty: bool) -> dict[str, list[str]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"selector 'multiplexing': '{key}' must map header values to lists of channels")
    out: dict[str, list[str]] = {}
    for header_value, channels in value.items():
        if isinstance(header_value, bool) or not isinstance(header_value, (str, int)):
            raise ValueError(f"selector 'multiplexing': '{key}' has the key {header_value!r}, which is not a "
                             f"string; quote header values in YAML (e.g. \"{header_value}\")")
        names = channel_list(channels, "multiplexing", f"{key}.{header_value}")
        if not names and not allow_empty:
            raise ValueError(f"selector 'multiplexing': '{key}.{header_value}' lists no channel; give at least "
                             f"one channel or remove the entry (unmapped values go to 'default')")
        out[str(header_value)] = names
    return out


@register("selector", "multiplexing")
class MultiplexingSelectorConfig(SelectorConfig):
    """``multiplexing``: routes each event by the value of one header."""

    header: str = Field("flume.selector.header", min_length=1, description="Header whose value picks the channels.")
    mapping: dict[str, list[str]] = Field(default_factory=dict,
                                          description="Header value -> required channels.")
    default: list[str] = Field(default_factory=list,
                               description="Required channels of events whose value has no mapping (or no header).")
    optional: dict[str, list[str]] = Field(default_factory=dict,
                                           description="Header value -> optional channels (failures ignored).")

    @field_validator("mapping", mode="before")
    @classmethod
    def _mapping(cls, v):
        return _mapping_of_lists(v, "mapping", allow_empty=False)

    @field_validator("optional", mode="before")
    @classmethod
    def _optional(cls, v):
        return _mapping_of_lists(v, "optional", allow_empty=True)

    @field_validator("default", mode="before")
    @classmethod
    def _default(cls, v):
        return channel_list(v if v is not None else [], "multiplexing", "default")

    def build(self, channels: list[str]) -> MultiplexingChannelSelector:
        return MultiplexingChannelSelector(channels, self.header, self.mapping, self.default, self.optional)

    def channels_named(self) -> set[str]:
        return set(self.default).union(*self.mapping.values(), *self.optional.values())
