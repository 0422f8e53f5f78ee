"""The ``http`` sink against a real local HTTP server (http.server on 127.0.0.1)."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rayflume._private.runners import SinkRunner
from rayflume.channels.memory import MemoryChannel
from rayflume.counters import Counters
from rayflume.errors import DeliveryError
from rayflume.event import Event, EventBatch
from rayflume.sinks.base import SinkContext
from rayflume.sinks.http import HttpSink, HttpSinkConfig, decide, json_lines
from tests.channel_contract import numbered
from tests.kafka_broker import free_port


class Server:
    """Records every POST; answers with the next scripted status (then ``default``)."""

    def __init__(self, default: int = 200, delay_s: float = 0.0):
        self.requests: list[dict] = []
        self.script: list[int] = []
        self.default = default
        self.delay_s = delay_s
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                status = outer.script.pop(0) if outer.script else outer.default
                outer.requests.append({"status": status, "body": body, "headers": dict(self.headers),
                                       "path": self.path})
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                reply = b"ok"
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/ingest"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def delivered(self) -> list[int]:
        """Event numbers of every 2XX request (json_lines)."""
        out = []
        for r in self.requests:
            if r["status"] // 100 == 2:
                out += [int(json.loads(line)["body"]) for line in r["body"].decode().splitlines()]
        return out


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def make(url: str, **kw) -> HttpSink:
    sink = HttpSinkConfig(type="http", channel="c", endpoint=url, **kw).build("web")
    sink.start(SinkContext("web"))
    return sink


# -- payloads -----------------------------------------------------------------------------------------------
def test_json_lines_escape_and_round_trip():
    events = [
        Event(b'plain', {"host": "a", "k": "v"}),
        Event('quote " back \\ nl \n tab \t ctl \x01 \x1f uni é €'.encode(), {'we"ird\n': "va\\l"}),
        Event(b"", {}),
        Event(b"\xff\xfebad utf8", {"x": ""}),
    ]
    text = json_lines(EventBatch.from_events(events)).to_pybytes().decode()
    lines = text.split("\n")
    assert lines[-1] == "" and len(lines) == 5
    parsed = [json.loads(line) for line in lines[:-1]]
    assert parsed[0] == {"headers": {"host": "a", "k": "v"}, "body": "plain"}
    assert parsed[1]["body"] == events[1].body.decode() and parsed[1]["headers"] == {'we"ird\n': "va\\l"}
    assert parsed[2] == {"headers": {}, "body": ""}
    assert parsed[3]["body"] == "\ufffd\ufffdbad utf8"
    # a sliced batch (shared child arrays) encodes only its own events
    sliced = EventBatch.from_events(events).slice(1, 2)
    assert [json.loads(x) for x in json_lines(sliced).to_pybytes().decode().splitlines()] == parsed[1:3]


def test_raw_format_posts_bodies_by_line(server):
    sink = make(server.url, format="raw")
    sink.write(EventBatch.from_bodies([b"a", b"b c", b""]))
    req = server.requests[0]
    assert req["body"] == b"a\nb c\n\n"
    assert req["headers"]["Content-Type"] == "text/plain" and req["path"] == "/ingest"
    sink.stop()


# -- status rules --------------------------------------------------------------------------------------------
def test_most_specific_rule_wins():
    rules = {"503": False, "5XX": True, "4XX": False}
    assert decide(503, rules, True) is False      # exact beats class
    assert decide(500, rules, False) is True      # class beats default
    assert decide(404, rules, True) is False
    assert decide(302, rules, True) is True       # nothing matches: the default
    assert decide(302, rules, False) is False
    assert decide(200, {}, True) is False         # 2XX commits unless a rule says otherwise
    assert decide(200, {"2XX": True}, False) is True
    assert decide(201, {"201": True}, False) is True


def test_success_commits_and_sends_headers(server):
    sink = make(server.url, request_headers={"Authorization": "Bearer t"})
    sink.write(numbered(0, 5))
    sink.write(numbered(5, 5))
    assert server.delivered() == list(range(10))
    h = server.requests[0]["headers"]
    assert h["Content-Type"] == "application/x-ndjson" and h["Accept"] == "text/plain"
    assert h["Authorization"] == "Bearer t"
    assert sink.context.counters["ConnectionCreatedCount"] == 1  # kept alive between batches
    sink.stop()


def test_server_error_rolls_back_and_the_retry_delivers(server):
    """Through the real runner: 503 rolls the take back, the retry after 200 delivers everything."""
    server.script = [503, 500]
    channel = MemoryChannel("mem", capacity=1000, transaction_capacity=100)
    channel.put(numbered(0, 30), "t")
    sink = make(server.url, batch_size=100)
    runner = SinkRunner("web", sink, channel, "h", Counters())
    for _ in range(2):
        with pytest.raises(DeliveryError, match="answered 50"):
            runner.process()
        assert channel.size() == 30
    runner.process()
    assert channel.size() == 0 and runner.counters["RollbackCount"] == 2
    assert server.delivered() == list(range(30))
    assert [r["status"] for r in server.requests] == [503, 500, 200]
    sink.stop()


def test_configured_client_error_commits_and_backs_off(server):
    server.script = [400]
    sink = make(server.url, rollback={"4XX": False}, backoff={"4xx": True}, backoff_s=0.3)
    sleeps = []
    sink.sleep = lambda s: (sleeps.append(s), time.sleep(s))
    sink.write(numbered(0, 4))  # committed: discarded as configured
    assert sink.context.counters["EventDiscardedCount"] == 4
    sink.write(numbered(4, 4))  # waits the back-off first
    assert len(sleeps) == 1 and 0.2 < sleeps[0] <= 0.3
    sink.write(numbered(8, 4))  # a 200 without back-off: no wait
    assert len(sleeps) == 1
    assert server.delivered() == list(range(4, 12))
    sink.stop()


def test_rollback_false_for_one_code_only(server):
    server.script = [409, 429]
    sink = make(server.url, rollback={"409": False})
    sink.sleep = lambda s: None
    sink.write(numbered(0, 2))  # 409 committed
    with pytest.raises(DeliveryError):
        sink.write(numbered(2, 2))  # 429: no rule, default rollback
    sink.stop()


def test_connection_refused_and_timeout_roll_back():
    sink = make(f"http://127.0.0.1:{free_port()}/", connect_timeout_s=1)
    with pytest.raises(DeliveryError, match="failed"):
        sink.write(numbered(0, 2))
    assert sink.context.counters["ConnectionFailedCount"] == 1
    slow = Server(delay_s=2.0)
    try:
        sink = make(slow.url, request_timeout_s=0.3)
        t = time.monotonic()
        with pytest.raises(DeliveryError, match="timed out|TimeoutError"):
            sink.write(numbered(0, 2))
        assert time.monotonic() - t < 1.5
    finally:
        slow.close()


def test_config():
    cfg = HttpSinkConfig(type="http", channel="c", endpoint="http://127.0.0.1:8080/x",
                         rollback={"4xx": False, 503: True})
    assert cfg.rollback == {"4XX": False, "503": True}
    assert cfg.format == "json_lines" and cfg.default_rollback and cfg.default_backoff
    for bad in ({"6XX": True}, {"20": True}, {"abc": True}):
        with pytest.raises(ValueError, match="status code"):
            HttpSinkConfig(type="http", channel="c", endpoint="http://h/", rollback=bad)
    with pytest.raises(ValueError, match="endpoint"):
        HttpSinkConfig(type="http", channel="c", endpoint="ftp://h/")
    with pytest.raises(ValueError):
        HttpSinkConfig(type="http", channel="c", endpoint="http://h/", format="xml")
    sink = cfg.build("web")
    assert isinstance(sink, HttpSink) and sink.rollback_rules == {"4XX": False, "503": True}
