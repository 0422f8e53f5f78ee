"""Harness shared by the network-source tests (netcat, syslog, http): a source driven by the real
SourceRunner (in a thread) into an in-process memory channel, no Ray; and a self-signed TLS
certificate for 127.0.0.1.

Import the ``cert`` fixture by name (``from tests.net_helpers import cert  # noqa: F401``).
"""
from __future__ import annotations

import shutil
import subprocess
import threading
import time

import pytest

from rayflume._private.backoff import Backoff
from rayflume._private.runners import SourceRunner
from rayflume.channels.memory import MemoryChannel
from rayflume.counters import Counters
from rayflume.interceptors.base import InterceptorChain
from rayflume.selectors.replicating import ReplicatingChannelSelector
from rayflume.sources.base import SourceContext
from tests.channel_contract import wait_until

OPENSSL = shutil.which("openssl")


class SourcePipeline:
    """A started source feeding a memory channel ``mem`` through the real SourceRunner.

    The runner thread starts at once, or on ``run()`` when ``start=False``; ``put_delay_s`` makes
    every put slow. ``events`` is for subclasses that keep what they took.
    """

    def __init__(self, source, capacity: int = 1_000_000, transaction_capacity: int = 100_000,
                 put_delay_s: float = 0.0, start: bool = True):
        self.source = source
        self.channel = MemoryChannel("mem", capacity, transaction_capacity)
        self.counters = Counters()
        self.put_delay_s = put_delay_s
        self.events = []
        source.start(SourceContext(source.name, counters=self.counters))
        self.runner = SourceRunner(source.name, source, InterceptorChain([]), ReplicatingChannelSelector(["mem"]),
                                   self._put_many, self.counters, backoff=Backoff(0.01, 0.05),
                                   idle_backoff=Backoff(0.001, 0.005))
        self.thread = None
        if start:
            self.run()

    def run(self):
        self.thread = threading.Thread(target=self.runner.run, daemon=True)
        self.thread.start()
        return self

    def _put_many(self, subbatches, txn_id, tally=None):
        if self.put_delay_s:
            time.sleep(self.put_delay_s)
        out = {}
        for ch, batch in subbatches.items():
            try:
                self.channel.put(batch, txn_id)
                out[ch] = None
            except Exception as exc:  # ChannelFull: the runner retries
                out[ch] = exc
        return out

    def take_committed(self) -> list:
        """Take and commit all the channel holds now; its events, in order."""
        events = []
        while True:
            got = self.channel.take(self.channel.transaction_capacity)
            if got is None:
                return events
            lease, batch = got
            events.extend(batch.to_events())
            self.channel.commit(lease)

    def close(self):
        self.runner.stopping.set()
        if self.thread is not None:
            self.thread.join(5)
        self.source.stop()


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    """(certfile, keyfile) of a self-signed certificate for 127.0.0.1 / localhost."""
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed: cannot make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    certfile, keyfile = d / "cert.pem", d / "key.pem"
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(keyfile), "-out", str(certfile), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return str(certfile), str(keyfile)


class CollectingPipeline(SourcePipeline):
    """A started source driven by the real SourceRunner (in a thread) into a memory channel, with
    a wait for what was committed."""

    @property
    def port(self) -> int:
        return self.source.bound_port

    def collect(self, n: int, timeout_s: float = 10.0):
        """Wait until ``n`` events in total were committed; all of them, in commit order."""
        def enough():
            self.events.extend(self.take_committed())
            return len(self.events) >= n
        wait_until(enough, timeout_s, what=f"{n} events (have {len(self.events)})")
        return self.events
