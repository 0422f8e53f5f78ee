"""Channel selectors: replicating and multiplexing routing tables."""
from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from rayflume import registry
from rayflume.event import Event, EventBatch
from rayflume.selectors import (
    MultiplexingChannelSelector,
    MultiplexingSelectorConfig,
    ReplicatingSelectorConfig,
    Routing,
)

CHANNELS = ["c1", "c2", "c3", "c4"]


def events(*values: str | None, header: str = "flume.selector.header") -> EventBatch:
    """One event per value, body = its index; None = the event has no such header."""
    return EventBatch.from_events([Event(body=str(i).encode(), headers={} if v is None else {header: v, "o": "x"})
                                   for i, v in enumerate(values)])


def table(routing: Routing) -> tuple[dict, dict]:
    """Channel -> list of event indices, for required and optional."""
    def ids(part):
        return {c: [int(b) for b in batch.bodies()] for c, batch in part.items()}
    return ids(routing.required), ids(routing.optional)


def selector(kind: str, channels=CHANNELS, **props):
    cls = registry.lookup("selector", kind)
    assert cls is not None
    return cls(type=kind, **props).build(channels)


# -- replicating ---------------------------------------------------------------------------------

def test_replicating_sends_every_event_everywhere():
    b = events("a", None, "b")
    req, opt = table(selector("replicating").route(b))
    assert req == {c: [0, 1, 2] for c in CHANNELS}
    assert opt == {}


def test_replicating_optional_channels():
    s = selector("replicating", optional=["c2", "c4"])
    b = events("a", "b")
    routing = s.route(b)
    assert list(routing.required) == ["c1", "c3"]
    assert list(routing.optional) == ["c2", "c4"]
    assert all(sub is b for sub in [*routing.required.values(), *routing.optional.values()])


def test_replicating_empty_batch_routes_nowhere():
    routing = selector("replicating", optional=["c2"]).route(EventBatch.empty())
    assert routing.required == {} and routing.optional == {}


def test_replicating_config():
    cfg = ReplicatingSelectorConfig(type="replicating", optional="c2  c3")  # Flume's space-separated form
    assert cfg.optional == ["c2", "c3"]
    assert cfg.channels_named() == {"c2", "c3"}
    assert ReplicatingSelectorConfig(type="replicating").channels_named() == set()
    with pytest.raises(ValueError, match=r"\['c9'\].*not in the source's channels"):
        ReplicatingSelectorConfig(type="replicating", optional=["c9"]).build(CHANNELS)
    with pytest.raises(ValidationError, match="mapping"):
        ReplicatingSelectorConfig(type="replicating", mapping={})


# -- multiplexing --------------------------------------------------------------------------------

def test_multiplexing_defaults():
    cfg = MultiplexingSelectorConfig(type="multiplexing")
    assert cfg.header == "flume.selector.header"
    assert (cfg.mapping, cfg.default, cfg.optional) == ({}, [], {})
    # Nothing configured: nothing is routed.
    assert table(cfg.build(CHANNELS).route(events("a"))) == ({}, {})


BASIC = dict(mapping={"us": ["c1"], "eu": ["c2", "c3"]}, default=["c4"])


@pytest.mark.parametrize("values, required", [
    (["us", "us"], {"c1": [0, 1]}),
    (["eu"], {"c2": [0], "c3": [0]}),
    (["us", "eu", "asia", None, "US", ""], {"c1": [0], "c2": [1], "c3": [1], "c4": [2, 3, 4, 5]}),
    ([None, None], {"c4": [0, 1]}),
])
def test_multiplexing_required_routing(values, required):
    req, opt = table(selector("multiplexing", **BASIC).route(events(*values)))
    assert req == required
    assert opt == {}


def test_multiplexing_custom_header():
    s = selector("multiplexing", header="region", mapping={"us": ["c1"]}, default=["c2"])
    b = events("us", "eu", header="region")
    assert table(s.route(b))[0] == {"c1": [0], "c2": [1]}
    # The default header is not consulted when another is configured.
    assert table(s.route(events("us")))[0] == {"c2": [0]}


def test_multiplexing_without_default_drops_unmapped_events_from_required():
    s = selector("multiplexing", mapping={"us": ["c1"]})
    req, opt = table(s.route(events("eu", None, "us")))
    assert req == {"c1": [2]}
    assert opt == {}


def test_multiplexing_optional_and_overlap_with_required():
    s = selector("multiplexing", mapping={"us": ["c1", "c2"], "eu": ["c3"]}, default=["c4"],
                 optional={"us": ["c2", "c3"], "eu": ["c1"], "asia": ["c1", "c4"]})
    req, opt = table(s.route(events("us", "eu", "asia", "other", None)))
    # us: c2 is both required and optional -> required only; asia has no mapping -> default c4
    # required, and c4's optional listing is absorbed by it.
    assert req == {"c1": [0], "c2": [0], "c3": [1], "c4": [2, 3, 4]}
    assert opt == {"c3": [0], "c1": [1, 2]}
    assert s.required_for("asia") == ["c4"] and s.optional_for("asia") == ["c1"]
    assert s.optional_for(None) == []


def test_multiplexing_optional_only_value_with_empty_default():
    s = selector("multiplexing", mapping={"us": ["c1"]}, optional={"eu": ["c2"]})
    req, opt = table(s.route(events("eu", "us", None)))
    assert req == {"c1": [1]}
    assert opt == {"c2": [0]}


def test_multiplexing_whole_batch_is_not_copied_and_order_is_kept():
    s = selector("multiplexing", **BASIC)
    b = events("us", "us", "us")
    assert s.route(b).required["c1"] is b
    mixed = events("eu", "us", "eu", "us", "eu")
    routing = s.route(mixed)
    assert routing.required["c2"].bodies() == [b"0", b"2", b"4"]
    # Headers travel with their events.
    assert routing.required["c1"].header("flume.selector.header").to_pylist() == ["us", "us"]


def test_multiplexing_empty_batch():
    assert table(selector("multiplexing", **BASIC).route(EventBatch.empty())) == ({}, {})


@pytest.mark.parametrize("seed", range(3))
def test_multiplexing_matches_per_event_reference(seed):
    rng = random.Random(seed)
    mapping = {"a": ["c1"], "b": ["c2", "c3"], "c": ["c4", "c1"]}
    optional = {"a": ["c2", "c1"], "d": ["c3"], "b": ["c4"]}
    s = selector("multiplexing", mapping=mapping, default=["c2"], optional=optional)
    values = [rng.choice(["a", "b", "c", "d", "e", None]) for _ in range(500)]
    req, opt = table(s.route(events(*values)))
    want_req: dict[str, list[int]] = {}
    want_opt: dict[str, list[int]] = {}
    for i, v in enumerate(values):
        required = mapping.get(v, ["c2"]) if v is not None else ["c2"]
        for c in required:
            want_req.setdefault(c, []).append(i)
        for c in (optional.get(v, []) if v is not None else []):
            if c not in required:
                want_opt.setdefault(c, []).append(i)
    assert {c: sorted(x) for c, x in req.items()} == want_req
    assert {c: sorted(x) for c, x in opt.items()} == want_opt


def test_multiplexing_channels_named_and_unknown_channels():
    cfg = MultiplexingSelectorConfig(type="multiplexing", mapping={"us": ["c1"], "eu": "c2 c3"}, default="c4",
                                     optional={"us": ["c5"]})
    assert cfg.mapping == {"us": ["c1"], "eu": ["c2", "c3"]} and cfg.default == ["c4"]
    assert cfg.channels_named() == {"c1", "c2", "c3", "c4", "c5"}
    with pytest.raises(ValueError, match=r"\['c5'\]"):
        cfg.build(CHANNELS)
    with pytest.raises(ValueError, match="c9"):
        MultiplexingChannelSelector(CHANNELS, default=["c9"])


def test_multiplexing_config_validation():
    assert MultiplexingSelectorConfig(type="multiplexing", mapping={1: ["c1"]}).mapping == {"1": ["c1"]}
    with pytest.raises(ValidationError, match="quote header values"):
        MultiplexingSelectorConfig(type="multiplexing", mapping={True: ["c1"]})
    with pytest.raises(ValidationError, match="lists no channel"):
        MultiplexingSelectorConfig(type="multiplexing", mapping={"us": []})
    with pytest.raises(ValidationError, match="channel names"):
        MultiplexingSelectorConfig(type="multiplexing", default=[""])
    with pytest.raises(ValidationError, match="header"):
        MultiplexingSelectorConfig(type="multiplexing", header="")
    with pytest.raises(ValidationError, match="selector_header"):
        MultiplexingSelectorConfig(type="multiplexing", selector_header="x")
    # A mapped value routes by header value as a string.
    s = MultiplexingSelectorConfig(type="multiplexing", mapping={7: ["c1"]}).build(CHANNELS)
    assert table(s.route(events("7", "8")))[0] == {"c1": [0]}


def test_selectors_are_registered():
    assert {"multiplexing", "replicating"} <= set(registry.known_types("selector"))
