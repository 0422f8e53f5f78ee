"""Topology validation: every problem collected with its path, before anything starts.

The wording of the commonest mistakes and line numbers are tested in test_config_errors.py; the
helper here drops the `` (line N)`` suffix so these tests read the path and message only.
"""
import re
import textwrap

import pytest

from rayflume.errors import ConfigError
from rayflume.topology import load_topology, loads_topology, local_environment_warnings


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        loads_topology(textwrap.dedent(text))
    return [re.sub(r" \(line \d+\)$", "", e) for e in exc.value.errors]


GOOD = """
name: t
sources:
  gen: {type: sequence, total_events: 10, batch_size: 10, channels: [mem]}
channels:
  mem: {type: memory, capacity: 100, transaction_capacity: 10}
sinks:
  out: {type: null, channel: mem, batch_size: 10}
"""


def test_valid_topology_loads():
    topo = loads_topology(GOOD)
    assert topo.name == "t"
    assert set(topo.sources) == {"gen"} and set(topo.channels) == {"mem"} and set(topo.sinks) == {"out"}
    assert topo.groups() == {"out": ["out"]}
    assert topo.metrics_port == 41414 and topo.metrics_host == "127.0.0.1"


def test_every_problem_is_reported_with_its_path():
    errors = errors_of("""
        name: broken
        sources:
          tail:
            type: sequence
            channels: [mem, disk]
            batch_size: 500
            interceptors: [{type: timestamp, header_nam: ts}, {type: nosuch}]
          other: {type: warp_drive, channels: [mem]}
        channels:
          mem: {type: memory, transaction_capacity: 100}
          spare: {type: memory}
        sinks:
          out: {type: null, channel: mem, batch_size: 0}
          lost: {type: logger, channel: nowhere}
          k2: {type: null, channel: mem}
        sink_groups:
          g1: {sinks: [out, k2], processor: {type: failover}}
          g2: {sinks: [k2, ghost], processor: {type: load_balance}}
        """)
    expected = [
        "sources.tail.channels[1]: unknown channel 'disk'",
        "sources.tail.batch_size: 500 exceeds transaction_capacity 100 of channel 'mem'",
        "sources.tail.interceptors[0].header_nam: unknown key",
        "sources.tail.interceptors[1].type: unknown interceptor type 'nosuch'",
        "sources.other.type: unknown source type 'warp_drive'",
        "sinks.out.batch_size: Input should be greater than 0",
        "sinks.lost.channel: unknown channel 'nowhere'",
        "sink_groups.g2.sinks[0]: sink 'k2' is already in group 'g1'",
        "sink_groups.g2.sinks[1]: unknown sink 'ghost'",
        "channels.spare: unused channel",
    ]
    for prefix in expected:
        assert any(e.startswith(prefix) for e in errors), (prefix, errors)
    assert len(errors) == len(expected), errors


def test_error_message_names_topology_and_what_to_do():
    with pytest.raises(ConfigError) as exc:
        loads_topology(GOOD.replace("batch_size: 10, channels", "batch_size: 50, channels"))
    msg = str(exc.value)
    assert "topology 't'" in msg
    assert "lower batch_size or raise transaction_capacity" in msg


def test_missing_keys_and_wrong_types():
    errors = errors_of("""
        sources:
          gen: {type: sequence, channels: 5, batch_size: lots}
        channels:
          mem: {capacity: 10}
        sinks:
          out: {type: null}
        """)
    assert "name: required key is missing; give the topology a name" in errors
    assert "sources.gen.channels: expected a list, e.g. [5]; got the number 5" in errors
    assert "sources.gen.batch_size: expected a whole number, e.g. 100; got the string 'lots'" in errors
    assert any(e.startswith("channels.mem: missing required key `type`; known channel types:") for e in errors)
    assert "sinks.out: missing required key `channel`: the channel this sink drains" in errors


def test_invalid_yaml_reports_line():
    errors = errors_of("name: t\nsources: [unclosed\n")
    assert len(errors) == 1 and "invalid YAML at line" in errors[0]


def test_duplicate_keys_are_errors_not_overwrites():
    errors = errors_of("""
        name: t
        sources:
          gen: {type: sequence, channels: [mem]}
          gen: {type: sequence, channels: [mem]}
        channels: {mem: {type: memory}}
        sinks: {out: {type: null, channel: mem}}
        """)
    assert any("duplicate key 'gen'" in e for e in errors), errors


def test_names_unique_across_kinds_and_undrained_channel():
    errors = errors_of("""
        name: t
        sources:
          x: {type: sequence, channels: [x, y]}
        channels: {x: {type: memory}, y: {type: memory}}
        sinks: {out: {type: null, channel: x}}
        """)
    assert any(e.startswith("channels.x: the name 'x' is also used in sources") for e in errors), errors
    assert any(e.startswith("channels.y: no sink drains this channel") for e in errors), errors


def test_null_channel_needs_no_sink():
    topo = loads_topology("""
name: t
sources: {gen: {type: sequence, channels: [nul]}}
channels: {nul: {type: null}}
sinks: {}
""".replace("sinks: {}", "sinks: {out: {type: null, channel: nul}}"))
    assert "nul" in topo.channels


def test_selector_and_processor_names_are_checked():
    errors = errors_of("""
        name: t
        sources:
          gen:
            type: sequence
            channels: [a]
            selector: {type: multiplexing, header: h, mapping: {x: [b]}}
        channels: {a: {type: memory}, b: {type: memory}}
        sinks:
          k1: {type: null, channel: a}
          k2: {type: null, channel: b}
        sink_groups:
          g: {sinks: [k1, k2], processor: {type: failover, priority: {k1: 1, k3: 2}}}
        """)
    assert any(e.startswith("sources.gen.selector: names channel 'b'") for e in errors), errors
    assert any(e.startswith("sink_groups.g.processor: names sink 'k3'") for e in errors), errors


def test_exec_command_not_found_here_is_a_local_warning_not_an_error():
    # The command may be installed only on the nodes that run the source: they check it at start.
    topo = loads_topology(textwrap.dedent("""
        name: t
        sources: {tail: {type: exec, command: /no/such/binary --flag, channels: [mem]}}
        channels: {mem: {type: memory}}
        sinks: {out: {type: null, channel: mem}}
        """))
    (warning,) = local_environment_warnings(topo)
    assert warning.startswith("sources.tail: ") and "`command`" in warning and "/no/such/binary" in warning


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_topology(tmp_path / "missing.yaml")
    assert "cannot read the topology file" in str(exc.value)


def test_shipped_topologies_are_valid():
    import pathlib

    files = sorted(pathlib.Path(__file__).parent.parent.joinpath("topologies").glob("*.yaml"))
    assert files
    for f in files:
        load_topology(f)


TIERED = """
name: tt
tiers:
  agent:
    placement: {per_node: {label: agent}}
    sources: {gen: {type: sequence, channels: [mem]}}
    channels: {mem: {type: memory}}
    sinks: {fwd: {type: rayflume, tier: collector, channel: mem}}
  collector:
    placement: {replicas: 2, label: collector}
    sources: {in: {type: rayflume, channels: [mem]}}
    channels: {mem: {type: memory}}
    sinks: {out: {type: null, channel: mem}}
"""


def test_tiered_topology_loads():
    topo = loads_topology(TIERED)
    assert topo.tiered and set(topo.tiers) == {"agent", "collector"}
    agent, collector = topo.tiers["agent"], topo.tiers["collector"]
    assert agent.placement.mode == "per_node" and agent.placement.labels == {"tier": "agent"}
    assert collector.placement.mode == "replicas" and collector.placement.replicas == 2
    assert agent.hops() == {"fwd": "collector"}
    assert collector.placement.matches({"Labels": {"tier": "collector"}})
    assert not collector.placement.matches({"Labels": {"tier": "agent"}})


def test_tier_errors_are_reported_with_paths():
    errors = errors_of(TIERED.replace("tier: collector", "tier: colector")
                       .replace("replicas: 2", "replicas: 0")
                       .replace("sources: {in: {type: rayflume", "sources: {in: {type: rayflum"))
    assert any(e.startswith("tiers.agent.sinks.fwd.tier: unknown tier 'colector'") for e in errors), errors
    assert "tiers.collector.placement.replicas: must be a whole number of at least 1" in errors
    assert any(e.startswith("tiers.collector.sources.in.type: unknown source type 'rayflum'") for e in errors)


def test_tier_cycle_and_missing_receiver():
    cyclic = TIERED.replace("sinks: {out: {type: null, channel: mem}}",
                            "sinks: {out: {type: rayflume, tier: agent, channel: mem}}")
    errors = errors_of(cyclic)
    assert any("tiers.collector.sinks.out.tier: tier 'agent' has no rayflume source" in e for e in errors), errors
    assert any(e.startswith("tiers: the hops form a cycle: agent -> collector -> agent") for e in errors), errors


def test_components_at_top_level_with_tiers_and_hop_without_tiers():
    errors = errors_of(TIERED + "sources: {x: {type: sequence, channels: [mem]}}\n")
    assert "sources: with tiers, components go under a tier (tiers.<tier>.sources)" in errors
    errors = errors_of("""
        name: single
        sources: {gen: {type: sequence, channels: [mem]}}
        channels: {mem: {type: memory}}
        sinks: {fwd: {type: rayflume, tier: collector, channel: mem}}
        """)
    assert any(e.startswith("sinks.fwd.tier: a rayflume sink sends to another tier") for e in errors), errors


def test_kafka_channel_may_stand_without_source_or_sink():
    only_sink = loads_topology("""
name: k
channels: {topic: {type: kafka, bootstrap_servers: "127.0.0.1:9092"}}
sinks: {out: {type: null, channel: topic}}
""")
    assert set(only_sink.channels) == {"topic"} and not only_sink.sources
    only_source = loads_topology("""
name: k
sources: {gen: {type: sequence, channels: [topic]}}
channels: {topic: {type: kafka, bootstrap_servers: "127.0.0.1:9092"}}
""")
    assert not only_source.sinks
    errors = errors_of("""
        name: k
        channels: {mem: {type: memory}}
        sinks: {out: {type: null, channel: mem}}
        """)
    assert "sources: at least one source is required" in errors


def test_sink_groups_must_be_a_mapping():
    errors = errors_of(GOOD + "sink_groups: [out]\n")
    assert "sink_groups: expected a mapping of group names to {sinks, processor}" in errors
