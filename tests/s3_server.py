"""A local S3 endpoint for tests: ``moto[server]`` in a subprocess on a free 127.0.0.1 port.

Use the session-scoped fixture from any test module::

    from tests.s3_server import s3_endpoint  # noqa: F401  (pytest finds the fixture by name)

    def test_x(s3_endpoint):
        bucket = s3_endpoint.make_bucket()           # a fresh bucket per test
        fs = s3_endpoint.filesystem()                # a pyarrow S3FileSystem on the endpoint
        options = s3_endpoint.sink_options()         # s3_* keys for an hdfs sink config
        s3_endpoint.options                          # object_store_options for a file channel

``moto_s3`` is the same server for modules that want it module-scoped and skipped without moto.

The server is this file run as a script: moto's WSGI app behind a tiny middleware that renames the
root element of CompleteMultipartUpload answers from moto's ``CompleteMultipartUploadResponse`` to
``CompleteMultipartUploadResult``, as real S3 sends it; the AWS SDK inside pyarrow 26 treats moto's
spelling as an error embedded in a 200 answer, which fails every object large enough for a
multipart upload. The child binds port 0 and prints the port it got, so there is no port race.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

import pytest

_bucket_ids = itertools.count(1)


@dataclass
class S3Endpoint:
    host: str
    port: int
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"
    scheme: str = "http"

    @property
    def endpoint_override(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def filesystem(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(access_key=self.access_key, secret_key=self.secret_key, region=self.region,
                                 endpoint_override=self.endpoint_override, scheme=self.scheme,
                                 allow_bucket_creation=True, allow_bucket_deletion=True)

    @property
    def options(self) -> dict:
        """``object_store_options`` for a file channel on this endpoint."""
        return {"endpoint_override": self.endpoint_override, "scheme": self.scheme, "region": self.region,
                "access_key": self.access_key, "secret_key": self.secret_key}

    def sink_options(self) -> dict:
        return {"s3_endpoint_override": self.endpoint_override, "s3_region": self.region,
                "s3_access_key": self.access_key, "s3_secret_key": self.secret_key, "s3_scheme": self.scheme}

    def make_bucket(self, prefix: str = "bucket") -> str:
        name = f"{prefix}-{os.getpid()}-{next(_bucket_ids)}"
        self.filesystem().create_dir(name)
        return name


def _wait_answering(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                resp.read()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 for the whole session; stopped afterwards."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"moto server did not start (exit code {proc.poll()}, said {line!r})")
        endpoint = S3Endpoint("127.0.0.1", int(line.split()[1]))
        _wait_answering(endpoint.url + "/")
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def moto_s3(s3_endpoint):
    """``s3_endpoint``, with the module skipped when moto or pyarrow's S3 support is missing."""
    pytest.importorskip("moto")
    pytest.importorskip("pyarrow.fs")
    return s3_endpoint


def _serve() -> None:
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)

    def fixed(environ, start_response):
        if environ.get("REQUEST_METHOD") != "POST" or "uploadId=" not in environ.get("QUERY_STRING", ""):
            return app(environ, start_response)
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        body = b"".join(app(environ, capture))
        body = body.replace(b"CompleteMultipartUploadResponse", b"CompleteMultipartUploadResult")
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        start_response(captured["status"], headers)
        return [body]

    server = make_server("127.0.0.1", 0, fixed, threaded=True)
    print(f"PORT {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__" and "--serve" in sys.argv:
    _serve()
