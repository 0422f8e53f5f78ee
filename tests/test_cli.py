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

from tests.channel_contract import wait_until

ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONWARNINGS": "ignore::DeprecationWarning"}


def rayflume(*args, cwd=None, timeout=180, env=None):
    return subprocess.run([sys.executable, "-m", "rayflume.cli", *args], cwd=cwd, env={**ENV, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def write(tmp_path, text, name="t.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def start_deploy(path, cwd, stderr=subprocess.PIPE):
    """A foreground `rayflume deploy` in a subprocess (stdout piped, as text)."""
    return subprocess.Popen([sys.executable, "-m", "rayflume.cli", "deploy", path], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=stderr, text=True)


def read_until(proc, text: str, seen: str = "", timeout_s: float = 180) -> str:
    """Read the process's stdout until ``text`` appeared; returns all that was read."""
    deadline = time.monotonic() + timeout_s
    while text not in seen:
        line = proc.stdout.readline()
        assert line and time.monotonic() < deadline, seen + (proc.stderr.read()[-3000:] if proc.stderr else "")
        seen += line
    return seen


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
    assert "cannot reach a Ray cluster at 127.0.0.1:1" in r.stderr
    assert time.monotonic() - t < 60


EMBEDDED = """
name: embedded
sources:
  gen: {type: sequence, total_events: 20000, batch_size: 1000, channels: [mem]}
  few: {type: sequence, total_events: 3, batch_size: 3, body_size: 12, channels: [shown]}
channels:
  mem: {type: memory, capacity: 20000, transaction_capacity: 1000}
  shown: {type: memory}
sinks:
  out: {type: file_roll, channel: mem, directory: out, batch_size: 1000}
  show: {type: logger, channel: shown}
metrics: {port: 0}
"""


def test_deploy_embedded_runs_to_completion_and_writes_output(ray_local, tmp_path):
    # Another Ray runs on this machine and is advertised (as `ray start` does, or RAY_ADDRESS):
    # ray.init() would join it, and `directory: out` would be resolved in its workers' directory.
    # The embedded deploy starts a Ray of its own.
    other = {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    # Also: the logger sink's events appear in the foreground deploy's output (Flume's logger sink).
    r = rayflume("deploy", write(tmp_path, EMBEDDED), cwd=tmp_path, timeout=300, env=other)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "running topology 'embedded' on an embedded Ray" in r.stdout
    assert "[embedded] in" in r.stdout
    assert "stopped 'embedded': 20,003 events accepted by sources, 20,003 delivered by sinks" in r.stdout
    lines = []
    for f in sorted((tmp_path / "out").iterdir()):
        lines += f.read_bytes().splitlines()
    assert sorted(int(x) for x in lines) == list(range(20000))
    output = r.stdout + r.stderr
    for n in range(3):
        body = str(n).zfill(12)  # the sequence source's body, padded to body_size
        hexed = body.encode().hex(" ").upper()
        assert any(f"show: Event: {{ headers:{{}} body: {hexed}" in line and line.endswith(f"  {body} }}")
                   for line in output.splitlines()), output


DURABLE = """
name: forever
sources:
  gen: {type: sequence, batch_size: 1000, channels: [disk]}
channels:
  disk: {type: file, capacity: 200000, transaction_capacity: 1000, checkpoint_dir: cp, data_dirs: [data],
         minimum_required_space_bytes: 1048576}
sinks:
  out: {type: file_roll, channel: disk, directory: out, batch_size: 1000}
metrics: {port: 0}
"""


def _component(address, name):
    r = rayflume("status", "forever", "--address", address, "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    return next(c for c in json.loads(r.stdout)["components"] if c["name"] == name)


@pytest.mark.slow
def test_sink_sigkill_then_ctrl_c_totals_equal_what_is_on_disk(tmp_path):
    """A sink SIGKILLed mid-run (file channel -> file_roll), then Ctrl-C: the final line's totals
    are what is on disk, its duplicate count covers the duplicates found. Also: the embedded deploy
    prints its Ray address, `status --address` reaches it, and Ctrl-C drains and exits 130."""
    proc = start_deploy(write(tmp_path, DURABLE), tmp_path)
    try:
        seen = read_until(proc, "[forever] in")
        address = seen.split("on an embedded Ray at ")[1].split(";")[0]
        assert f"rayflume status forever --address {address}" in seen
        r = rayflume("status", "forever", "--address", address)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "topology forever: RUNNING (version 1)" in r.stdout
        wait_until(lambda: int(_component(address, "out")["sinks"]["out"]["EventDrainSuccessCount"]) > 20_000,
                   timeout_s=120, what="the sink to deliver")
        pids = []
        wait_until(lambda: pids.append(_component(address, "out").get("pid")) or pids[-1], timeout_s=60,
                   interval_s=0.5, what="the sink's pid in status")
        os.kill(pids[-1], signal.SIGKILL)
        wait_until(lambda: _component(address, "out").get("pid") not in (None, pids[-1]), timeout_s=120,
                   interval_s=0.5, what="the sink's actor to restart")
        after_kill = int(_component(address, "out")["sinks"]["out"]["EventDrainSuccessCount"])
        wait_until(lambda: int(_component(address, "out")["sinks"]["out"]["EventDrainSuccessCount"])
                   > after_kill + 10_000, timeout_s=120, what="the restarted sink to deliver")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert "stopping: draining channels" in out
    final = out.split("stopped 'forever': ")[1].splitlines()[0]
    accepted = int(final.split(" events accepted")[0].replace(",", ""))
    delivered = int(final.split("sources, ")[1].split(" delivered")[0].replace(",", ""))
    counted_twice = int(final.split("at most ")[1].split(" of them")[0].replace(",", "")) if "at most" in final else 0
    lines = [line for f in sorted((tmp_path / "out").iterdir()) for line in f.read_bytes().splitlines()]
    numbers = [int(x) for x in lines]
    unique = set(numbers)
    duplicates = len(numbers) - len(unique)
    print(f"sink SIGKILL: {accepted:,} accepted, {delivered:,} delivered, {len(lines):,} lines, "
          f"{duplicates:,} duplicates found, {counted_twice:,} counted")
    assert unique == set(range(accepted)), "every accepted event is on disk, nothing else"
    assert delivered == len(unique), "the sink's total survived its restart"
    # Released leases are counted whole, written or only prefetched: at most the written batch
    # and the prefetched one (1,000 events each) more than were found.
    assert duplicates <= counted_twice <= duplicates + 2 * 1000


def test_deploy_to_address_then_status_and_stop(ray_local, tmp_path):
    address = ray_local.get_runtime_context().gcs_address
    path = write(tmp_path, SMALL.format(name="remote", n=5000).replace("directory: out",
                                                                      f"directory: {tmp_path / 'out'}"))
    r = rayflume("deploy", path, "--address", address)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"deployed topology 'remote' to {address}" in r.stdout

    r = rayflume("status", "remote", "--address", address)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "topology remote: RUNNING (version 1)" in r.stdout
    for row in ("SOURCE   gen", "CHANNEL  mem", "SINK     out"):
        assert row in r.stdout
    # the RSS column: each component's process, in whole MB
    rss = [int(line.split()[4]) for line in r.stdout.splitlines() if line.split()[:1] in (["SOURCE"], ["SINK"])]
    assert len(rss) == 2 and all(30 < mb < 64_000 for mb in rss), r.stdout

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


def readme_topologies() -> list[str]:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from check_install import readme_topologies as blocks
    finally:
        sys.path.pop(0)
    return blocks(ROOT / "README.md")


ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
SHIPPED = sorted(str(p) for p in (ROOT / "topologies").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: os.path.basename(p))
def test_validate_every_shipped_topology(path):
    r = rayflume("validate", path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "is valid" in r.stdout and "Traceback" not in r.stderr


def test_validate_every_readme_topology(tmp_path):
    blocks = readme_topologies()
    assert len(blocks) >= 2  # the single-agent example and the tiered one
    for i, text in enumerate(blocks):
        r = rayflume("validate", write(tmp_path, text, name=f"readme{i}.yaml"))
        assert r.returncode == 0, text + r.stdout + r.stderr
        assert "Traceback" not in r.stderr


def test_validate_describes_tiers():
    r = rayflume("validate", str(ROOT / "topologies" / "two-tier.yaml"))
    assert r.returncode == 0, r.stderr
    assert "topology 'weblogs' is valid: 2 tier(s)" in r.stdout
    assert "tier agent: one instance per node with tier=agent" in r.stdout
    assert "tier collector: 2 replica(s) on nodes with tier=collector" in r.stdout
    assert "sink    forward (rayflume) <- disk -> tier collector" in r.stdout


def test_version_and_help_with_examples():
    r = rayflume("--version")
    assert r.returncode == 0 and r.stdout.startswith("rayflume ")
    for command in ("validate", "deploy", "status", "logs", "stop"):
        r = rayflume(command, "--help")
        assert r.returncode == 0, r.stderr
        assert "examples:" in r.stdout and f"rayflume {command}" in r.stdout.split("examples:")[1]


def test_status_against_a_port_that_is_not_ray_gives_up_within_its_deadline():
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted = []
    stop = threading.Event()

    def accept():  # accept and say nothing, as a wrong service would
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    try:
        t = time.monotonic()
        r = rayflume("status", "--address", address, "--connect-timeout-s", "3", timeout=60)
        took = time.monotonic() - t
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()
    assert r.returncode == 2, r.stderr
    assert f"no Ray cluster answered at {address} within 3 s" in r.stderr
    assert "Traceback" not in r.stderr
    assert took < 30


def test_ctrl_c_during_start_up_exits_130_without_traceback(tmp_path):
    path = write(tmp_path, SMALL.format(name="early", n="null"))
    proc = start_deploy(path, tmp_path)
    try:
        # Start-up is under way once the embedded Ray's first process runs.
        import psutil

        deadline = time.monotonic() + 120
        while not any(c.name() in ("gcs_server", "raylet") for c in psutil.Process(proc.pid).children(True)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err[-3000:]
    assert "interrupted during start-up" in err
    assert "running topology 'early'" not in out  # the signal did arrive during start-up
    assert "Traceback" not in err and "Traceback" not in out
    if "stopped before topology 'early' was deployed" in out:
        assert not (tmp_path / "out").exists()
        return
    # what was started is drained and stopped, and the count adds up
    assert "stopped 'early'" in out
    written = sum(len(f.read_bytes().splitlines()) for f in (tmp_path / "out").iterdir()) \
        if (tmp_path / "out").exists() else 0
    delivered = int(out.split("accepted by sources, ")[1].split(" delivered")[0].replace(",", ""))
    assert written == delivered


LOGGED = """
name: {name}
sources:
  gen: {{type: sequence, total_events: 3, batch_size: 3, body_size: 12, channels: [mem]}}
channels:
  mem: {{type: memory}}
sinks:
  show: {{type: logger, channel: mem}}
metrics: {{port: null}}
"""


def test_log_level_warning_hides_the_logger_sink(tmp_path):
    r = rayflume("deploy", write(tmp_path, LOGGED.format(name="hidden")), "--log-level", "warning",
                 cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stopped 'hidden': 3 events accepted by sources, 3 delivered by sinks" in r.stdout
    assert "Event: {" not in r.stdout + r.stderr


def test_logs_and_metrics_port_fallback_on_a_cluster(ray_local, tmp_path):
    import socket

    address = ray_local.get_runtime_context().gcs_address
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        text = LOGGED.format(name="logged").replace("port: null", f"port: {port}")
        r = rayflume("deploy", write(tmp_path, text), "--address", address)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"metrics port 127.0.0.1:{port} is taken" in r.stderr
        url = r.stdout.split("metrics at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:") and f":{port}/" not in url

        def logged_all():
            nonlocal r
            r = rayflume("logs", "logged", "show", "--address", address)
            assert r.returncode == 0, r.stderr[-3000:]
            return r.stdout.count("show: Event: {") == 3

        wait_until(logged_all, timeout_s=60, interval_s=0.5, what="the logger sink's 3 lines in `rayflume logs`")
        assert "==> sinks/show <==" in r.stdout
        assert r.stdout.count("show: Event: {") == 3, r.stdout
        assert "==> source/gen <==" not in r.stdout  # only the component asked for

        r = rayflume("logs", "logged", "nosuch", "--address", address)
        assert r.returncode == 2 and "has no component named 'nosuch'" in r.stderr

        r = subprocess.run([sys.executable, "-m", "rayflume.cli", "status", "logged", "--address", "auto"],
                           env={**ENV, "RAY_ADDRESS": address}, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"connected to the Ray cluster at {address} (--address auto)" in r.stderr
        assert f"metrics: {url}" in r.stdout
    finally:
        holder.close()
        rayflume("stop", "logged", "--address", address)


FLUME_FIRST_EXAMPLE = """
# Flume's first documented example (netcat -> memory -> logger), in rayflume's YAML
name: a1
sources:
  r1: {{type: netcat, bind: 127.0.0.1, port: {port}, channels: [c1]}}
channels:
  c1: {{type: memory, capacity: 1000, transaction_capacity: 100}}
sinks:
  k1: {{type: logger, channel: c1}}
metrics: {{port: null}}
"""


def test_flume_first_example_runs_and_shows_events(tmp_path):
    """As in Flume's user guide: send a line with a TCP client, see it printed by the logger sink."""
    import socket

    from tests.kafka_broker import free_port

    port = free_port()
    path = write(tmp_path, FLUME_FIRST_EXAMPLE.format(port=port))
    proc = start_deploy(path, tmp_path, stderr=subprocess.STDOUT)
    try:
        seen = read_until(proc, "running topology 'a1'")
        deadline = time.monotonic() + 60
        while True:  # the source binds its port once its actor has started
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=60)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        with client:
            client.settimeout(60)
            client.sendall(b"Hello world!\n")
            assert client.recv(16) == b"OK\n"  # acknowledged once the channel committed it
        seen = read_until(proc, "Hello world!", seen)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "k1: Event: { headers:{} body: 48 65 6C 6C 6F 20 77 6F 72 6C 64 21" in seen
    assert proc.returncode == 130 and "Traceback" not in seen + rest
    assert "1 events accepted by sources, 1 delivered by sinks" in rest


def test_validate_warns_about_what_this_machine_lacks_but_accepts_it(tmp_path):
    """The topology may run on nodes that have the command: a warning here, not an error."""
    r = rayflume("validate", write(tmp_path, """
        name: elsewhere
        sources:
          tail: {type: exec, command: no-such-command-here -F /var/log/app.log, channels: [mem]}
        channels:
          mem: {type: memory}
        sinks:
          out: {type: logger, channel: mem}
        """))
    assert r.returncode == 0, r.stderr
    assert "topology 'elsewhere' is valid" in r.stdout
    assert "warning (on this machine): sources.tail:" in r.stderr and "'no-such-command-here'" in r.stderr


@pytest.mark.parametrize("text, name, expected", [
    ("name: x\nsources:\n  gen: {type: sequence, channels: [mem]}\nchannels:\n  mem: {type: memory, "
     "transactionCapacity: 10}\nsinks:\n  out: {type: null, channel: mem}\n", "t.yaml",
     "channels.mem.transactionCapacity: unknown key; did you mean `transaction_capacity`? (line 5)"),
    ("name: x\nsources:\n  gen: {type: sequence, chanels: [mem]}\nchannels:\n  mem: {type: memory}\n"
     "sinks:\n  out: {type: null, channel: mem}\n", "t.yaml", "did you mean `channels`?"),
    # (`channels: mem` is Flume's space-separated list, accepted: a scalar for another list is the mistake)
    ("name: x\nsources:\n  gen: {type: sequence, channels: [mem], interceptors: timestamp}\nchannels:\n"
     "  mem: {type: memory}\nsinks:\n  out: {type: null, channel: mem}\n", "t.yaml",
     "expected a list, e.g. [timestamp]; got the string 'timestamp'"),
    ("a1.sources = r1\na1.channels = c1\na1.sources.r1.type = netcat\n", "flume.properties",
     "Flume agent configuration"),
    ("name: x\nsources: {gen: [\n", "t.yaml", "line"),
])
def test_bad_input_exits_2_with_its_message_and_no_traceback(tmp_path, text, name, expected):
    path = tmp_path / name
    path.write_text(text)
    r = rayflume("validate", str(path))
    assert r.returncode == 2, r.stdout + r.stderr
    assert expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
