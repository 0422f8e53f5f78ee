"""A local S3 endpoint for tests: a ``moto`` server subprocess bound to 127.0.0.1.

``moto_s3`` (module-scoped fixture) starts ``python -m moto.server`` on a free port, waits until it
answers, and stops it after the module. Tests that need it are skipped when moto is missing.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass

import pytest

REGION = "us-east-1"


@dataclass
class MotoS3:
    """A running moto server and the pyarrow options to reach it."""

    port: int
    proc: subprocess.Popen
    log_path: str

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def options(self) -> dict:
        """``object_store_options`` for a file channel on this server."""
        return {"endpoint_override": self.endpoint, "scheme": "http", "region": REGION,
                "access_key": "testing", "secret_key": "testing"}

    def filesystem(self):
        from pyarrow import fs as pafs

        return pafs.S3FileSystem(allow_bucket_creation=True, allow_delayed_open=True, **self.options)

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"rayflume-{uuid.uuid4().hex[:12]}"
        self.filesystem().create_dir(name)
        return name

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        try:
            os.unlink(self.log_path)
        except OSError:
            pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False


def start_moto(timeout_s: float = 30.0, attempts: int = 3) -> MotoS3:
    """Start a moto server on 127.0.0.1 and wait until it answers HTTP."""
    last = ""
    for _ in range(attempts):
        port = _free_port()
        fd, log_path = tempfile.mkstemp(prefix="moto-", suffix=".log")
        with os.fdopen(fd, "wb") as logf:
            proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                     "-p", str(port)], stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        server = MotoS3(port, proc, log_path)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers(port):
                return server
            time.sleep(0.05)
        with open(log_path, "rb") as f:
            last = f.read()[-2000:].decode(errors="replace")
        server.stop()  # the port was taken in between, or the server is broken: try again
    raise RuntimeError(f"moto server did not start on 127.0.0.1: {last}")


@pytest.fixture(scope="module")
def moto_s3():
    pytest.importorskip("moto")
    pytest.importorskip("pyarrow.fs")
    server = start_moto()
    try:
        yield server
    finally:
        server.stop()
