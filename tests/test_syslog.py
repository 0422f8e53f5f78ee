"""The ``syslog_tcp`` / ``syslog_udp`` sources and their parser and framer.

Most tests drive a source with the real SourceRunner into an in-process memory channel (no Ray);
real clients (util-linux ``logger``, Python's SysLogHandler, raw and TLS sockets) send to it.
The last test runs syslog_tcp -> memory -> testing_sink on a local Ray.
"""
from __future__ import annotations

import logging
import logging.handlers
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from rayflume import testing
from rayflume.registry import lookup
from rayflume.sources.base import SourceContext
from rayflume.sources.syslog import SyslogTcpSourceConfig, SyslogUdpSourceConfig
from rayflume.sources.syslog_parser import (
    ALL,
    CONTINUATION,
    HEAD,
    INCOMPLETE,
    INVALID,
    NONE,
    STATUS_HEADER,
    StreamFramer,
    bsd_ms,
    parse_keep_fields,
    parse_messages,
)
from tests.channel_contract import closing_factory, wait_until
from tests.net_helpers import CollectingPipeline, cert  # noqa: F401  (cert: the fixture)

LOGGER = shutil.which("logger")
BOM = b"\xef\xbb\xbf"


# -- harness ---------------------------------------------------------------------------------------

Pipeline = CollectingPipeline


@pytest.fixture
def pipelines():
    with closing_factory(Pipeline, quiet=False) as factory:
        yield factory


def tcp_source(**kw):
    return SyslogTcpSourceConfig(type="syslog_tcp", channels=["c"], bind="127.0.0.1", port=0, **kw).build("sys")


def udp_source(**kw):
    return SyslogUdpSourceConfig(type="syslog_udp", channels=["c"], bind="127.0.0.1", port=0, **kw).build("sysu")


def send_tcp(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)


# -- the parser: a table of samples ----------------------------------------------------------------

def local_ms(y, mo, d, h, mi, s):
    return int(time.mktime((y, mo, d, h, mi, s, 0, 0, -1))) * 1000


NOW = time.mktime((2024, 6, 15, 12, 0, 0, 0, 0, -1))  # parsing "now" for RFC 3164 year inference

SAMPLES = [
    # RFC 5424 section 6.5 examples
    (b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - " + BOM
     + b"'su root' failed for lonvick on /dev/pts/8",
     {"Facility": "4", "Severity": "2", "timestamp": "1065910455003", "host": "mymachine.example.com",
      "AppName": "su", "MsgId": "ID47"},
     b"'su root' failed for lonvick on /dev/pts/8"),
    (b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts.",
     {"Facility": "20", "Severity": "5", "timestamp": "1061727255000", "host": "192.0.2.1", "AppName": "myproc",
      "ProcId": "8710"},
     b"%% It's time to make the do-nuts."),
    (b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" '
     b'eventSource="Application" eventID="1011"] ' + BOM + b"An application event log entry...",
     {"Facility": "20", "Severity": "5", "timestamp": "1065910455003", "host": "mymachine.example.com",
      "AppName": "evntslog", "MsgId": "ID47",
      "StructuredData": '[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"]'},
     b"An application event log entry..."),
    (b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" '
     b'eventSource="Application" eventID="1011"][examplePriority@32473 class="high"]',
     {"Facility": "20", "Severity": "5", "timestamp": "1065910455003", "host": "mymachine.example.com",
      "AppName": "evntslog", "MsgId": "ID47",
      "StructuredData": '[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"]'
                        '[examplePriority@32473 class="high"]'},
     b""),
    # escaped quote and bracket inside an SD value; nil timestamp
    (b'<13>1 - host app - - [id@1 a="q\\"uote" b="br\\]acket"] the msg',
     {"Facility": "1", "Severity": "5", "host": "host", "AppName": "app",
      "StructuredData": '[id@1 a="q\\"uote" b="br\\]acket"]'},
     b"the msg"),
    (b"<13>1 - - - - - -", {"Facility": "1", "Severity": "5"}, b""),
    (b"<13>1 2003-10-11T22:14:15+02:00 h a p m - \xff\xfe binary", {
        "Facility": "1", "Severity": "5", "timestamp": "1065903255000", "host": "h", "AppName": "a",
        "ProcId": "p", "MsgId": "m"}, b"\xff\xfe binary"),
    # a message with a newline in it (octet-counted framing allows that)
    (b"<13>1 - h a - - - line one\nline two", {"Facility": "1", "Severity": "5", "host": "h", "AppName": "a"},
     b"line one\nline two"),
    # impossible date: still RFC 5424, no timestamp header
    (b"<13>1 2003-13-45T25:61:61Z h a p m - x",
     {"Facility": "1", "Severity": "5", "host": "h", "AppName": "a", "ProcId": "p", "MsgId": "m"}, b"x"),
    # RFC 3164
    (b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
     {"Facility": "4", "Severity": "2", "timestamp": str(local_ms(2023, 10, 11, 22, 14, 15)), "host": "mymachine",
      "AppName": "su"},
     b"'su root' failed for lonvick on /dev/pts/8"),
    (b"<13>Feb  5 17:32:18 10.0.0.99 sshd[1234]: Accepted publickey",
     {"Facility": "1", "Severity": "5", "timestamp": str(local_ms(2024, 2, 5, 17, 32, 18)), "host": "10.0.0.99",
      "AppName": "sshd", "ProcId": "1234"},
     b"Accepted publickey"),
    (b"<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!",
     {"Facility": "1", "Severity": "5", "timestamp": str(local_ms(2024, 2, 5, 17, 32, 18)), "host": "10.0.0.99"},
     b"Use the BFG!"),
    (b"<13>Jun 15 12:30:00 su[99]: no host here",
     {"Facility": "1", "Severity": "5", "timestamp": str(local_ms(2024, 6, 15, 12, 30, 0)), "AppName": "su",
      "ProcId": "99"},
     b"no host here"),
    (b"<86>Jan  1 00:00:00 host postfix/smtpd[7]: connect from x",
     {"Facility": "10", "Severity": "6", "timestamp": str(local_ms(2024, 1, 1, 0, 0, 0)), "host": "host",
      "AppName": "postfix/smtpd", "ProcId": "7"},
     b"connect from x"),
    (b"<13>2003-10-11T22:14:15Z host tag: rsyslog forward format",
     {"Facility": "1", "Severity": "5", "timestamp": "1065910455000", "host": "host", "AppName": "tag"},
     b"rsyslog forward format"),
    (b"<13>Feb 30 10:00:00 host x", {"Facility": "1", "Severity": "5", "host": "host"}, b"x"),
    # PRI only (Python's SysLogHandler), and the PRI range
    (b"<14>hello from python", {"Facility": "1", "Severity": "6"}, b"hello from python"),
    (b"<0>x", {"Facility": "0", "Severity": "0"}, b"x"),
    (b"<191>x", {"Facility": "23", "Severity": "7"}, b"x"),
    # not complete RFC 5424, but Flume's loose form: version, nil timestamp, host, then the body
    (b"<13>1 - h a p m [unclosed x", {"Facility": "1", "Severity": "5", "host": "h"}, b"a p m [unclosed x"),
    # malformed: kept raw, marked Invalid, Facility and Severity 0 (as Flume)
    (b"<192>x", {"Facility": "0", "Severity": "0", STATUS_HEADER: INVALID}, b"<192>x"),
    (b"<1234>x", {"Facility": "0", "Severity": "0", STATUS_HEADER: INVALID}, b"<1234>x"),
    (b"no pri at all", {"Facility": "0", "Severity": "0", STATUS_HEADER: INVALID}, b"no pri at all"),
    (b"<abc>1 - - - - - -", {"Facility": "0", "Severity": "0", STATUS_HEADER: INVALID}, b"<abc>1 - - - - - -"),
    (b"<13", {"Facility": "0", "Severity": "0", STATUS_HEADER: INVALID}, b"<13"),
    (b"", {"Facility": "0", "Severity": "0", STATUS_HEADER: INVALID}, b""),
    (b"\xff\x00\xfe", {"Facility": "0", "Severity": "0", STATUS_HEADER: INVALID}, b"\xff\x00\xfe"),
]


@pytest.mark.parametrize("raw,headers,body", SAMPLES, ids=[repr(s[0][:40]) for s in SAMPLES])
def test_parser_sample(raw, headers, body):
    event = parse_messages([raw], now_s=NOW).batch.to_events()[0]
    assert event.headers == headers
    assert event.body == body


def test_parser_whole_table_in_one_batch_keeps_order_and_counts():
    result = parse_messages([s[0] for s in SAMPLES], now_s=NOW)
    events = result.batch.to_events()
    assert [e.body for e in events] == [s[2] for s in SAMPLES]
    assert [e.headers for e in events] == [s[1] for s in SAMPLES]
    invalid = sum(1 for s in SAMPLES if s[1].get(STATUS_HEADER) == INVALID)
    assert result.counts["invalid"] == invalid
    assert result.counts["rfc5424"] == 9
    assert sum(result.counts[k] for k in ("rfc5424", "rfc3164", "pri_only", "invalid")) == len(SAMPLES)


def test_parser_invalid_utf8_in_structured_data_is_replaced_in_the_header():
    event = parse_messages([b'<13>1 - h a - - [x@1 v="\xff"] m']).batch.to_events()[0]
    assert event.headers["StructuredData"] == '[x@1 v="\ufffd"]'
    assert event.body == b"m"


def test_bsd_year_inference():
    new_year = time.mktime((2025, 1, 1, 0, 0, 5, 0, 0, -1))
    assert bsd_ms("Dec 31 23:59:59", new_year) == local_ms(2024, 12, 31, 23, 59, 59)
    assert bsd_ms("Jan  1 00:00:30", new_year) == local_ms(2025, 1, 1, 0, 0, 30)  # a sender slightly ahead
    assert bsd_ms("Feb 29 00:00:00", new_year) == local_ms(2024, 2, 29, 0, 0, 0)  # the last leap year
    assert bsd_ms("Feb 30 00:00:00", new_year) is None


# -- keep_fields -----------------------------------------------------------------------------------

RAW5424 = b'<165>1 2003-10-11T22:14:15.003Z mymachine evntslog 42 ID47 [a@1 b="c"] hello'
RAW3164 = b"<34>Oct 11 22:14:15 mymachine su[7]: hello"


@pytest.mark.parametrize("keep,b5424,b3164", [
    ("none", b"hello", b"hello"),
    (False, b"hello", b"hello"),
    ("all", RAW5424, RAW3164),
    (True, RAW5424, RAW3164),
    ("hostname", b"mymachine hello", b"mymachine hello"),
    (["priority", "timestamp"], b"<165>2003-10-11T22:14:15.003Z hello", b"<34>Oct 11 22:14:15 hello"),
    ("priority version timestamp hostname", b"<165>1 2003-10-11T22:14:15.003Z mymachine hello",
     b"<34>Oct 11 22:14:15 mymachine hello"),
    (["app_name", "proc_id", "msg_id", "structured_data"], b'evntslog 42 ID47 [a@1 b="c"] hello',
     b"su[7]: hello"),
])
def test_keep_fields(keep, b5424, b3164):
    batch = parse_messages([RAW5424, RAW3164], parse_keep_fields(keep), now_s=NOW).batch
    assert batch.bodies() == [b5424, b3164]
    # headers do not depend on keep_fields
    assert batch.to_events()[0].headers["AppName"] == "evntslog"
    assert batch.to_events()[1].headers["ProcId"] == "7"


def test_keep_fields_rejects_unknown_names():
    assert parse_keep_fields("none") == NONE and parse_keep_fields("ALL") == ALL
    with pytest.raises(ValueError, match="unknown field 'color'"):
        parse_keep_fields("hostname color")
    config = lookup("source", "syslog_tcp")
    with pytest.raises(ValidationError, match="keep_fields"):
        config.model_validate({"type": "syslog_tcp", "channels": ["c"], "port": 0, "keep_fields": ["nope"]})


# -- framing ---------------------------------------------------------------------------------------

def frames_of(framer: StreamFramer, chunks) -> list[tuple[bytes, int]]:
    out = []
    for chunk in list(chunks) + [None]:
        frames, status = framer.flush() if chunk is None else framer.feed(chunk)
        codes = [0] * len(frames) if status is None else [int(c) for c in status]
        out.extend(zip(frames.to_pylist(), codes))
    return out


def merged(frames):
    """Consecutive continuation pieces joined (their boundaries depend on how bytes arrived)."""
    out = []
    for data, code in frames:
        if code == CONTINUATION and out and out[-1][1] == CONTINUATION:
            out[-1] = (out[-1][0] + data, CONTINUATION)
        else:
            out.append((data, code))
    return out


def test_framer_newline_crlf_nul_and_empty_lines():
    got = frames_of(StreamFramer(100), [b"<1>a\n<2>b\r\n\n<3>c\x00<4>d\x00\n<5>tail"])
    assert got == [(b"<1>a", 0), (b"<2>b", 0), (b"<3>c", 0), (b"<4>d", 0), (b"<5>tail", 0)]


def test_framer_octet_counting_and_mixed_framing_per_message():
    msgs = [b"<13>1 - h a - - - one", b"<13>1 - h a - - - two\nwith newline", b"<13>x"]
    stream = b"".join(b"%d %s" % (len(m), m) for m in msgs[:2]) + msgs[2] + b"\n" + b"5 <1>ab"
    got = frames_of(StreamFramer(1000), [stream])
    assert got == [(msgs[0], 0), (msgs[1], 0), (msgs[2], 0), (b"<1>ab", 0)]


def test_framer_is_independent_of_how_bytes_arrive():
    msgs = [b"<13>1 - h a - - - msg %d" % i for i in range(50)]
    stream = b"".join((b"%d %s" % (len(m), m)) if i % 3 else m + b"\n" for i, m in enumerate(msgs))
    whole = frames_of(StreamFramer(1000), [stream])
    assert [f for f, _ in whole] == msgs
    one_byte = frames_of(StreamFramer(1000), [stream[i:i + 1] for i in range(len(stream))])
    assert one_byte == whole


def test_framer_oversized_messages_are_kept_in_pieces_marked_incomplete():
    long_line = b"<13>" + b"x" * 25
    got = frames_of(StreamFramer(10), [long_line + b"\n<1>ok\n"])
    assert got == [(long_line[:10], HEAD), (long_line[10:20], CONTINUATION), (long_line[20:], CONTINUATION),
                   (b"<1>ok", 0)]
    # streamed without its newline for a while: memory stays bounded, same content
    framer = StreamFramer(10)
    streamed = frames_of(framer, [long_line[:12], long_line[12:], b"\n<1>ok\n"])
    assert merged(streamed) == merged(got)
    octet = b"%d %s" % (len(long_line), long_line)
    assert merged(frames_of(StreamFramer(10), [octet + b"<1>ok\n"])) == merged(got)


def test_framer_flush_delivers_an_unterminated_or_cut_message():
    assert frames_of(StreamFramer(100), [b"<1>no newline"]) == [(b"<1>no newline", 0)]
    assert frames_of(StreamFramer(100), [b"20 <1>only"]) == [(b"<1>only", HEAD)]


FRAGMENTS = [b"<13>", b"<1", b"1", b"12", b"5 ", b"30 ", b" ", b"\n", b"\r", b"\r\n", b"\x00", b"x", b"msg",
             b"1 - h a - - - ", b"[a@1 b=\"c\"]", b"\\", b"\"", b"]", b"Oct 11 22:14:15 ", b"\xff"]
fragment_streams = st.lists(st.sampled_from(FRAGMENTS), max_size=60).map(b"".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=st.one_of(fragment_streams, st.binary(max_size=400)), cuts=st.lists(st.integers(1, 40), max_size=30),
       size=st.integers(3, 40))
def test_fuzz_framer_chunking_does_not_change_messages(stream, cuts, size):
    chunks, pos = [], 0
    for cut in cuts:
        chunks.append(stream[pos:pos + cut])
        pos += cut
    chunks.append(stream[pos:])
    whole = frames_of(StreamFramer(size), [stream])
    assert merged(frames_of(StreamFramer(size), chunks)) == merged(whole)
    assert all(len(f) <= size for f, _ in whole)
    assert sum(len(f) for f, _ in whole) <= len(stream)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=120), max_size=20), st.data())
def test_fuzz_framer_round_trips_octet_counted_messages(messages, data):
    stream = b""
    for m in messages:
        newline_ok = m[:1] not in b"123456789" and not any(c in m for c in b"\n\x00") and not m.endswith(b"\r")
        if newline_ok and data.draw(st.booleans()):
            stream += m + b"\n"
        else:
            stream += b"%d %s" % (len(m), m)
    assert [f for f, _ in frames_of(StreamFramer(1000), [stream])] == messages


syslogish = st.lists(st.sampled_from(FRAGMENTS + [b"<165>1 2003-10-11T22:14:15.003Z ", b"-", b"Feb 30 "]),
                     max_size=20).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(syslogish, st.binary(max_size=200)), max_size=25),
       st.sampled_from([NONE, ALL, frozenset({"hostname", "structured_data"})]))
def test_fuzz_parser_never_raises_and_keeps_every_message(messages, keep):
    result = parse_messages(messages, keep)
    events = result.batch.to_events()
    assert len(events) == len(messages)
    for raw, event in zip(messages, events):
        if event.headers.get(STATUS_HEADER) == INVALID:
            assert event.body == raw
        else:
            assert set(event.headers) >= {"Facility", "Severity"}
            assert 0 <= int(event.headers["Facility"]) <= 23
            if keep == ALL:
                assert event.body == raw


# -- TCP with real clients -------------------------------------------------------------------------

@pytest.mark.skipif(LOGGER is None, reason="util-linux logger is not installed")
def test_tcp_from_util_linux_logger(pipelines):
    p = pipelines(tcp_source(client_ip_header="ip"))
    base = [LOGGER, "--server", "127.0.0.1", "--port", str(p.port), "--tcp"]
    subprocess.run(base + ["--rfc5424", "-t", "app1", "--msgid", "M1", "hello rfc5424"], check=True, timeout=10)
    subprocess.run(base + ["--rfc5424", "--octet-count", "-t", "app2", "-p", "local3.err", "octet counted"],
                   check=True, timeout=10)
    subprocess.run(base + ["--rfc3164", "-t", "app3", "hello bsd"], check=True, timeout=10)
    events = {e.body: e.headers for e in p.collect(3)}
    assert set(events) == {b"hello rfc5424", b"octet counted", b"hello bsd"}
    assert events[b"hello rfc5424"]["AppName"] == "app1" and events[b"hello rfc5424"]["MsgId"] == "M1"
    assert events[b"octet counted"]["Facility"] == "19" and events[b"octet counted"]["Severity"] == "3"
    assert events[b"hello bsd"]["AppName"] == "app3"
    for headers in events.values():
        assert headers["ip"] == "127.0.0.1"
        assert abs(int(headers["timestamp"]) - time.time() * 1000) < 120_000
        assert STATUS_HEADER not in headers


@pytest.mark.skipif(LOGGER is None, reason="util-linux logger is not installed")
def test_udp_from_util_linux_logger(pipelines):
    p = pipelines(udp_source())
    subprocess.run([LOGGER, "--server", "127.0.0.1", "--port", str(p.port), "--udp", "--rfc5424", "-t", "u1",
                    "hello over udp"], check=True, timeout=10)
    (event,) = p.collect(1)
    assert event.body == b"hello over udp" and event.headers["AppName"] == "u1"


@pytest.mark.parametrize("socktype", [socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["tcp", "udp"])
def test_python_sysloghandler(pipelines, socktype):
    p = pipelines(tcp_source() if socktype == socket.SOCK_STREAM else udp_source())
    handler = logging.handlers.SysLogHandler(("127.0.0.1", p.port), facility="local1", socktype=socktype)
    log = logging.getLogger(f"rayflume-test-syslog-{socktype}")
    log.propagate = False
    log.addHandler(handler)
    try:
        for i in range(20):
            log.warning("message %d", i)
    finally:
        log.removeHandler(handler)
        handler.close()
    events = p.collect(20)
    assert sorted(e.body for e in events) == sorted(b"message %d" % i for i in range(20))
    assert all(e.headers == {"Facility": "17", "Severity": "4"} for e in events)


def test_tcp_many_messages_in_order_through_small_batches(pipelines):
    p = pipelines(tcp_source(batch_size=37, max_event_size_bytes=200), transaction_capacity=37)
    msgs = [b"<13>1 - h a - - - n=%d" % i for i in range(3000)]
    send_tcp(p.port, b"".join(b"%d %s" % (len(m), m) if i % 2 else m + b"\n" for i, m in enumerate(msgs)))
    events = p.collect(3000)
    assert [e.body for e in events] == [b"n=%d" % i for i in range(3000)]
    assert p.counters["EventAcceptedCount"] == 3000


def test_tcp_invalid_and_oversized_messages_are_kept_and_counted(pipelines):
    p = pipelines(tcp_source(max_event_size_bytes=20))
    long_msg = b"<13>1 - h a - - - " + b"y" * 30
    send_tcp(p.port, b"garbage line\n" + long_msg + b"\n<13>ok\n")
    events = p.collect(5)
    assert events[0].body == b"garbage line"
    assert events[0].headers == {"Facility": "0", "Severity": "0", STATUS_HEADER: INVALID}
    head, tail1, tail2, ok = events[1:]
    assert head.headers[STATUS_HEADER] == INCOMPLETE and head.headers["Facility"] == "1"
    assert tail1.headers == {STATUS_HEADER: INCOMPLETE} and tail2.headers == {STATUS_HEADER: INCOMPLETE}
    assert long_msg[:20] == b"<13>1 - h a - - - yy" and head.body == b"yy"
    assert tail1.body + tail2.body == long_msg[20:]
    assert ok.body == b"ok" and STATUS_HEADER not in ok.headers
    assert p.counters["InvalidEventCount"] == 1
    assert p.counters["IncompleteEventCount"] == 3


def test_client_hostname_header(pipelines):
    p = pipelines(tcp_source(client_ip_header="ip", client_hostname_header="hn"))
    send_tcp(p.port, b"<13>hi\n")
    (event,) = p.collect(1)
    assert event.headers["ip"] == "127.0.0.1"
    assert event.headers["hn"] in (socket.gethostbyaddr("127.0.0.1")[0], "127.0.0.1")


def test_tcp_backpressure_stops_reading_and_loses_nothing(pipelines):
    source = tcp_source(buffer_bytes=64 << 10, batch_size=1000, max_event_size_bytes=300)
    p = pipelines(source, capacity=2000, transaction_capacity=1000)  # a small channel nobody drains yet
    # 20 MB: more than the kernel's socket buffers can absorb
    n = 100_000
    pad = b"x" * 180
    payload = b"".join(b"<13>1 - h a - - - %08d%s\n" % (i, pad) for i in range(n))
    sent = threading.Event()

    def send():
        with socket.create_connection(("127.0.0.1", p.port), timeout=60) as s:
            s.sendall(payload)
        sent.set()
    threading.Thread(target=send, daemon=True).start()
    wait_until(lambda: p.counters["ChannelWriteFail"] > 0, 10, what="the channel to fill")
    time.sleep(0.3)  # let the sender run into the closed window
    assert not sent.is_set(), "the sender finished although nobody drained the channel"
    assert source.handoff.nbytes <= (64 << 10) + 1000 * 200  # the limit plus at most one item
    events = p.collect(n, timeout_s=60)
    assert [e.body for e in events] == [b"%08d%s" % (i, pad) for i in range(n)]
    sent.wait(5)


def test_udp_drops_and_counts_when_the_queue_is_full():
    source = udp_source(buffer_bytes=1)  # holds one burst at a time; nobody polls
    source.start(SourceContext("sysu"))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            for i in range(300):
                c.sendto(b"<13>m%d" % i, ("127.0.0.1", source.bound_port))
                if i % 50 == 0:
                    time.sleep(0.02)  # several bursts
        counters = source.context.counters

        def accounted():
            queued = sum(item.events for item in list(source.handoff._items))
            return queued + counters["DatagramDroppedCount"] == 300
        wait_until(accounted, 10, what="every datagram queued or counted as dropped")
        assert counters["DatagramDroppedCount"] > 0
        assert counters["EventRejectedCount"] == counters["DatagramDroppedCount"]
    finally:
        source.stop()


def test_tcp_max_connections_refuses_and_counts(pipelines):
    p = pipelines(tcp_source(max_connections=1))
    first = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    try:
        wait_until(lambda: p.counters["OpenConnectionCount"] == 1, 5, what="the first connection")
        second = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        try:
            second.sendall(b"<13>refused\n")
        except OSError:
            pass
        try:
            assert second.recv(10) == b""  # closed by the server
        except ConnectionResetError:
            pass
        second.close()
        wait_until(lambda: p.counters["ConnectionRejectedCount"] == 1, 5, what="the refusal to be counted")
        first.sendall(b"<13>accepted\n")
        assert [e.body for e in p.collect(1)] == [b"accepted"]
    finally:
        first.close()
    wait_until(lambda: p.counters["OpenConnectionCount"] == 0, 5, what="the connection to be closed")
    send_tcp(p.port, b"<13>again\n")  # the slot is free again
    assert [e.body for e in p.collect(2)][1] == b"again"


def test_stop_closes_connections_and_frees_the_port():
    source = tcp_source()
    source.start(SourceContext("sys"))
    port = source.bound_port
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    wait_until(lambda: source.context.counters["OpenConnectionCount"] == 1, 5, what="connection")
    source.stop()
    client.settimeout(5)
    try:
        assert client.recv(10) == b""
    except ConnectionResetError:
        pass
    client.close()
    with socket.socket() as s:  # the port can be bound again at once
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


# -- TLS -------------------------------------------------------------------------------------------

def test_tls_syslog_over_tcp(pipelines, cert):
    certfile, keyfile = cert
    config = lookup("source", "syslog_tcp").model_validate(
        {"type": "syslog_tcp", "channels": ["mem"], "port": 0, "ssl": True, "ssl_certfile": certfile,
         "ssl_keyfile": keyfile})
    assert config.check() == []
    p = pipelines(config.build("tls"))
    ctx = ssl.create_default_context(cafile=certfile)
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"<13>1 - h a - - - secret one\n42 <13>1 - h a - - - secret two")
    assert [e.body for e in p.collect(2)] == [b"secret one", b"secret two"]
    # a plain-text client does not get through, and is counted
    send_tcp(p.port, b"<13>plain\n")
    wait_until(lambda: p.counters["TlsHandshakeFailCount"] == 1, 5, what="the failed handshake")
    time.sleep(0.1)
    assert len(p.collect(2)) == 2


def test_tls_config_errors(tmp_path):
    config = lookup("source", "syslog_tcp")
    with pytest.raises(ValidationError, match="ssl_certfile"):
        config.model_validate({"type": "syslog_tcp", "channels": ["c"], "port": 0, "ssl": True})
    missing = config.model_validate({"type": "syslog_tcp", "channels": ["c"], "port": 0, "ssl": True,
                                     "ssl_certfile": str(tmp_path / "nope.pem")})
    assert "not readable" in missing.check()[0]
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    bad = config.model_validate({"type": "syslog_tcp", "channels": ["c"], "port": 0, "ssl": True,
                                 "ssl_certfile": str(junk)})
    assert "cannot load" in bad.check()[0]


def test_config_defaults_are_safe():
    tcp = lookup("source", "syslog_tcp").model_validate({"type": "syslog_tcp", "channels": ["c"], "port": 5140})
    assert (tcp.bind, tcp.max_event_size_bytes, tcp.keep_fields, tcp.ssl) == ("127.0.0.1", 2500, "none", False)
    assert tcp.max_connections > 0
    udp = lookup("source", "syslog_udp").model_validate({"type": "syslog_udp", "channels": ["c"], "port": 5140})
    assert udp.bind == "127.0.0.1"
    with pytest.raises(ValidationError):
        lookup("source", "syslog_udp").model_validate({"type": "syslog_udp", "channels": ["c"], "port": 5140,
                                                       "max_connections": 3})  # no connections in UDP
    with pytest.raises(ValidationError):
        lookup("source", "syslog_tcp").model_validate({"type": "syslog_tcp", "channels": ["c"], "port": 70000})


# -- on Ray ----------------------------------------------------------------------------------------

def bound_port(handle, source: str, timeout_s: float = 30.0) -> int:
    ports = []

    def ready():
        value = handle.metrics().get(f"SOURCE.{source}", {}).get("BoundPort", "0")
        ports.append(int(value or 0))
        return ports[-1] > 0
    wait_until(ready, timeout_s, interval_s=0.1, what=f"source '{source}' to listen")
    return ports[-1]


def test_ray_syslog_tcp_to_memory_to_sink(deployed):
    out = testing.collector("syslog-e2e")
    out.clear()
    handle = deployed({
        "name": "syslog-e2e", "metrics": {"port": None},
        "sources": {"sys": {"type": "syslog_tcp", "port": 0, "channels": ["mem"], "client_ip_header": "ip"}},
        "channels": {"mem": {"type": "memory"}},
        "sinks": {"out": {"type": "testing_sink", "channel": "mem", "collector": "syslog-e2e"}},
    })
    port = bound_port(handle, "sys")
    msgs = [b"<165>1 2003-10-11T22:14:15.003Z host app 1 ID - event %d" % i for i in range(500)]
    send_tcp(port, b"".join(m + b"\n" for m in msgs))
    if LOGGER:
        subprocess.run([LOGGER, "--server", "127.0.0.1", "--port", str(port), "--tcp", "--rfc5424", "-t", "lg",
                        "from logger"], check=True, timeout=10)
    out.wait_for(500 + (1 if LOGGER else 0), timeout_s=60)
    events = out.events()
    bodies = [e.body for e in events if e.headers.get("AppName") == "app"]
    assert bodies == [b"event %d" % i for i in range(500)]
    assert all(e.headers["ip"] == "127.0.0.1" and e.headers["timestamp"] == "1065910455003"
               for e in events if e.headers.get("AppName") == "app")
    metrics = handle.metrics()["SOURCE.sys"]
    assert int(metrics["EventAcceptedCount"]) == len(events)
    assert metrics["InvalidEventCount"] == "0"
