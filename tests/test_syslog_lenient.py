"""Syslog parsing is as lenient as Flume's SyslogUtils on the messages Flume accepts.

The table holds the cases of Flume's own TestSyslogUtils (flume-ng-core) that apply to rayflume,
each as raw message -> expected headers and body, plus the edges of the same rules. Expected
timestamps are computed here from the calendar (``calendar.timegm`` and a known zone offset), not
with the parser's own ``mktime`` path, so a wrong zone or year shows. Local time is pinned with a
POSIX ``TZ`` (no tz database needed): ``IST-5:30`` (UTC+5:30, no DST) for most cases, a US
Eastern rule where daylight saving matters.

Where rayflume knowingly differs from Flume on the same input the case says why in a comment.
"""
from __future__ import annotations

import calendar
import datetime as dt
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rayflume.sources.syslog import SyslogUdpSourceConfig
from rayflume.sources.syslog_parser import INVALID, STATUS_HEADER, bsd_ms, parse_keep_fields, parse_messages
from tests.channel_contract import closing_factory
from tests.net_helpers import CollectingPipeline

PLUS_0530 = "IST-5:30"  # POSIX TZ: the name, then the offset *west* of UTC, so this is UTC+5:30
US_EASTERN = "EST5EDT,M3.2.0,M11.1.0"  # UTC-5, UTC-4 from the 2nd Sunday of March to the 1st of November
OFFSET_0530_S = 5 * 3600 + 30 * 60


@pytest.fixture
def agent_zone(monkeypatch):
    """Set the agent's local time zone for the test; the old one is restored afterwards."""
    def set_zone(tz: str) -> None:
        monkeypatch.setenv("TZ", tz)
        time.tzset()
    yield set_zone
    monkeypatch.undo()
    time.tzset()


def utc_ms(y, mo, d, h, mi, s, ms=0, offset_s=0) -> str:
    """Epoch ms (as the header's text) of a wall-clock time at ``offset_s`` east of UTC."""
    return str((calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) - offset_s) * 1000 + ms)


def local_0530(y, mo, d, h, mi, s, ms=0) -> str:
    return utc_ms(y, mo, d, h, mi, s, ms, OFFSET_0530_S)


# "Now" for year inference: 2024-06-15 12:00:00 at UTC+5:30.
NOW = calendar.timegm((2024, 6, 15, 12, 0, 0, 0, 0, 0)) - OFFSET_0530_S

HOST = "ubuntu-11.cloudera.com"  # Flume's test host

FLUME_CASES = [
    # id, raw, headers, body
    ("TestHeader0 no version, +08:00",
     b"<10>2012-04-13T11:11:11+08:00 ubuntu-11.cloudera.com some msg",
     {"timestamp": utc_ms(2012, 4, 13, 11, 11, 11, offset_s=8 * 3600), "host": HOST}, b"some msg"),
    ("TestHeader1 version, zone-less: agent's zone",
     b"<10>1 2012-04-13T11:11:11 ubuntu-11.cloudera.com some msg",
     {"timestamp": local_0530(2012, 4, 13, 11, 11, 11), "host": HOST}, b"some msg"),
    ("TestHeader2 version, Z, no app-name..msgid",
     b"<10>1 2012-04-13T11:11:11Z ubuntu-11.cloudera.com some msg",
     {"timestamp": utc_ms(2012, 4, 13, 11, 11, 11), "host": HOST}, b"some msg"),
    ("TestHeader3 version, +08:00",
     b"<10>1 2012-04-13T11:11:11+08:00 ubuntu-11.cloudera.com some msg",
     {"timestamp": utc_ms(2012, 4, 13, 11, 11, 11, offset_s=8 * 3600), "host": HOST}, b"some msg"),
    ("TestHeader4 nil timestamp",
     b"<10>1 - ubuntu-11.cloudera.com some msg", {"host": HOST}, b"some msg"),
    ("TestHeader5 nil host, zone-less",
     b"<10>1 2012-04-13T11:11:11 - some msg", {"timestamp": local_0530(2012, 4, 13, 11, 11, 11)}, b"some msg"),
    ("TestHeader6 nil host, Z",
     b"<10>1 2012-04-13T11:11:11Z - some msg", {"timestamp": utc_ms(2012, 4, 13, 11, 11, 11)}, b"some msg"),
    ("TestHeader7 nil host, +08:00",
     b"<10>1 2012-04-13T11:11:11+08:00 - some msg",
     {"timestamp": utc_ms(2012, 4, 13, 11, 11, 11, offset_s=8 * 3600)}, b"some msg"),
    ("TestHeader8 milliseconds, zone-less",
     b"<10>1 2012-04-13T11:11:11.999 ubuntu-11.cloudera.com some msg",
     {"timestamp": local_0530(2012, 4, 13, 11, 11, 11, 999), "host": HOST}, b"some msg"),
    ("TestHeader9 RFC 3164 date, two spaces before a two-digit day",
     b"<10>Jun  14 11:06:42 ubuntu-11.cloudera.com some msg",
     {"timestamp": local_0530(2024, 6, 14, 11, 6, 42), "host": HOST}, b"some msg"),
    # Flume's test expects 17:20:01.123 read in the agent's zone: its first date format has no
    # zone and SimpleDateFormat ignores the rest of the text. rayflume applies the -07:00 that
    # was sent (as it does for every zoned RFC 5424 timestamp) and also cuts to milliseconds.
    ("TestHeader11 microseconds cut to milliseconds",
     b"<10>2014-10-03T17:20:01.123456-07:00 ubuntu-11.cloudera.com some msg",
     {"timestamp": utc_ms(2014, 10, 3, 17, 20, 1, 123, offset_s=-7 * 3600), "host": HOST}, b"some msg"),
    ("TestRfc3164HeaderApacheLogWithNulls: a '-' in the body stays",
     b"<10>Jun  3 10:06:42 ubuntu-11.cloudera.com - hyphen_null_breaks_5424_pattern [07/Jun/2012:14:46:44 -0600]",
     {"timestamp": local_0530(2024, 6, 3, 10, 6, 42), "host": HOST},
     b"- hyphen_null_breaks_5424_pattern [07/Jun/2012:14:46:44 -0600]"),
    ("testExtractBadEvent1 non-numeric priority", b"<10F> bad bad data",
     {"Facility": "0", "Severity": "0", STATUS_HEADER: INVALID}, b"<10F> bad bad data"),
    ("testExtractBadEvent2 no priority", b"hi guys! <10> bad bad data",
     {"Facility": "0", "Severity": "0", STATUS_HEADER: INVALID}, b"hi guys! <10> bad bad data"),
    ("testExtractBadEvent3 empty priority", b"<> bad bad data",
     {"Facility": "0", "Severity": "0", STATUS_HEADER: INVALID}, b"<> bad bad data"),
    ("testExtractBadEvent4 priority too long", b"<123123123123123123123123123123> bad bad data",
     {"Facility": "0", "Severity": "0", STATUS_HEADER: INVALID}, b"<123123123123123123123123123123> bad bad data"),
    # Flume keeps the "<10>" of a message it cannot parse further in the body; rayflume's PRI-only
    # class removes it (what Python's SysLogHandler sends reads as the message alone).
    ("testExtractGoodEvent priority only", b"<10>Good good good data", {}, b"Good good good data"),
]

EDGE_CASES = [
    ("version before an RFC 3164 date", b"<10>1 Oct 11 22:14:15 host some msg",
     {"timestamp": local_0530(2023, 10, 11, 22, 14, 15), "host": "host"}, b"some msg"),
    ("space but no version before an RFC 3164 date", b"<10> Jun  1 22:14:15 host some msg",
     {"timestamp": local_0530(2024, 6, 1, 22, 14, 15), "host": "host"}, b"some msg"),
    ("nil timestamp and nil host", b"<10>1 - - some msg", {}, b"some msg"),
    ("nil timestamp, no version", b"<10>- host some msg", {"host": "host"}, b"some msg"),
    ("a tag after a loose header still becomes AppName/ProcId", b"<10>1 - host sshd[42]: accepted",
     {"host": "host", "AppName": "sshd", "ProcId": "42"}, b"accepted"),
    ("fraction cut, not rounded", b"<10>1 2012-04-13T11:11:11.99999Z h m",
     {"timestamp": utc_ms(2012, 4, 13, 11, 11, 11, 999), "host": "h"}, b"m"),
    # Flume's SimpleDateFormat reads ".5" as 5 ms; a fraction of a second is 500 ms.
    ("one fraction digit is tenths", b"<10>1 2012-04-13T11:11:11.5Z h m",
     {"timestamp": utc_ms(2012, 4, 13, 11, 11, 11, 500), "host": "h"}, b"m"),
    ("nine fraction digits, zone-less", b"<10>2012-04-13T11:11:11.123456789 h m",
     {"timestamp": local_0530(2012, 4, 13, 11, 11, 11, 123), "host": "h"}, b"m"),
    ("impossible date: no timestamp, the rest still parsed", b"<10>1 2012-02-30T11:11:11 h m", {"host": "h"}, b"m"),
    ("complete RFC 5424 without a zone keeps its strict fields",
     b"<13>1 2003-10-11T22:14:15.003 h app 77 ID1 - msg",
     {"Facility": "1", "Severity": "5", "timestamp": local_0530(2003, 10, 11, 22, 14, 15, 3), "host": "h",
      "AppName": "app", "ProcId": "77", "MsgId": "ID1"}, b"msg"),
    ("complete RFC 5424 with a nil host", b"<13>1 2003-10-11T22:14:15Z - app - - - msg",
     {"Facility": "1", "Severity": "5", "timestamp": utc_ms(2003, 10, 11, 22, 14, 15), "AppName": "app"}, b"msg"),
    ("priority above 191 stays invalid", b"<192>1 - host msg",
     {"Facility": "0", "Severity": "0", STATUS_HEADER: INVALID}, b"<192>1 - host msg"),
]

CASES = FLUME_CASES + EDGE_CASES


def expected_headers(headers: dict) -> dict:
    """The case's headers, with the Facility/Severity of <10> (1 and 2) where the case leaves them out."""
    if STATUS_HEADER in headers or "Facility" in headers:
        return headers
    return {"Facility": "1", "Severity": "2", **headers}


@pytest.mark.parametrize("raw,headers,body", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parses_like_flume(agent_zone, raw, headers, body):
    agent_zone(PLUS_0530)
    # Flume's test messages end in "\n" (one UDP datagram each); the UDP source strips it, and
    # test_udp_datagrams_end_to_end below covers that path.
    event = parse_messages([raw], now_s=NOW).batch.to_events()[0]
    assert event.headers == expected_headers(headers)
    assert event.body == body


def test_bad_and_good_events_in_one_batch_keep_their_own_headers(agent_zone):
    """Flume's testBadEventGoodEvent / testGoodEventBadEvent / ...: mixed in one batch, in order."""
    agent_zone(PLUS_0530)
    result = parse_messages([c[1] for c in CASES], now_s=NOW)
    events = result.batch.to_events()
    assert [e.body for e in events] == [c[3] for c in CASES]
    assert [e.headers for e in events] == [expected_headers(c[2]) for c in CASES]
    assert result.counts["invalid"] == sum(1 for c in CASES if STATUS_HEADER in c[2])


KEEP_MSG = b"<10>1 2012-04-13T11:11:11+08:00 ubuntu-11.cloudera.com some msg"


@pytest.mark.parametrize("keep,body", [
    ("none", b"some msg"),
    ("false", b"some msg"),
    ("hostname", b"ubuntu-11.cloudera.com some msg"),
    ("timestamp hostname", b"2012-04-13T11:11:11+08:00 ubuntu-11.cloudera.com some msg"),
    ("priority timestamp hostname", b"<10>2012-04-13T11:11:11+08:00 ubuntu-11.cloudera.com some msg"),
    ("priority version timestamp hostname", KEEP_MSG),
    ("all", KEEP_MSG),
    ("true", KEEP_MSG),
])
def test_keep_fields_like_flume(keep, body):
    """Flume's testKeepFields, on its loose RFC 5424 message; headers do not depend on keep_fields."""
    event = parse_messages([KEEP_MSG], parse_keep_fields(keep)).batch.to_events()[0]
    assert event.body == body
    assert event.headers == {"Facility": "1", "Severity": "2", "host": HOST,
                             "timestamp": utc_ms(2012, 4, 13, 11, 11, 11, offset_s=8 * 3600)}


def test_keep_fields_with_a_nil_timestamp_keeps_the_dash():
    event = parse_messages([b"<10>1 - h some msg"], parse_keep_fields("timestamp hostname")).batch.to_events()[0]
    assert event.body == b"- h some msg"


# -- RFC 3164 year: at most one calendar month ahead -------------------------------------------------

def add_months(day: dt.datetime, months: int) -> dt.datetime:
    total = day.month - 1 + months
    year, month = day.year + total // 12, total % 12 + 1
    return day.replace(year=year, month=month, day=min(day.day, calendar.monthrange(year, month)[1]))


def epoch_0530(moment: dt.datetime) -> float:
    return calendar.timegm(moment.timetuple()) - OFFSET_0530_S


@pytest.mark.parametrize("clock_start", [dt.datetime(2023, 11, 20, 10, 0, 0), dt.datetime(2024, 1, 31, 23, 59, 0)],
                         ids=["from-nov-20", "from-jan-31"])
def test_rfc3164_year_window_like_flume(agent_zone, clock_start):
    """Flume's TestRfc3164Dates: with the clock at each of 14 consecutive months, dates from ten
    months back to one month ahead (less a day) get their own year."""
    agent_zone(PLUS_0530)
    for clock_month in range(14):
        now = add_months(clock_start, clock_month)
        for months_ahead in range(-10, 2):
            sent = add_months(now, months_ahead) - dt.timedelta(days=1 if months_ahead == 1 else 0)
            stamp = sent.strftime("%b  %d %H:%M:%S").replace("  0", "  ")  # Flume's "MMM  d HH:mm:ss"
            raw = b"<10>%s ubuntu-11.cloudera.com some msg" % stamp.encode()
            event = parse_messages([raw], now_s=epoch_0530(now)).batch.to_events()[0]
            assert event.headers["timestamp"] == str(int(epoch_0530(sent)) * 1000), (now, stamp)
            assert event.body == b"some msg"


@pytest.mark.parametrize("now,stamp,year", [
    (dt.datetime(2024, 11, 30, 12, 0, 0), "Dec 30 12:00:00", 2024),  # exactly one month ahead
    (dt.datetime(2024, 11, 30, 12, 0, 0), "Dec 30 12:00:01", 2023),  # a second more: last year's
    (dt.datetime(2024, 2, 29, 12, 0, 0), "Mar 31 12:00:00", 2024),   # a month before Mar 31 is Feb 29
    (dt.datetime(2024, 2, 29, 12, 0, 0), "Mar 31 12:00:01", 2023),
    (dt.datetime(2024, 12, 15, 0, 0, 0), "Jan  10 08:00:00", 2025),  # next year's, within the month
    (dt.datetime(2025, 1, 1, 0, 0, 5), "Dec 31 23:59:59", 2024),     # Dec 31 read on Jan 1
    (dt.datetime(2025, 3, 1, 0, 0, 0), "Feb 29 00:00:00", 2024),     # only a leap year has it
])
def test_rfc3164_year_boundaries(agent_zone, now, stamp, year):
    agent_zone(PLUS_0530)
    month, day, clock = stamp.split()
    sent = dt.datetime.strptime(f"{year} {month} {day} {clock}", "%Y %b %d %H:%M:%S")
    assert bsd_ms(stamp, epoch_0530(now)) == int(epoch_0530(sent)) * 1000


def test_rfc3164_impossible_date_has_no_year(agent_zone):
    agent_zone(PLUS_0530)
    assert bsd_ms("Feb 30 10:00:00", NOW) is None
    assert bsd_ms("Feb 29 10:00:00", epoch_0530(dt.datetime(2026, 6, 1))) is None  # no leap year within reach


# -- zone-less timestamps in the agent's zone, across daylight saving --------------------------------

def test_zone_less_timestamps_follow_the_agents_daylight_saving(agent_zone):
    agent_zone(US_EASTERN)
    raws = [b"<10>1 2012-01-13T11:11:11.250 h winter", b"<10>1 2012-07-13T11:11:11 h summer",
            b"<10>2012-11-04T00:30:00 h before-the-change", b"<10>1 2012-07-13T11:11:11Z h zoned"]
    events = parse_messages(raws).batch.to_events()
    assert [e.headers["timestamp"] for e in events] == [
        utc_ms(2012, 1, 13, 11, 11, 11, 250, offset_s=-5 * 3600),
        utc_ms(2012, 7, 13, 11, 11, 11, offset_s=-4 * 3600),
        utc_ms(2012, 11, 4, 0, 30, 0, offset_s=-4 * 3600),
        utc_ms(2012, 7, 13, 11, 11, 11)]
    assert [e.body for e in events] == [b"winter", b"summer", b"before-the-change", b"zoned"]


def test_zone_less_and_zoned_timestamps_mixed_in_a_batch_of_many(agent_zone):
    """The vectorised path (many rows, many distinct minutes) agrees with the calendar."""
    agent_zone(PLUS_0530)
    raws, expected = [], []
    for i in range(500):
        minute, second, fraction = i % 60, (i * 7) % 60, i * 1999 % 1_000_000
        if i % 2:
            raws.append(b"<10>1 2021-03-04T05:%02d:%02d.%06d h m%d" % (minute, second, fraction, i))
            expected.append(local_0530(2021, 3, 4, 5, minute, second, fraction // 1000))
        else:
            raws.append(b"<10>1 2021-03-04T05:%02d:%02d.%06d-02:00 h m%d" % (minute, second, fraction, i))
            expected.append(utc_ms(2021, 3, 4, 5, minute, second, fraction // 1000, offset_s=-2 * 3600))
    events = parse_messages(raws).batch.to_events()
    assert [e.headers["timestamp"] for e in events] == expected
    assert [e.body for e in events] == [b"m%d" % i for i in range(500)]


# -- any mix of the loose pieces -----------------------------------------------------------------

LOOSE_PIECES = [b"<10>", b"<10F>", b"<>", b"1", b" ", b"  ", b"-", b"2012-04-13T11:11:11", b".123456789", b".5", b"Z",
                b"+08:00", b"Oct", b"  1", b" 11", b" 22:14:15", b"host", b"tag:", b"[42]", b"msg", b"\xff"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(LOOSE_PIECES), max_size=12).map(b"".join), min_size=1, max_size=20))
def test_fuzz_loose_messages_parse_without_error_and_keep_every_message(messages):
    events = parse_messages(messages, now_s=NOW).batch.to_events()
    assert len(events) == len(messages)
    for raw, event in zip(messages, events):
        assert set(event.headers) >= {"Facility", "Severity"}
        if event.headers.get(STATUS_HEADER) == INVALID:
            assert event.body == raw and event.headers["Facility"] == event.headers["Severity"] == "0"
        else:
            assert raw.endswith(event.body)
        assert event.headers.get("host") != "-"
        int(event.headers.get("timestamp", "0"))


# -- over UDP, one datagram each, as reported ---------------------------------------------------------

@pytest.fixture
def pipelines():
    with closing_factory(CollectingPipeline, quiet=False) as factory:
        yield factory


def test_udp_datagrams_end_to_end(pipelines):
    p = pipelines(SyslogUdpSourceConfig(type="syslog_udp", channels=["c"], bind="127.0.0.1", port=0).build("sysu"))
    sent = {
        b"<10>1 2012-04-13T11:11:11Z host first msg\n":
            ({"Facility": "1", "Severity": "2", "timestamp": utc_ms(2012, 4, 13, 11, 11, 11), "host": "host"},
             b"first msg"),
        b"<10>1 - host second msg\n": ({"Facility": "1", "Severity": "2", "host": "host"}, b"second msg"),
        b"<10>1 2012-04-13T11:11:11Z - third msg\n":
            ({"Facility": "1", "Severity": "2", "timestamp": utc_ms(2012, 4, 13, 11, 11, 11)}, b"third msg"),
        b"<10>2012-04-13T11:11:11+08:00 host fourth msg\n":
            ({"Facility": "1", "Severity": "2", "timestamp": utc_ms(2012, 4, 13, 11, 11, 11, offset_s=8 * 3600),
              "host": "host"}, b"fourth msg"),
        b"<10F> fifth msg\n": ({"Facility": "0", "Severity": "0", STATUS_HEADER: INVALID}, b"<10F> fifth msg"),
    }
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for datagram in sent:
            client.sendto(datagram, ("127.0.0.1", p.port))
    received = {e.body: e.headers for e in p.collect(len(sent))}
    assert received == {body: headers for headers, body in sent.values()}
