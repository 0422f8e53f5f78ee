"""The rayflume CLI, run as a real subprocess."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONWARNINGS": "ignore::DeprecationWarning"}


def rayflume(*args, cwd=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "rayflume.cli", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def write(tmp_path, text, name="t.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


SMALL = """
name: {name}
sources:
  gen: {{type: sequence, total_events: {n}, batch_size: 1000, channels: [mem]}}
channels:
  mem: {{type: memory, capacity: 20000, transaction_capacity: 1000}}
sinks:
  out: {{type: file_roll, channel: mem, directory: out, batch_size: 1000}}
metrics: {{port: 0}}
"""


def test_validate_ok(tmp_path):
    r = rayflume("validate", write(tmp_path, SMALL.format(name="ok", n=10)))
    assert r.returncode == 0, r.stderr
    assert "topology 'ok' is valid: 1 source(s), 1 channel(s), 1 sink(s)" in r.stdout


def test_validate_reports_every_problem_and_exits_2(tmp_path):
    r = rayflume("validate", write(tmp_path, """
        name: bad
        sources:
          gen: {type: sequence, channels: [mem, disk], batch_size: -1}
        channels:
          mem: {type: memroy}
        sinks:
          out: {type: null, channel: mem}
        """))
    assert r.returncode == 2
    assert "topology 'bad' is invalid" in r.stderr
    assert "sources.gen.channels[1]: unknown channel 'disk'" in r.stderr
    assert "sources.gen.batch_size: Input should be greater than 0" in r.stderr
    assert "channels.mem.type: unknown channel type 'memroy'; known types:" in r.stderr
    assert "Traceback" not in r.stderr


def test_invalid_yaml_and_missing_file_exit_2(tmp_path):
    r = rayflume("validate", write(tmp_path, "name: x\nsources: {gen: [\n"))
    assert r.returncode == 2 and "invalid YAML at line" in r.stderr
    r = rayflume("deploy", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "cannot read the topology file" in r.stderr


def test_unreachable_address_exits_2_quickly(tmp_path):
    t = time.monotonic()
    r = rayflume("deploy", write(tmp_path, SMALL.format(name="x", n=10)), "--address", "127.0.0.1:1")
    assert r.returncode == 2
    assert "cannot reach a Ray cluster at --address 127.0.0.1:1" in r.stderr
    assert time.monotonic() - t < 60


def test_deploy_embedded_runs_to_completion_and_writes_output(tmp_path):
    r = rayflume("deploy", write(tmp_path, SMALL.format(name="embedded", n=20000)), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "running topology 'embedded' on an embedded Ray" in r.stdout
    assert "[embedded] in" in r.stdout
    assert "stopped 'embedded': 20,000 events accepted by sources, 20,000 delivered by sinks" in r.stdout
    lines = []
    for f in sorted((tmp_path / "out").iterdir()):
        lines += f.read_bytes().splitlines()
    assert sorted(int(x) for x in lines) == list(range(20000))


def test_ctrl_c_drains_and_stops(tmp_path):
    path = write(tmp_path, SMALL.format(name="forever", n="null"))
    proc = subprocess.Popen([sys.executable, "-m", "rayflume.cli", "deploy", path], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        seen = ""
        while "[forever] in" not in seen:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, proc.stderr.read()[-3000:]
            seen += line
            assert time.monotonic() < deadline, seen
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "stopping: draining channels" in out
    assert "stopped 'forever'" in out
    written = sum(len(f.read_bytes().splitlines()) for f in (tmp_path / "out").iterdir())
    delivered = int(out.split("accepted by sources, ")[1].split(" delivered")[0].replace(",", ""))
    assert written == delivered > 0


def test_deploy_to_address_then_status_and_stop(ray_local, tmp_path):
    address = ray_local.get_runtime_context().gcs_address
    path = write(tmp_path, SMALL.format(name="remote", n=5000).replace("directory: out",
                                                                      f"directory: {tmp_path / 'out'}"))
    r = rayflume("deploy", path, "--address", address)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"deployed topology 'remote' to {address}" in r.stdout

    r = rayflume("status", "remote", "--address", address)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "topology remote: RUNNING" in r.stdout
    for row in ("SOURCE   gen", "CHANNEL  mem", "SINK     out"):
        assert row in r.stdout

    r = rayflume("status", "--address", address, "--json")
    status = json.loads(r.stdout)
    assert [s["name"] for s in status] == ["remote"]

    r = rayflume("stop", "remote", "--address", address)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stopped topology 'remote'" in r.stdout
    lines = sum(len(f.read_bytes().splitlines()) for f in (tmp_path / "out").iterdir())
    assert lines == 5000

    r = rayflume("status", "remote", "--address", address)
    assert r.returncode == 2 and "no topology named 'remote' is deployed" in r.stderr
