"""Flume configurations in rayflume: `rayflume convert`, `--agent` on validate/deploy, Flume's type
names and space-separated lists in YAML, and ${env:}/${file:} references.

tests/flume_conf/*.properties are agent configurations written after the Flume User Guide's
examples, for the components rayflume has.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from rayflume import registry
from rayflume.errors import ConfigError
from rayflume.flume_conf import mapping as table
from rayflume.flume_conf.convert import convert_file, convert_text, to_yaml
from rayflume.flume_conf.docs import render
from rayflume.flume_conf.properties import parse_properties
from rayflume.topology import build_config, load_topology, loads_topology, validate

HERE = Path(__file__).parent / "flume_conf"
ROOT = Path(__file__).parent.parent
ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONWARNINGS": "ignore::DeprecationWarning"}

# file -> the agent it configures
EXAMPLES = {
    "netcat_memory_logger.properties": "a1",
    "seq_memory_file_roll.properties": "agent",
    "exec_file_hdfs.properties": "a1",
    "taildir_file_hdfs.properties": "a1",
    "spooldir_file_hdfs.properties": "agent-1",
    "syslog.properties": "a1",
    "http_source.properties": "a1",
    "kafka.properties": "tier1",
    "multiplexing.properties": "agent_foo",
    "replicating.properties": "a1",
    "interceptors.properties": "a1",
    "spillable.properties": "a1",
    "failover_avro.properties": "a1",
    "load_balance_avro.properties": "agent1",
    "avro_collector.properties": "collector",
    "thrift_source.properties": "a1",
}
def rayflume(*args, cwd=None, timeout=120, env=None):
    return subprocess.run([sys.executable, "-m", "rayflume.cli", *args], cwd=cwd, env={**ENV, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def converted(name: str):
    conversion = convert_file(HERE / name, EXAMPLES[name])
    assert not conversion.errors, conversion.error_lines()
    return conversion


# -- every example converts, validates, and reports what it does not carry over -----------------------
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_converts_to_a_valid_topology(name):
    conversion = converted(name)
    text = to_yaml(conversion)
    # The written YAML is itself a valid topology, with the agent's components.
    topo = loads_topology(text)
    assert topo.name == EXAMPLES[name]
    agent = EXAMPLES[name]
    props = parse_properties((HERE / name).read_text())
    for section in ("sources", "channels", "sinks"):
        listed = next((p.value.split() for p in props if p.key == f"{agent}.{section}"), [])
        assert sorted(getattr(topo, section)) == sorted(listed)
    # Every warning is also a comment in the output, so the file records what was left behind.
    for problem in conversion.warnings:
        assert f"#   {problem.format(name)}" in text


def test_every_property_is_carried_over_or_reported():
    """Each property of each example is either carried over or named by a warning or an error;
    none vanishes unnoticed, and none is both."""
    for name, agent in {**EXAMPLES, "made_up_property.properties": "a1", "hbase_sink.properties": "a1"}.items():
        conversion = convert_file(HERE / name, agent)
        reported = {p.key for p in conversion.warnings + conversion.errors}
        keys = {p.key for p in parse_properties((HERE / name).read_text()) if p.key.startswith(agent + ".")}
        assert keys - conversion.carried - reported == set(), name
        assert not (conversion.carried & {p.key for p in conversion.warnings}), name
    # the made-up ones are among the reported
    conversion = convert_file(HERE / "made_up_property.properties", "a1")
    assert {"a1.sources.r1.frobnicate", "a1.channels.c1.transactionCapacty"} <= {p.key for p in conversion.warnings}


def test_made_up_properties_are_reported_with_their_lines_never_dropped(tmp_path):
    conversion = convert_file(HERE / "made_up_property.properties", "a1")
    assert not conversion.errors
    lines = conversion.warning_lines()
    path = HERE / "made_up_property.properties"
    assert any(line.startswith(f"{path}:11: a1.sources.r1.frobnicate: unknown property of Flume's netcat source")
               for line in lines), lines
    assert any(line.startswith(f"{path}:20: a1.channels.c1.transactionCapacty: unknown property") for line in lines)
    assert any(line.startswith(f"{path}:13: a1.sources.r9.type: source 'r9' is not listed in a1.sources")
               for line in lines), lines
    assert "frobnicate" not in yaml.safe_dump(conversion.data)
    # The CLI prints them as warnings and writes them as comments; it still writes the topology.
    out = tmp_path / "a1.yaml"
    r = rayflume("convert", str(path), "--agent", "a1", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "warning: " in r.stderr and "a1.sources.r1.frobnicate" in r.stderr
    assert "# " in out.read_text() and "a1.sources.r1.frobnicate" in out.read_text()
    assert load_topology(out).channels["c1"].capacity == 100  # Flume's default, written explicitly


def test_unsupported_component_is_an_error_and_nothing_is_written(tmp_path):
    path = HERE / "hbase_sink.properties"
    conversion = convert_file(path, "a1")
    [error] = conversion.error_lines()
    assert error.startswith(f"{path}:11: a1.sinks.k1.type: Flume's hbase sink has no rayflume equivalent")
    assert "HDFS" in error  # what to do
    # its other properties are named, not dropped
    assert {"a1.sinks.k1.table", "a1.sinks.k1.columnFamily"} <= {p.key for p in conversion.warnings}
    out = tmp_path / "t.yaml"
    r = rayflume("convert", str(path), "-n", "a1", "-o", str(out))
    assert r.returncode == 2 and "hbase" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


# -- the renames that actually happen ---------------------------------------------------------------
def test_durations_prefixes_and_lists_of_exec_file_hdfs():
    data = converted("exec_file_hdfs.properties").data
    src, ch, sink = data["sources"]["r1"], data["channels"]["c1"], data["sinks"]["k1"]
    assert src["restart_throttle_s"] == 5.0 and src["batch_timeout_s"] == 3.0 and src["log_std_err"] is True
    assert src["interceptors"] == [{"type": "timestamp"}]
    assert ch["data_dirs"] == ["/mnt/flume/data", "/mnt/flume/data2"] and ch["checkpoint_interval_s"] == 60.0
    assert ch["max_file_size_bytes"] == 1073741824
    assert sink["path"] == "/flume/events/%Y-%m-%d/%H%M/%S" and sink["file_prefix"] == "events-"
    assert sink["round"] is True and sink["round_value"] == 10 and sink["round_unit"] == "minute"
    assert sink["file_type"] == "data_stream" and sink["roll_interval_s"] == 600 and sink["roll_count"] == 0
    assert sink["call_timeout_s"] == 60.0 and sink["serializer"] == "text" and sink["append_newline"] is True


def test_hdfs_file_type_decides_what_the_codec_does():
    base = (HERE / "exec_file_hdfs.properties").read_text()
    stream = convert_text(base + "a1.sinks.k1.hdfs.codeC = gzip\n", "a1", source="x.conf")
    assert "compression" not in stream.data["sinks"]["k1"]  # Flume's DataStream ignores the codec
    assert any("hdfs.codeC: not carried over" in w for w in stream.warning_lines())
    unset = convert_text(base.replace("a1.sinks.k1.hdfs.fileType = DataStream\n", "")
                         + "a1.sinks.k1.hdfs.codeC = gzip\n",
                         "a1", source="x.conf")
    assert unset.data["sinks"]["k1"]["file_type"] == "compressed_stream"  # closest to a compressed SequenceFile
    assert any("Flume's default is SequenceFile" in w for w in unset.warning_lines())
    codec = convert_text(base + "a1.sinks.k1.hdfs.codeC = bzip2\n", "a1", source="x.conf")
    assert any(e.startswith("x.conf:40: a1.sinks.k1.hdfs.codeC: 'bzip2' has no rayflume equivalent")
               for e in codec.error_lines()), codec.error_lines()


def test_taildir_filegroups_headers_and_class_names():
    conversion = converted("taildir_file_hdfs.properties")
    src = conversion.data["sources"]["r1"]
    assert src["type"] == "taildir"
    assert src["filegroups"] == {"f1": "/var/log/test1/example.log", "f2": "/var/log/test2/.*log.*"}
    assert src["headers"] == {"f1": {"headerKey1": "value1"}, "f2": {"headerKey1": "value2", "headerKey2": "value2-2"}}
    assert src["idle_timeout_s"] == 120.0 and src["write_pos_interval_s"] == 3.0 and src["file_header"] is True
    assert conversion.data["channels"]["c1"]["type"] == "file"
    sink = conversion.data["sinks"]["k1"]
    assert sink["type"] == "hdfs" and sink["compression"] == "gzip" and sink["file_type"] == "compressed_stream"
    assert any("maxBatchCount" in w for w in conversion.warning_lines())


def test_syslog_host_becomes_bind_and_http_gets_flumes_bind():
    data = converted("syslog.properties").data
    assert data["sources"]["r1"]["type"] == "syslog_tcp" and data["sources"]["r1"]["bind"] == "localhost"
    assert data["sources"]["r1"]["max_event_size_bytes"] == 4096 and data["sources"]["r2"]["type"] == "syslog_udp"
    http = converted("http_source.properties")
    assert http.data["sources"]["r1"]["bind"] == "0.0.0.0" and http.data["sources"]["r1"]["handler"] == "json"
    assert any("bind: '0.0.0.0' written, Flume's default" in n for n in http.note_lines())
    assert http.data["sinks"]["k1"]["backoff"] == {"4XX": False} and http.data["sinks"]["k1"]["connect_timeout_s"] == 2


def test_kafka_client_keys_move_into_the_passthrough_map():
    conversion = converted("kafka.properties")
    src, ch, sink = (conversion.data[s][n] for s, n in
                     (("sources", "source1"), ("channels", "channel1"), ("sinks", "sink1")))
    assert src["topics"] == ["test1", "test2"] and src["group_id"] == "custom.g.id"
    assert src["auto_offset_reset"] == "earliest" and src["batch_duration_s"] == 2.0
    assert src["consumer"] == {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN"}
    assert ch["topic"] == "channel1" and ch["producer"] == {"acks": "all"}
    assert sink["producer"]["linger.ms"] == "1" and sink["producer"]["enable.idempotence"] == "false"
    warnings = "\n".join(conversion.warning_lines())
    assert "sasl.jaas.config" in warnings and "sasl.username" in warnings
    assert "kafka.flumeBatchSize" in warnings


def test_selectors_and_interceptors():
    selector = converted("multiplexing.properties").data["sources"]["avro-AppSrv-source1"]["selector"]
    assert selector == {"type": "multiplexing", "header": "State",
                        "mapping": {"CA": ["mem-channel-1"], "AZ": ["file-channel-2"],
                                    "NY": ["mem-channel-1", "file-channel-2"]},
                        "optional": {"CA": ["mem-channel-3", "file-channel-2"]}, "default": ["mem-channel-4"]}
    assert converted("replicating.properties").data["sources"]["r1"]["selector"] == {"type": "replicating",
                                                                                   "optional": ["c3"]}
    interceptors = converted("interceptors.properties").data["sources"]["r1"]["interceptors"]
    assert [i["type"] for i in interceptors] == ["host", "timestamp", "static", "regex_filter", "regex_extractor",
                                                 "uuid", "search_replace", "remove_header"]
    assert interceptors[0] == {"type": "host", "host_header": "hostname", "use_ip": False}
    assert interceptors[4]["serializers"] == [
        {"type": "org.apache.flume.interceptor.RegexExtractorInterceptorMillisSerializer", "name": "timestamp",
         "pattern": "yyyy-MM-dd HH:mm"}]
    assert interceptors[4]["regex"] == r"^(\d\d\d\d-\d\d-\d\d \d\d:\d\d)"


def test_java_interceptors_are_errors_and_python_ones_carry_over():
    text = (HERE / "replicating.properties").read_text() + textwrap.dedent("""
        a1.sources.r1.interceptors = j p
        a1.sources.r1.interceptors.j.type = com.example.MaskInterceptor$Builder
        a1.sources.r1.interceptors.p.type = tests._user_interceptors:drop_debug
        a1.sources.r1.interceptors.p.mode = batch
        """)
    conversion = convert_text(text, "a1", source="x.conf")
    [error] = conversion.error_lines()
    assert error.startswith("x.conf:23: a1.sources.r1.interceptors.j.type:") and "Python interceptor" in error
    conversion = convert_text(text.replace("interceptors = j p", "interceptors = p"), "a1", source="x.conf")
    assert not conversion.errors, conversion.error_lines()
    assert conversion.data["sources"]["r1"]["interceptors"] == [
        {"type": "tests._user_interceptors:drop_debug", "mode": "batch"}]
    # the unlisted Java one is reported, not dropped
    assert any("interceptor 'j' is not listed" in w for w in conversion.warning_lines())


@pytest.mark.parametrize("name", ["failover_avro.properties", "load_balance_avro.properties",
                                  "avro_collector.properties"])
def test_sink_groups_and_avro(name):
    data = converted(name).data
    if name == "failover_avro.properties":
        assert data["sink_groups"]["g1"] == {"sinks": ["k1", "k2"], "processor": {
            "type": "failover", "priority": {"k1": 5, "k2": 10}, "max_penalty_s": 10.0}}
        assert data["sinks"]["k1"]["connect_timeout_s"] == 20.0 and data["sinks"]["k2"]["compression_type"] == "deflate"
    elif name == "load_balance_avro.properties":
        assert data["sink_groups"]["sinkgroup1"]["processor"] == {
            "type": "load_balance", "backoff": True, "selector": "random", "selector_max_timeout_s": 10.0}
    else:
        assert data["sources"]["av"]["allowed_clients"] == ["10.0.0.0/16", "192.168.1.7/32"]
        assert "ip_filter" not in data["sources"]["av"]


def test_spillable_channel():
    ch = converted("spillable.properties").data["channels"]["c1"]
    assert ch == {"type": "spillable", "memory_capacity": 10000, "overflow_capacity": 1000000,
                  "byte_capacity": 800000, "checkpoint_dir": "/mnt/flume/checkpoint", "data_dirs": ["/mnt/flume/data"]}


def test_flume_config_filter_becomes_an_env_reference(monkeypatch):
    path = HERE / "config_filter.properties"
    monkeypatch.delenv("RAYFLUME_TEST_NC_PORT", raising=False)
    unset = convert_file(path, "a1")
    assert any("RAYFLUME_TEST_NC_PORT is not set" in e for e in unset.error_lines())
    monkeypatch.setenv("RAYFLUME_TEST_NC_PORT", "45678")
    conversion = convert_file(path, "a1")
    assert not conversion.errors
    # The written topology keeps the reference; loading it substitutes the value.
    assert conversion.data["sources"]["r1"]["port"] == "${env:RAYFLUME_TEST_NC_PORT}"
    assert loads_topology(to_yaml(conversion)).sources["r1"].port == 45678
    assert load_topology(path, agent="a1").sources["r1"].port == 45678


def test_properties_syntax_continuations_separators_and_escapes():
    props = parse_properties("# c\n! c\na1.sources = r1 \\\n   r2\na1.x : y\na1.y\tz\\u0041\\:b\n\n")
    assert [(p.key, p.value, p.line) for p in props] == [("a1.sources", "r1 r2", 3), ("a1.x", "y", 5),
                                                         ("a1.y", "zA:b", 6)]


# -- --agent on validate and deploy --------------------------------------------------------------------
def test_validate_with_and_without_agent(tmp_path):
    path = str(HERE / "netcat_memory_logger.properties")
    r = rayflume("validate", path, "--agent", "a1")
    assert r.returncode == 0, r.stderr
    assert "topology 'a1' is valid: 1 source(s), 1 channel(s), 1 sink(s)" in r.stdout
    assert "source  r1 (netcat) -> c1" in r.stdout
    r = rayflume("validate", path)
    assert r.returncode == 2
    assert "this is a Flume agent configuration" in r.stderr and "configures agent(s): a1" in r.stderr
    assert "--agent a1" in r.stderr
    r = rayflume("validate", path, "--agent", "a2")
    assert r.returncode == 2 and "no agent named 'a2'" in r.stderr and "a1" in r.stderr
    # A property that cannot be converted fails validate, with its line.
    bad = tmp_path / "bad.conf"
    bad.write_text((HERE / "exec_file_hdfs.properties").read_text().replace("DataStream", "SequenceFile"))
    r = rayflume("validate", str(bad), "-n", "a1")
    assert r.returncode == 2 and f"{bad}:32: a1.sinks.k1.hdfs.fileType" in r.stderr and "SequenceFiles" in r.stderr
    # and unmappable ones are warnings
    r = rayflume("validate", str(HERE / "made_up_property.properties"), "--agent", "a1")
    assert r.returncode == 0 and "warning: " in r.stderr and "frobnicate" in r.stderr


def test_deploy_a_flume_file_moves_events(tmp_path):
    """`rayflume deploy flume.conf --agent agent` runs the agent as flume-ng would: the seq source's
    500 events end up in the file_roll sink's files."""
    shutil.copy(HERE / "seq_memory_file_roll.properties", tmp_path / "flume.conf")
    r = rayflume("deploy", "flume.conf", "--agent", "agent", "--num-cpus", "2", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stopped 'agent': 500 events accepted by sources, 500 delivered by sinks" in r.stdout
    lines = []
    for f in sorted((tmp_path / "out").iterdir()):
        lines += f.read_bytes().splitlines()
    assert sorted(int(x) for x in lines) == list(range(500))


# -- Flume's names, lists and references in YAML --------------------------------------------------------
def test_flume_type_names_are_aliases_in_yaml():
    topo = loads_topology(textwrap.dedent("""
        name: aliases
        sources:
          tail: {type: TAILDIR, filegroups: {f1: "/var/log/app/.*[.]log"}, channels: [mem]}
          tail2: {type: org.apache.flume.source.taildir.TaildirSource, filegroups: {f1: /var/log/x/y}, channels: [mem]}
          gen: {type: seq, channels: [mem]}
          sys: {type: syslogtcp, port: 5140, channels: [mem]}
          udp: {type: netcatudp, port: 5141, channels: [mem]}
        channels:
          mem: {type: SPILLABLEMEMORY, overflow_capacity: 0}
        sinks:
          out: {type: hdfs, path: /tmp/x, channel: mem}
          log: {type: org.apache.flume.sink.LoggerSink, channel: mem}
        """))
    assert [c.type for c in topo.sources.values()] == ["taildir", "taildir", "sequence", "syslog_tcp", "netcat"]
    assert topo.sources["udp"].protocol == "udp"  # netcatudp is the netcat source over UDP
    assert topo.channels["mem"].type == "spillable"
    assert topo.sinks["out"].type == "hdfs" and topo.sinks["log"].type == "logger"
    # Actors rebuild configs from Tier.raw, which keeps what the user wrote: the alias resolves there too.
    errors: list[str] = []
    assert build_config("source", topo.tiers[""].raw["sources"]["udp"], "sources.udp", errors).protocol == "udp"
    assert not errors
    # User-facing type lists keep rayflume's names
    assert "TAILDIR" not in registry.known_types("source") and "taildir" in registry.known_types("source")
    assert registry.lookup("sink", "org.apache.flume.sink.AvroSink") is registry.lookup("sink", "avro")
    with pytest.raises(ConfigError) as exc:
        loads_topology("name: t\nsources: {r: {type: jms, channels: [c]}}\nchannels: {c: {type: memory}}\n"
                       "sinks: {k: {type: logger, channel: c}}\n")
    assert any("Flume's jms has no rayflume equivalent" in e and "kafka source" in e for e in exc.value.errors)


def test_space_separated_lists_in_yaml():
    topo = loads_topology(textwrap.dedent("""
        name: lists
        sources:
          gen:
            type: sequence
            channels: c1 c2 c3
            selector: {type: multiplexing, header: s, mapping: {a: c1 c2}, optional: {a: c3}, default: c3}
        channels: {c1: {type: memory}, c2: {type: memory}, c3: {type: memory}}
        sinks:
          k1: {type: null, channel: c1}
          k2: {type: null, channel: c2}
          k3: {type: null, channel: c3}
        sink_groups:
          g: {sinks: k1 k2, processor: {type: failover}}
        """))
    assert topo.sources["gen"].channels == ["c1", "c2", "c3"]
    assert topo.sources["gen"].selector.mapping == {"a": ["c1", "c2"]}
    assert topo.sources["gen"].selector.default == ["c3"]
    assert topo.sink_groups["g"].sinks == ["k1", "k2"]
    assert topo.tiers[""].raw["sources"]["gen"]["channels"] == ["c1", "c2", "c3"]  # what actors receive
    # a name that is not a channel is still reported, one by one
    with pytest.raises(ConfigError) as exc:
        validate({"name": "t", "sources": {"g": {"type": "sequence", "channels": "c1 nope"}},
                  "channels": {"c1": {"type": "memory"}}, "sinks": {"k": {"type": "null", "channel": "c1"}}})
    assert exc.value.errors == ["sources.g.channels[1]: unknown channel 'nope'"]


def test_env_and_file_references_in_yaml(tmp_path, monkeypatch):
    (tmp_path / "port.txt").write_text("45679\n")
    monkeypatch.setenv("RAYFLUME_TEST_BIND", "127.0.0.2")
    monkeypatch.setenv("RAYFLUME_TEST_TOKEN", "s3cret")
    path = tmp_path / "t.yaml"
    path.write_text(textwrap.dedent("""
        name: refs
        sources:
          nc: {type: netcat, bind: "${env:RAYFLUME_TEST_BIND}", port: "${file:port.txt}", channels: [mem]}
          web: {type: http, port: 0, auth_token: "${env:RAYFLUME_TEST_TOKEN}", channels: [mem]}
        channels: {mem: {type: memory}}
        sinks: {out: {type: file_roll, directory: "/data/${env:RAYFLUME_TEST_BIND}/x", channel: mem}}
        metrics: {port: 0, token: "${env:RAYFLUME_TEST_TOKEN}"}
        """))
    topo = load_topology(path)
    assert topo.sources["nc"].bind == "127.0.0.2" and topo.sources["nc"].port == 45679
    assert topo.sinks["out"].directory == "/data/127.0.0.2/x"
    # The http source reads its token on its node at start: the reference stays, never the secret.
    assert topo.sources["web"].auth_token.get_secret_value() == "${env:RAYFLUME_TEST_TOKEN}"
    assert "s3cret" not in repr(topo.raw) and topo.metrics_token == "${env:RAYFLUME_TEST_TOKEN}"
    monkeypatch.delenv("RAYFLUME_TEST_BIND")
    with pytest.raises(ConfigError) as exc:
        load_topology(path)
    assert any(e.startswith("sources.nc.bind: ${env:RAYFLUME_TEST_BIND}: the environment variable "
                            "RAYFLUME_TEST_BIND is not set") and e.endswith("(line 4)") for e in exc.value.errors), \
        exc.value.errors
    (tmp_path / "port.txt").unlink()
    monkeypatch.setenv("RAYFLUME_TEST_BIND", "127.0.0.2")
    with pytest.raises(ConfigError) as exc:
        load_topology(path)
    assert any(e.startswith("sources.nc.port: ${file:port.txt}: cannot read") for e in exc.value.errors)


def test_file_reference_in_a_properties_file(tmp_path):
    (tmp_path / "dir.txt").write_text(str(tmp_path / "rolled"))
    text = (HERE / "seq_memory_file_roll.properties").read_text().replace(
        "sink.directory = out", "sink.directory = ${file:dir.txt}")
    (tmp_path / "flume.conf").write_text(text)
    conversion = convert_file(tmp_path / "flume.conf", "agent")
    assert conversion.data["sinks"]["out"]["directory"] == "${file:dir.txt}"  # written as a reference
    assert load_topology(tmp_path / "flume.conf", agent="agent").sinks["out"].directory == str(tmp_path / "rolled")


# -- the table and its document ------------------------------------------------------------------------
def test_mapping_keys_exist_in_the_component_configs():
    for m in table.ALL:
        cls = registry.lookup(m.kind, m.rayflume_type)
        if cls is None:
            assert m.rayflume_type == "avro", f"{m.kind} {m.rayflume_type} is not registered"
            continue
        for prop in m.props:
            if prop.key is None:
                continue
            key = prop.key.split(".")[0]
            assert key in cls.model_fields or key in m.scratch, f"{m.kind} {m.flume}: {prop.flume} -> {prop.key}"
        for key, _, _ in m.flume_defaults:
            assert key in cls.model_fields
    # every Flume type the registry accepts has its properties mapped
    for flume in registry.FLUME_TYPES:
        assert table.mapping_for(flume.kind, flume.flume_name) is not None, flume


def test_docs_are_generated_from_the_table_and_not_stale():
    doc = (ROOT / "docs" / "flume-properties.md").read_text()
    assert doc == render(), "docs/flume-properties.md is stale: run python scripts/gen_flume_docs.py"
    assert "| `hdfs.rollInterval` | `roll_interval_s` | seconds |" in doc
    assert "| `restartThrottle` | `restart_throttle_s` | milliseconds / 1000 | Wait before a restart. |" in doc
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_flume_docs.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_convert_prints_to_stdout_by_default():
    r = rayflume("convert", str(HERE / "netcat_memory_logger.properties"), "--agent", "a1")
    assert r.returncode == 0, r.stderr
    data = yaml.safe_load(r.stdout)
    assert data["sources"]["r1"] == {"type": "netcat", "channels": ["c1"], "bind": "localhost", "port": 44444}
    assert r.stdout.startswith("# rayflume topology converted from agent 'a1'")
