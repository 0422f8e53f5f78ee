"""Flume's path escapes, rounding, time zones, header sanitising and per-batch routing (no I/O)."""
from __future__ import annotations

import calendar
from datetime import datetime

import numpy as np
import pyarrow as pa
import pytest

from rayflume.errors import DeliveryError
from rayflume.event import Event, EventBatch
from rayflume.sinks.hdfs.paths import BucketRouter, parse_template, sanitize, static_root

HOSTS = {"localhost": "node1", "IP": "10.0.0.7", "FQDN": "node1.example.com"}


def ms(*args) -> int:
    return calendar.timegm(datetime(*args[:6]).timetuple()) * 1000 + (args[6] if len(args) > 6 else 0)


def batch(*events) -> EventBatch:
    return EventBatch.from_events([Event(body=f"e{i}".encode(), headers=h) for i, h in enumerate(events)])


def one(router: BucketRouter, headers: dict) -> str:
    routes = router.route(batch(headers))
    assert len(routes) == 1
    return routes[0].directory


def router(path: str, **kw) -> BucketRouter:
    kw.setdefault("time_zone", "UTC")
    return BucketRouter(path, kw.pop("prefix", "FlumeData"), hosts=HOSTS, **kw)


def test_flume_documented_rounding_example():
    r = router("/flume/events/%Y-%m-%d/%H%M/%S", round=True, round_value=10, round_unit="minute")
    assert one(r, {"timestamp": str(ms(2012, 6, 12, 11, 54, 34))}) == "/flume/events/2012-06-12/1150/00"


def test_every_time_escape_matches_java():
    t = ms(2012, 6, 5, 9, 4, 7, 123)
    template = "/r/" + "/".join(f"%{c}" for c in "aAbBcdeHIjkmnMpsStyYz") + "/%D"
    got = one(router(template), {"timestamp": str(t)})
    expected = ["Tue", "Tuesday", "Jun", "June", "Tue Jun 5 09:04:07 2012", "05", "5", "09", "09", "157", "9",
                "06", "6", "04", "AM", str(t // 1000), "07", str(t), "12", "2012", "+0000", "06", "05", "12"]
    assert got == "/r/" + "/".join(expected)


def test_afternoon_twelve_hour_clock_and_day_of_year():
    got = one(router("/r/%I-%p-%k-%j"), {"timestamp": str(ms(2012, 12, 31, 0, 30, 0))})
    assert got == "/r/12-AM-0-366"  # leap year; midnight is 12 AM on a 12-hour clock
    got = one(router("/r/%I-%p-%k"), {"timestamp": str(ms(2012, 12, 31, 13, 30, 0))})
    assert got == "/r/01-PM-13"


def test_time_zones_shift_fields_and_offset():
    t = str(ms(2012, 6, 12, 11, 54, 34))
    la = router("/r/%Y%m%d/%H%M/%z", time_zone="America/Los_Angeles", round=True, round_value=10,
                round_unit="minute")
    assert one(la, {"timestamp": t}) == "/r/20120612/0450/-0700"
    kolkata = router("/r/%H%M/%z", time_zone="Asia/Kolkata", round=True, round_value=10, round_unit="minute")
    assert one(kolkata, {"timestamp": t}) == "/r/1720/+0530"  # 17:24:34 local, rounded within the hour
    # The day changes with the zone.
    assert one(router("/r/%d", time_zone="Pacific/Auckland"), {"timestamp": str(ms(2012, 6, 12, 20, 0, 0))}) == "/r/13"


def test_dst_offset_changes_inside_one_day_are_not_merged():
    r = router("/r/%Y%m%d/%z", time_zone="Europe/Paris")
    b = batch({"timestamp": str(ms(2012, 3, 25, 0, 30, 0))}, {"timestamp": str(ms(2012, 3, 25, 2, 30, 0))})
    assert sorted(x.directory for x in r.route(b)) == ["/r/20120325/+0100", "/r/20120325/+0200"]


def test_rounding_is_calendar_based_like_flume():
    t = str(ms(2012, 6, 12, 11, 54, 34))
    assert one(router("/r/%H%M%S", round=True, round_value=7, round_unit="minute"), {"timestamp": t}) == "/r/114900"
    assert one(router("/r/%H%M%S", round=True, round_value=5, round_unit="hour"), {"timestamp": t}) == "/r/100000"
    assert one(router("/r/%H%M%S", round=True, round_value=15, round_unit="second"), {"timestamp": t}) == "/r/115430"


def test_t_is_never_rounded_but_s_is():
    t = ms(2012, 6, 12, 11, 54, 34, 567)
    got = one(router("/r/%t/%s", round=True, round_value=10, round_unit="minute"), {"timestamp": str(t)})
    assert got == f"/r/{t}/{ms(2012, 6, 12, 11, 50, 0) // 1000}"


def test_static_escapes_and_literal_percent():
    r = router("/r/%[localhost]/%[IP]/%[FQDN]/100%%")
    assert r.constant
    assert one(r, {}) == "/r/node1/10.0.0.7/node1.example.com/100%"
    assert router("/r/%[LOCALHOST]").route(batch({}))[0].directory == "/r/node1"


def test_header_escapes_and_missing_header_is_empty():
    r = router("/logs/%{app}/%{host}")
    routes = r.route(batch({"app": "web", "host": "h1"}, {"app": "web"}, {"app": "db", "host": "h1"}))
    assert [(x.directory, list(x.indices)) for x in routes] == [
        ("/logs/web/h1", [0]), ("/logs/web", [1]), ("/logs/db/h1", [2])]


def test_prefix_escapes_route_too():
    r = router("/logs/%Y", prefix="%{host}-%H")
    routes = r.route(batch({"timestamp": str(ms(2012, 1, 2, 3, 0, 0)), "host": "a"},
                           {"timestamp": str(ms(2012, 1, 2, 4, 0, 0)), "host": "a"}))
    assert [(x.directory, x.prefix) for x in routes] == [("/logs/2012", "a-03"), ("/logs/2012", "a-04")]


@pytest.mark.parametrize("hostile", ["../../etc", "..", ".", "/abs/olute", "a/../../b", "..\\..\\win",
                                     "x\x00y\n", "....//....", "%2e%2e"])
def test_hostile_header_values_stay_under_the_root(hostile):
    r = router("/data/flume/%{host}/in")
    d = one(r, {"host": hostile})
    assert d.startswith("/data/flume/")
    segments = d.split("/")
    assert ".." not in segments and "." not in segments
    assert d.endswith("/in") and d.count("/") == 4  # exactly one segment for the header
    assert not any(ord(c) < 32 for c in d)


def test_sanitize_rule():
    assert sanitize("../../etc") == "______etc"
    assert sanitize(".") == "_"
    assert sanitize("a.b") == "a.b"
    assert sanitize(None) == ""
    assert sanitize("é" * 300).encode() == ("é" * 100).encode()  # cut to 200 UTF-8 bytes, on a character


def test_hostile_header_in_a_root_level_segment():
    r = router("s3bucket/%{tenant}")
    assert r.root == "s3bucket"
    assert one(r, {"tenant": "../other-bucket"}) == "s3bucket/___other-bucket"
    assert one(r, {"tenant": ""}) == "s3bucket"


def test_static_root():
    assert static_root("/flume/events/%Y-%m-%d/%H%M/%S") == "/flume/events"
    assert static_root("/flume/ev-%Y/x") == "/flume"
    assert static_root("/flume/plain/") == "/flume/plain"
    assert static_root("bkt/%{h}") == "bkt"


def test_missing_timestamp_fails_the_batch_with_advice():
    r = router("/r/%Y")
    with pytest.raises(DeliveryError) as err:
        r.route(batch({"timestamp": "1"}, {}))
    msg = str(err.value)
    assert "1 of 2 events" in msg and "timestamp interceptor" in msg and "use_local_timestamp" in msg


def test_bad_timestamp_is_named():
    with pytest.raises(DeliveryError, match="not epoch"):
        router("/r/%Y").route(batch({"timestamp": "yesterday"}))


def test_headers_only_paths_need_no_timestamp():
    assert one(router("/r/%{h}"), {"h": "x"}) == "/r/x"


def test_use_local_timestamp_reads_the_clock_once():
    r = BucketRouter("/r/%Y/%H", use_local_timestamp=True, time_zone="UTC",
                     wall_clock=lambda: ms(2020, 2, 29, 23, 59, 59) / 1000)
    routes = r.route(batch({}, {"timestamp": "0"}))
    assert [(x.directory, x.indices) for x in routes] == [("/r/2020/23", None)]


def test_grouping_a_large_batch_keeps_event_order():
    n = 30_000
    rng = np.random.default_rng(7)
    hosts = rng.choice(["a", "b", "c"], n)
    stamps = ms(2012, 6, 12, 10, 0, 0) + rng.integers(0, 2 * 3_600_000, n)
    events = [Event(str(i).encode(), {"host": str(h), "timestamp": str(int(t))})
              for i, (h, t) in enumerate(zip(hosts, stamps))]
    routes = router("/r/%{host}/%H").route(EventBatch.from_events(events))
    assert len(routes) == 6
    seen = np.concatenate([x.indices for x in routes])
    assert sorted(seen.tolist()) == list(range(n))
    for x in routes:
        assert np.all(np.diff(x.indices) > 0)
        host, hour = x.directory.split("/")[2:]
        assert set(hosts[x.indices]) == {host}
        assert {(int(t) // 3_600_000) % 24 for t in stamps[x.indices]} == {int(hour)}


def test_sliced_batches_route_like_whole_ones():
    b = batch(*({"h": str(i % 2)} for i in range(10))).slice(3, 5)
    routes = router("/r/%{h}").route(b)
    assert [(x.directory, list(x.indices)) for x in routes] == [("/r/1", [0, 2, 4]), ("/r/0", [1, 3])]
    assert routes[0].take(b).bodies() == [b"e3", b"e5", b"e7"]


@pytest.mark.parametrize("template,fragment", [("/r/%Q", "unknown escape"), ("/r/%", "lone"),
                                               ("/r/%{}", "header name"), ("/r/%[host]", "host escape")])
def test_bad_templates(template, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_template(template)


def test_header_escape_values_come_from_arrow_map_lookup():
    # a header map with a null value behaves like a missing header
    headers = pa.array([[("h", None)], [("h", "v")]], pa.map_(pa.string(), pa.string()))
    b = EventBatch.from_bodies([b"x", b"y"], headers)
    assert [x.directory for x in router("/r/%{h}").route(b)] == ["/r", "/r/v"]
