"""Interceptors: header operations, the built-in interceptors, chains, and user callables."""
from __future__ import annotations

import random
import re
import socket
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pydantic import ValidationError

from rayflume import registry
from rayflume.event import HEADERS_TYPE, Event, EventBatch
from rayflume.interceptors.base import InterceptorChain
from rayflume.interceptors.builtin import (
    HostInterceptor,
    HostInterceptorConfig,
    RemoveHeaderInterceptorConfig,
    StaticInterceptorConfig,
    TimestampInterceptorConfig,
    UuidInterceptorConfig,
    random_uuids,
    split_list,
)
from rayflume.interceptors.callable import CallableInterceptorConfig, resolve_callable_interceptor
from rayflume.interceptors.headers import keys_in, keys_matching, keys_named, remove_headers, set_header
from tests import _user_interceptors

USER = "tests._user_interceptors"


def batch_of(*header_dicts: dict) -> EventBatch:
    return EventBatch.from_events([Event(body=f"e{i}".encode(), headers=h) for i, h in enumerate(header_dicts)])


def header_lists(batch: EventBatch) -> list[list[tuple[str, str]]]:
    return batch.headers.to_pylist()


def header_dicts(batch: EventBatch) -> list[dict]:
    return [dict(h) for h in batch.headers.to_pylist()]


def assert_no_duplicate_keys(batch: EventBatch) -> None:
    for entries in header_lists(batch):
        keys = [k for k, _ in entries]
        assert len(keys) == len(set(keys)), entries


def build(kind_type: str, **props):
    cls = registry.lookup("interceptor", kind_type)
    assert cls is not None, kind_type
    return cls(type=kind_type, **props).build()


# -- headers.set_header --------------------------------------------------------------------------

def test_set_header_on_empty_batch():
    empty = EventBatch.empty()
    assert len(set_header(empty, "k", "v")) == 0
    assert len(set_header(empty, "k", pa.array([], pa.string()))) == 0


def test_set_header_on_events_without_headers():
    b = EventBatch.from_bodies([b"a", b"b", b"c"])
    out = set_header(b, "k", "v")
    assert header_lists(out) == [[("k", "v")]] * 3
    assert out.bodies() == [b"a", b"b", b"c"]


def test_set_header_replaces_existing_and_keeps_order_of_others():
    b = batch_of({"a": "1", "k": "old", "z": "2"}, {}, {"b": "3"})
    out = set_header(b, "k", "new")
    assert header_lists(out) == [[("a", "1"), ("z", "2"), ("k", "new")], [("k", "new")],
                                 [("b", "3"), ("k", "new")]]


def test_set_header_preserve_existing_keeps_old_value():
    b = batch_of({"k": "old"}, {"x": "1"})
    out = set_header(b, "k", "new", preserve_existing=True)
    assert header_dicts(out) == [{"k": "old"}, {"x": "1", "k": "new"}]


def test_set_header_removes_duplicate_occurrences():
    headers = pa.array([[("k", "1"), ("x", "y"), ("k", "2")], [("k", "3")]], HEADERS_TYPE)
    b = EventBatch.from_bodies([b"a", b"b"], headers)
    out = set_header(b, "k", "new")
    assert header_lists(out) == [[("x", "y"), ("k", "new")], [("k", "new")]]
    assert_no_duplicate_keys(out)


def test_set_header_with_array_values_and_nulls():
    b = batch_of({"k": "old"}, {}, {"k": "old2"}, {})
    out = set_header(b, "k", pa.array(["A", None, None, "D"]))
    assert header_dicts(out) == [{"k": "A"}, {}, {"k": "old2"}, {"k": "D"}]
    out = set_header(b, "k", pa.array(["A", "B", "C", "D"]), preserve_existing=True)
    assert header_dicts(out) == [{"k": "old"}, {"k": "B"}, {"k": "old2"}, {"k": "D"}]


def test_set_header_all_null_values_is_identity():
    b = batch_of({"a": "1"}, {})
    assert set_header(b, "k", pa.nulls(2, pa.string())) is b


def test_set_header_rejects_bad_values():
    b = batch_of({}, {})
    with pytest.raises(ValueError, match="3 header values for a batch of 2"):
        set_header(b, "k", pa.array(["a", "b", "c"]))
    with pytest.raises(TypeError):
        set_header(b, "k", pa.array([1, 2]))
    with pytest.raises(TypeError):
        set_header(b, "k", 5)


def test_set_header_on_sliced_batch_and_null_maps():
    headers = pa.MapArray.from_arrays(pa.array([0, 1, 3, 4, 4], pa.int32()), pa.array(["a", "b", "k", "d"]),
                                      pa.array(["1", "2", "3", "4"]), mask=pa.array([False, True, False, False]))
    b = EventBatch.from_bodies([b"0", b"1", b"2", b"3"], headers)
    out = set_header(b, "k", "v")
    # The null map's entries are not part of its event.
    assert header_lists(out) == [[("a", "1"), ("k", "v")], [("k", "v")], [("d", "4"), ("k", "v")], [("k", "v")]]
    assert out.headers.null_count == 0
    sliced = set_header(b.slice(2), "d", "new", preserve_existing=True)
    assert header_lists(sliced) == [[("d", "4")], [("d", "new")]]
    assert sliced.bodies() == [b"2", b"3"]
    assert header_lists(remove_headers(b, keys_named("zzz"))) == [[("a", "1")], [], [("d", "4")], []]


def _reference_set(entries, key, value, preserve):
    if value is None or (preserve and any(k == key for k, _ in entries)):
        return entries
    return [(k, v) for k, v in entries if k != key] + [(key, value)]


@pytest.mark.parametrize("seed", range(5))
def test_set_header_matches_reference_on_random_batches(seed):
    rng = random.Random(seed)
    keys = ["k", "a", "b", "timestamp"]
    entries = [[(rng.choice(keys), str(rng.randrange(100))) for _ in range(rng.randrange(4))] for _ in range(300)]
    b = EventBatch.from_bodies([str(i).encode() for i in range(300)], pa.array(entries, HEADERS_TYPE))
    offset = rng.randrange(50)
    b = b.slice(offset, 200)
    entries = entries[offset:offset + 200]
    values = [None if rng.random() < 0.2 else f"v{i}" for i in range(200)]
    for preserve in (False, True):
        out = set_header(b, "k", pa.array(values, pa.string()), preserve)
        assert header_lists(out) == [_reference_set(e, "k", v, preserve) for e, v in zip(entries, values)]
        out = set_header(b, "k", "s", preserve)
        assert header_lists(out) == [_reference_set(e, "k", "s", preserve) for e in entries]
        assert out.body.equals(b.body)
    for key in keys + ["missing"]:
        assert b.header(key).to_pylist() == [next((v for k, v in e if k == key), None) for e in entries]
        assert b.header(key).equals(pc.map_lookup(b.headers, pa.scalar(key, pa.string()), "first"))


def test_header_lookup_edge_cases():
    assert EventBatch.empty().header("k").to_pylist() == []
    assert EventBatch.from_bodies([b"a", b"b"]).header("k").to_pylist() == [None, None]
    headers = pa.MapArray.from_arrays(pa.array([0, 2, 3, 4], pa.int32()), pa.array(["k", "k", "k", "x"]),
                                      pa.array(["first", "second", "in null map", "y"]),
                                      mask=pa.array([False, True, False]))
    b = EventBatch.from_bodies([b"0", b"1", b"2"], headers)
    assert b.header("k").to_pylist() == ["first", None, None]
    assert b.header("x").to_pylist() == [None, None, "y"]


# -- headers.remove_headers ----------------------------------------------------------------------

def test_remove_headers_by_name_list_and_regex():
    b = batch_of({"a": "1", "b": "2", "ab": "3"}, {}, {"b": "4", "xaby": "5"})
    assert header_dicts(remove_headers(b, keys_named("b"))) == [{"a": "1", "ab": "3"}, {}, {"xaby": "5"}]
    assert header_dicts(remove_headers(b, keys_in(["a", "ab"]))) == [{"b": "2"}, {}, {"b": "4", "xaby": "5"}]
    # Regexes match whole names, as Java's Matcher.matches does.
    assert header_dicts(remove_headers(b, keys_matching("a.?"))) == [{"b": "2"}, {}, {"b": "4", "xaby": "5"}]


def test_remove_headers_edge_cases():
    assert len(remove_headers(EventBatch.empty(), keys_named("a"))) == 0
    no_headers = EventBatch.from_bodies([b"x", b"y"])
    assert remove_headers(no_headers, keys_named("a")) is no_headers
    b = batch_of({"a": "1"}, {"b": "2"})
    assert remove_headers(b, keys_named("zzz")) is b
    gone = remove_headers(b, lambda keys: np.ones(len(keys), dtype=bool))
    assert header_lists(gone) == [[], []]
    assert gone.bodies() == [b"e0", b"e1"]
    with pytest.raises(ValueError, match="header keys"):
        remove_headers(b, lambda keys: np.ones(5, dtype=bool))
    with pytest.raises(TypeError):
        remove_headers(b, lambda keys: pa.array([1, 2]))


# -- timestamp -----------------------------------------------------------------------------------

def test_timestamp_sets_epoch_ms():
    b = batch_of({}, {"timestamp": "1"}, {"x": "y"})
    before = time.time_ns() // 1_000_000
    out = build("timestamp").intercept(b)
    after = time.time_ns() // 1_000_000
    stamps = [int(d["timestamp"]) for d in header_dicts(out)]
    assert all(before <= s <= after for s in stamps)
    assert len(set(stamps)) == 1
    assert header_dicts(out)[2]["x"] == "y"
    assert_no_duplicate_keys(out)


def test_timestamp_header_name_and_preserve_existing():
    b = batch_of({"ts": "1"}, {})
    out = build("timestamp", header_name="ts", preserve_existing=True).intercept(b)
    d = header_dicts(out)
    assert d[0] == {"ts": "1"} and int(d[1]["ts"]) > 1_600_000_000_000
    assert "timestamp" not in d[1]
    cfg = TimestampInterceptorConfig(type="timestamp")
    assert (cfg.header_name, cfg.preserve_existing) == ("timestamp", False)
    with pytest.raises(ValidationError, match="header_name"):
        TimestampInterceptorConfig(type="timestamp", header_name="")


# -- host ----------------------------------------------------------------------------------------

def test_host_uses_ip_by_default():
    cfg = HostInterceptorConfig(type="host")
    assert (cfg.host_header, cfg.use_ip, cfg.preserve_existing) == ("host", True, False)
    out = cfg.build().intercept(batch_of({}, {"host": "old"}))
    expected = socket.gethostbyname(socket.gethostname())
    assert header_dicts(out) == [{"host": expected}, {"host": expected}]


def test_host_name_header_and_preserve():
    out = build("host", use_ip=False, host_header="h", preserve_existing=True).intercept(batch_of({"h": "x"}, {}))
    assert header_dicts(out) == [{"h": "x"}, {"h": socket.getfqdn(socket.gethostname())}]


def test_host_unresolvable_leaves_events_unchanged(monkeypatch):
    def fail(_name):
        raise socket.gaierror("no such host")

    monkeypatch.setattr(socket, "gethostbyname", fail)
    interceptor = HostInterceptor(use_ip=True)
    b = batch_of({"a": "1"})
    assert interceptor.intercept(b) is b


# -- static --------------------------------------------------------------------------------------

def test_static_defaults_preserve_existing():
    cfg = StaticInterceptorConfig(type="static")
    assert (cfg.key, cfg.value, cfg.preserve_existing) == ("key", "value", True)
    out = cfg.build().intercept(batch_of({"key": "mine"}, {}))
    assert header_dicts(out) == [{"key": "mine"}, {"key": "value"}]


def test_static_without_preserve_overwrites():
    out = build("static", key="env", value="prod", preserve_existing=False).intercept(batch_of({"env": "dev"}, {}))
    assert header_dicts(out) == [{"env": "prod"}, {"env": "prod"}]
    assert_no_duplicate_keys(out)


# -- remove_header -------------------------------------------------------------------------------

def test_remove_header_with_name():
    out = build("remove_header", with_name="a").intercept(batch_of({"a": "1", "aa": "2"}, {"a": "3"}))
    assert header_dicts(out) == [{"aa": "2"}, {}]


def test_remove_header_from_list_default_and_custom_separator():
    b = batch_of({"a": "1", "b": "2", "c": "3", "d": "4"})
    assert header_dicts(build("remove_header", from_list="a , b,c").intercept(b)) == [{"d": "4"}]
    assert header_dicts(build("remove_header", from_list="a|d", from_list_separator=r"\|").intercept(b)) == \
        [{"b": "2", "c": "3"}]
    assert split_list("a, b,,c ,", r"\s*,\s*") == ["a", "b", "c"]


def test_remove_header_matching_is_a_full_match_and_combines():
    b = batch_of({"tmp_1": "1", "x_tmp_1": "2", "keep": "3", "gone": "4", "listed": "5"})
    out = build("remove_header", matching="tmp_\\d+", with_name="gone", from_list="listed").intercept(b)
    assert header_dicts(out) == [{"x_tmp_1": "2", "keep": "3"}]


def test_remove_header_without_settings_is_identity_and_bad_regex_is_rejected():
    b = batch_of({"a": "1"})
    assert build("remove_header").intercept(b) is b
    with pytest.raises(ValidationError, match="matching"):
        RemoveHeaderInterceptorConfig(type="remove_header", matching="(unclosed")
    with pytest.raises(ValidationError, match="RE2"):
        RemoveHeaderInterceptorConfig(type="remove_header", matching="a(?=b)")
    with pytest.raises(ValidationError, match="from_list_separator"):
        RemoveHeaderInterceptorConfig(type="remove_header", from_list_separator="")


# -- uuid ----------------------------------------------------------------------------------------

def test_uuid_unique_valid_and_preserved():
    cfg = UuidInterceptorConfig(type="uuid")
    assert (cfg.header_name, cfg.preserve_existing, cfg.prefix) == ("id", True, "")
    b = EventBatch.from_bodies([b"x"] * 1000)
    b = set_header(b, "id", pa.array(["given"] + [None] * 999, pa.string()))
    ids = [d["id"] for d in header_dicts(cfg.build().intercept(b))]
    assert ids[0] == "given"
    assert len(set(ids[1:])) == 999
    for s in ids[1:]:
        u = uuid.UUID(s)
        assert (str(u), u.version, u.variant) == (s, 4, uuid.RFC_4122)


def test_uuid_prefix_header_name_and_overwrite():
    out = build("uuid", header_name="eid", prefix="agent1-", preserve_existing=False).intercept(
        batch_of({"eid": "old"}, {}))
    ids = [d["eid"] for d in header_dicts(out)]
    assert all(re.fullmatch(r"agent1-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", s)
               for s in ids), ids
    assert random_uuids(0).to_pylist() == []
    assert random_uuids(2, "é").to_pylist()[0].startswith("é")


# -- configs and the registry --------------------------------------------------------------------

def test_registry_and_unknown_keys():
    assert set(registry.known_types("interceptor")) >= {"timestamp", "host", "static", "remove_header", "uuid"}
    assert not any(cls is CallableInterceptorConfig for cls in
                   (registry.lookup("interceptor", t) for t in registry.known_types("interceptor")))
    with pytest.raises(ValidationError, match="headerName"):
        TimestampInterceptorConfig(type="timestamp", headerName="x")
    with pytest.raises(ValidationError):
        StaticInterceptorConfig(type="static", preserve_existing="maybe")


# -- chains --------------------------------------------------------------------------------------

def test_chain_runs_in_order():
    add = StaticInterceptorConfig(type="static", key="a", value="1").build()
    remove = RemoveHeaderInterceptorConfig(type="remove_header", with_name="a").build()
    b = batch_of({})
    assert header_dicts(InterceptorChain([add, remove]).intercept(b)) == [{}]
    assert header_dicts(InterceptorChain([remove, add]).intercept(b)) == [{"a": "1"}]
    first = StaticInterceptorConfig(type="static", key="k", value="first").build()
    second = StaticInterceptorConfig(type="static", key="k", value="second").build()
    overwrite = StaticInterceptorConfig(type="static", key="k", value="second", preserve_existing=False).build()
    assert header_dicts(InterceptorChain([first, second]).intercept(b)) == [{"k": "first"}]
    assert header_dicts(InterceptorChain([first, overwrite]).intercept(b)) == [{"k": "second"}]


def test_chain_of_all_builtins_on_a_batch():
    chain = InterceptorChain([build("timestamp"), build("host"), build("static", key="env", value="dev"),
                              build("uuid"), build("remove_header", with_name="host")])
    out = chain.intercept(EventBatch.from_bodies([b"x"] * 10))
    for d in header_dicts(out):
        assert set(d) == {"timestamp", "env", "id"}
    assert_no_duplicate_keys(out)


# -- callable interceptors -----------------------------------------------------------------------

def test_callable_batch_mode():
    cfg = resolve_callable_interceptor({"type": f"{USER}:drop_debug"})
    assert cfg.mode == "batch"
    out = cfg.build().intercept(EventBatch.from_bodies([b"debug 1", b"info", b"debug 2", b"warn"]))
    assert out.bodies() == [b"info", b"warn"]


def test_callable_event_mode_modifies_and_drops():
    interceptor = resolve_callable_interceptor({"type": f"{USER}:shout", "mode": "event"}).build()
    out = interceptor.intercept(batch_of({"a": "1"}, {}).with_body(pa.array([b"hi", b"drop"])))
    assert out.bodies() == [b"HI"]
    assert header_dicts(out) == [{"a": "1", "shouted": "yes"}]
    everything_dropped = interceptor.intercept(EventBatch.from_bodies([b"drop"]))
    assert len(everything_dropped) == 0


def test_callable_class_with_args_in_both_modes_and_close():
    _user_interceptors.closed_tags.clear()
    batch_mode = resolve_callable_interceptor({"type": f"{USER}:Tagger", "args": {"tag": "t", "value": "v"}}).build()
    event_mode = resolve_callable_interceptor({"type": f"{USER}:Tagger", "mode": "event", "args": {"tag": "e"}}).build()
    b = batch_of({}, {"t": "old"})
    assert header_dicts(batch_mode.intercept(b)) == [{"t": "v"}, {"t": "v"}]
    assert header_dicts(event_mode.intercept(b)) == [{"e": "1"}, {"t": "old", "e": "1"}]
    chain = InterceptorChain([batch_mode, event_mode])
    chain.close()
    assert _user_interceptors.closed_tags == ["t", "e"]


def test_callable_dotted_attribute():
    out = resolve_callable_interceptor({"type": f"{USER}:Outer.nested"}).build().intercept(batch_of({}, {}))
    assert len(out) == 1


def test_callable_in_chain_drops_stop_the_chain():
    drop_all = resolve_callable_interceptor({"type": f"{USER}:drop_debug"}).build()
    never = resolve_callable_interceptor({"type": f"{USER}:returns_list"}).build()
    out = InterceptorChain([drop_all, never]).intercept(EventBatch.from_bodies([b"debug"]))
    assert len(out) == 0


@pytest.mark.parametrize("raw, match", [
    ({"type": "no_such_module_xyz:f"}, r"no_such_module_xyz.*PYTHONPATH"),
    ({"type": "tests.no_such_module_xyz:f"}, r"tests.no_such_module_xyz:f.*PYTHONPATH"),
    ({"type": f"{USER}:missing"}, r"has no attribute 'missing'.*PYTHONPATH"),
    ({"type": f"{USER}:Outer.missing"}, r"has no attribute 'Outer.missing'"),
    ({"type": f"{USER}:"}, r"needs both a module and an attribute"),
    ({"type": "a:b:c"}, r"import path"),
    ({"type": f"{USER}:NOT_CALLABLE"}, r"not callable"),
    ({"type": f"{USER}:NoIntercept"}, r"no intercept\(\) method"),
    ({"type": f"{USER}:drop_debug", "args": {"x": 1}}, r"'args' is only for classes"),
    ({"type": f"{USER}:Tagger", "args": {"nope": 1}}, r"do not fit"),
    ({"type": f"{USER}:Tagger"}, r"do not fit"),
    ({"type": f"{USER}:drop_debug", "mode": "stream"}, r"mode"),
    ({"type": f"{USER}:drop_debug", "bogus": 1}, r"bogus"),
])
def test_callable_config_errors(raw, match):
    with pytest.raises(ValueError, match=match):
        resolve_callable_interceptor(raw)


def test_callable_module_that_fails_to_import(tmp_path, monkeypatch):
    (tmp_path / "broken_user_mod_xyz.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="RuntimeError: boom at import"):
        resolve_callable_interceptor({"type": "broken_user_mod_xyz:f"})


def test_callable_resolve_rejects_non_mappings():
    with pytest.raises(ValueError):
        resolve_callable_interceptor("tests._user_interceptors:drop_debug")
    with pytest.raises(ValueError, match="type"):
        resolve_callable_interceptor({"mode": "batch"})


def test_callable_wrong_return_types():
    b = batch_of({})
    with pytest.raises(TypeError, match="must return an EventBatch, got list"):
        resolve_callable_interceptor({"type": f"{USER}:returns_list"}).build().intercept(b)
    with pytest.raises(TypeError, match="must return an Event or None, got str"):
        resolve_callable_interceptor({"type": f"{USER}:returns_string", "mode": "event"}).build().intercept(b)
    grow = resolve_callable_interceptor({"type": f"{USER}:duplicate"}).build()
    with pytest.raises(ValueError, match="grew a batch"):
        InterceptorChain([grow]).intercept(b)
