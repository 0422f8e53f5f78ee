"""Validation messages for a Flume user's first mistakes, and Flume's first example as written.

Each message is asserted by content: the path, the suggestion or expected form, and the YAML line.
Pure Python: no Ray.
"""
import copy
import textwrap

import pytest

from rayflume.errors import ConfigError
from rayflume.topology import build_config, load_topology, loads_topology, validate


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        loads_topology(textwrap.dedent(text))
    return exc.value.errors


def the_error(errors: list[str], path: str) -> str:
    """The one error about ``path`` (its text before the first ': ')."""
    found = [e for e in errors if e.split(": ", 1)[0] == path]
    assert len(found) == 1, (path, errors)
    return found[0]


# Flume's first documented example (netcat -> memory -> logger), in rayflume YAML.
FLUME_EXAMPLE = """\
name: a1
sources:
  r1:
    type: netcat
    bind: localhost
    port: 44444
    channels: [c1]
channels:
  c1:
    type: memory
    capacity: 1000
    transaction_capacity: 100
sinks:
  k1:
    type: logger
    channel: c1
"""


# -- unknown keys ------------------------------------------------------------------------------------
def test_camel_case_key_suggests_snake_case_with_line():
    errors = errors_of(FLUME_EXAMPLE.replace("transaction_capacity: 100", "transactionCapacity: 100"))
    assert errors == ["channels.c1.transactionCapacity: unknown key; did you mean `transaction_capacity`? "
                      "(line 12)"]


def test_misspelt_key_suggests_the_declared_field():
    errors = errors_of(FLUME_EXAMPLE.replace("    channels: [c1]", "    chanels: [c1]"))
    assert the_error(errors, "sources.r1.chanels") == ("sources.r1.chanels: unknown key; did you mean `channels`? "
                                                       "(line 7)")


def test_flume_duration_name_suggests_the_seconds_field():
    errors = errors_of("""
        name: t
        sources: {gen: {type: sequence, channels: [mem]}}
        channels: {mem: {type: memory}}
        sinks:
          out: {type: file_roll, channel: mem, directory: /tmp/x, rollInterval: 30}
          k2: {type: logger, channel: mem, batchSize: 10}
        """)
    assert "did you mean `roll_interval_s` (in seconds)?" in the_error(errors, "sinks.out.rollInterval")
    assert "did you mean `batch_size`?" in the_error(errors, "sinks.k2.batchSize")
    errors = errors_of("""
        name: t
        sources: {gen: {type: sequence, channels: [mem]}}
        channels: {mem: {type: memory}}
        sinks: {k: {type: hdfs, channel: mem, path: /tmp/x, hdfs.rollCount: 0}}
        sink_groups: {g: {sinks: [k], processor: {type: failover, maxpenalty: 30000}}}
        """)
    assert "did you mean `roll_count`?" in the_error(errors, "sinks.k.hdfs.rollCount")
    assert "did you mean `max_penalty_s` (in seconds)?" in the_error(errors, "sink_groups.g.processor.maxpenalty")


def test_unknown_key_without_a_close_match_lists_the_keys():
    errors = errors_of(FLUME_EXAMPLE.replace("capacity: 1000", "capacity: 1000\n    colour: blue"))
    msg = the_error(errors, "channels.c1.colour")
    assert "unknown key; known keys:" in msg and "transaction_capacity" in msg and "did you mean" not in msg
    assert "type," not in msg  # `type` is never the key that was meant


def test_unknown_keys_in_tiers_groups_placement_and_top_level_are_suggested():
    errors = errors_of("""
        name: tt
        metrics: {prot: 0}
        tiers:
          agent:
            placement: {per_node: {lable: agent}}
            sources: {gen: {type: sequence, channels: [mem]}}
            channels: {mem: {type: memory}}
            sinks: {fwd: {type: rayflume, tier: collector, channel: mem}}
            sinkgroups: {}
          collector:
            placement: {replica: 2, label: collector}
            sources: {in: {type: rayflume, channels: [mem]}}
            channels: {mem: {type: memory}}
            sinks:
              a: {type: null, channel: mem}
              b: {type: null, channel: mem}
            sink_groups:
              g: {sinks: [a, b], procesor: {type: failover}}
        """)
    assert "did you mean `port`?" in the_error(errors, "metrics.prot")
    assert "did you mean `label`?" in the_error(errors, "tiers.agent.placement.per_node.lable")
    assert "did you mean `sink_groups`?" in the_error(errors, "tiers.agent.sinkgroups")
    assert "did you mean `replicas`?" in the_error(errors, "tiers.collector.placement.replica")
    assert "did you mean `processor`?" in the_error(errors, "tiers.collector.sink_groups.g.procesor")
    errors = errors_of(FLUME_EXAMPLE + "sinkGroups: {}\n")
    assert the_error(errors, "sinkGroups") == "sinkGroups: unknown key; did you mean `sink_groups`? (line 17)"


def test_misspelt_references_suggest_the_name():
    errors = errors_of(FLUME_EXAMPLE.replace("channel: c1", "channel: c11").replace("type: logger", "type: loger"))
    assert "unknown channel 'c11'; did you mean 'c1'?" in the_error(errors, "sinks.k1.channel")
    assert "did you mean 'logger'?" in the_error(errors, "sinks.k1.type")


# -- type errors in words ----------------------------------------------------------------------------
def test_scalar_where_a_list_is_expected():
    # `channels: c1` is Flume's space-separated list, accepted (tests/test_flume_conf.py); a scalar
    # for a list that is no list of names is still an error in words.
    errors = errors_of(FLUME_EXAMPLE.replace("channels: [c1]", "channels: [c1]\n    interceptors: timestamp"))
    assert the_error(errors, "sources.r1.interceptors") == ("sources.r1.interceptors: expected a list, e.g. "
                                                            "[timestamp]; got the string 'timestamp' (line 8)")


def test_string_where_a_number_is_expected():
    errors = errors_of(FLUME_EXAMPLE.replace("capacity: 1000", "capacity: lots")
                       .replace("channel: c1", "channel: c1\n    batch_duration_s: 2s"))
    assert the_error(errors, "channels.c1.capacity") == ("channels.c1.capacity: expected a whole number, e.g. 100; "
                                                         "got the string 'lots' (line 11)")
    assert the_error(errors, "sinks.k1.batch_duration_s") == (
        "sinks.k1.batch_duration_s: expected a number of seconds, e.g. 30; got the string '2s' (line 17)")


def test_mapping_expected():
    errors = errors_of(FLUME_EXAMPLE.replace("  c1:\n    type: memory", "  c1: memory\n  c9:\n    type: memory"))
    assert the_error(errors, "channels.c1") == ("channels.c1: expected a mapping of the channel's settings, "
                                                "e.g. {type: ...}; got the string 'memory' (line 9)")
    errors = errors_of("""
        name: t
        sources: {gen: {type: sequence, channels: [mem]}}
        channels: {mem: {type: memory}}
        sinks: {a: {type: null, channel: mem}, b: {type: null, channel: mem}}
        sink_groups: {g: {sinks: [a, b], processor: {type: failover, priority: a}}}
        """)
    assert the_error(errors, "sink_groups.g.processor.priority") == (
        "sink_groups.g.processor.priority: expected a mapping, e.g. {key: value}; got the string 'a' (line 6)")


def test_missing_required_key_names_it_and_says_what_it_is_for():
    errors = errors_of(FLUME_EXAMPLE.replace("    channel: c1\n", ""))
    assert the_error(errors, "sinks.k1") == ("sinks.k1: missing required key `channel`: the channel this sink "
                                             "drains (line 14)")
    errors = errors_of(FLUME_EXAMPLE.replace("    type: memory\n", ""))
    msg = the_error(errors, "channels.c1")
    assert msg.startswith("channels.c1: missing required key `type`; known channel types:") and "memory" in msg
    assert msg.endswith("(line 9)")


def test_a_value_fitting_no_alternative_is_one_problem():
    errors = errors_of("""
        name: t
        sources: {s: {type: syslog_tcp, port: 1, channels: [m], keep_fields: {a: 1}}}
        channels: {m: {type: memory}}
        sinks: {k: {type: null, channel: m}}
        """)
    assert errors == ["sources.s.keep_fields: expected true or false or a string or a list, e.g. [a, b]; got a "
                      "mapping (line 3)"]


def test_other_pydantic_messages_keep_their_words_and_say_what_was_given():
    errors = errors_of(FLUME_EXAMPLE.replace("capacity: 1000", "capacity: -5"))
    assert the_error(errors, "channels.c1.capacity") == ("channels.c1.capacity: Input should be greater than 0; "
                                                         "got the number -5 (line 11)")


# -- line numbers --------------------------------------------------------------------------------------
def test_lines_are_given_for_files_and_point_at_list_items(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(FLUME_EXAMPLE.replace("channels: [c1]", "channels:\n      - c1\n      - disk"))
    with pytest.raises(ConfigError) as exc:
        load_topology(path)
    assert exc.value.errors == ["sources.r1.channels[1]: unknown channel 'disk' (line 9)"]


def test_dicts_given_directly_have_no_lines():
    data = {"name": "t", "sources": {"r1": {"type": "netcat", "port": 44444, "channels": 7}},
            "channels": {"c1": {"type": "memory"}}, "sinks": {"k1": {"type": "logger", "channel": "c1"}}}
    with pytest.raises(ConfigError) as exc:
        validate(data)
    assert exc.value.errors == ["sources.r1.channels: expected a list, e.g. [7]; got the number 7"]


def test_lines_survive_anchors_and_merges():
    errors = errors_of("""
        name: t
        sources: {gen: {type: sequence, channels: [mem, big, c3]}}
        channels:
          base: &base {type: memory, capacity: 10}
          mem:
            <<: *base
            capacity: 20
            capcity: 5
          big: &big {type: memory, byte_capacity: lots}
          c3: *big
        sinks:
          o1: {type: null, channel: mem}
          o2: {type: null, channel: base}
          o3: {type: null, channel: big}
          o4: {type: null, channel: c3}
        """)
    # overriding a merged key is not a duplicate; the override's own line is given
    assert the_error(errors, "channels.mem.capcity") == ("channels.mem.capcity: unknown key; did you mean "
                                                         "`capacity`? (line 9)")
    # a shared anchor: its own lines where it is written, the alias's line where it is used
    assert the_error(errors, "channels.big.byte_capacity").endswith("(line 10)")
    assert the_error(errors, "channels.c3.byte_capacity").endswith("(line 11)")
    assert len(errors) == 3, errors


# -- not a topology at all -----------------------------------------------------------------------------
FLUME_PROPERTIES = """\
# example.conf: A single-node Flume configuration
a1.sources = r1
a1.sinks = k1
a1.channels = c1

a1.sources.r1.type = netcat
a1.sources.r1.bind = localhost
a1.sources.r1.port = 44444
a1.channels.c1.type = memory
a1.channels.c1.capacity = 1000
a1.channels.c1.transactionCapacity = 100
a1.sources.r1.channels = c1
a1.sinks.k1.channel = c1
a1.sinks.k1.type = logger
"""


@pytest.mark.parametrize("filename", ["example.conf", "example.properties"])
def test_flume_properties_file_is_one_clear_error(tmp_path, filename):
    path = tmp_path / filename
    path.write_text(FLUME_PROPERTIES)
    with pytest.raises(ConfigError) as exc:
        load_topology(path)
    [msg] = exc.value.errors
    # Without the agent to run, a Flume file is refused with directions (tests/test_flume_conf.py
    # runs it with one).
    assert msg.startswith(f"{path}: this is a Flume agent configuration")
    assert "configures agent(s): a1" in msg and "--agent" in msg and "rayflume convert" in msg


def test_properties_text_and_properties_suffix_are_recognised():
    with pytest.raises(ConfigError, match="Flume agent configuration"):
        loads_topology(FLUME_PROPERTIES)
    # a YAML topology that merely mentions such a line is still read as YAML
    topo = loads_topology(FLUME_EXAMPLE.replace("type: logger", "type: logger  # a1.sinks = k1"))
    assert set(topo.sinks) == {"k1"}


def test_invalid_yaml_gives_line_and_column_not_a_traceback():
    errors = errors_of("name: t\nsources: [unclosed\n")
    assert len(errors) == 1
    assert errors[0].startswith("<topology>: invalid YAML at line 3, column 1: expected ',' or ']'")
    assert "flow sequence that starts at line 2, column 10" in errors[0]
    errors = errors_of("name: t\nsources:\n\tgen: {}\n")
    assert "invalid YAML at line 3, column 1" in errors[0] and "spaces, not tabs" in errors[0]


def test_duplicate_keys_are_still_errors():
    errors = errors_of(FLUME_EXAMPLE + "sinks: {}\n")
    assert errors == ["<topology>: line 17: duplicate key 'sinks'; names must be unique"]


# -- Flume's first example is valid as written ---------------------------------------------------------
def test_flume_first_example_is_valid_and_batches_fit_the_channel():
    topo = loads_topology(FLUME_EXAMPLE)
    assert topo.sources["r1"].batch_size == 100  # netcat's default is 1000
    assert topo.sinks["k1"].batch_size == 100
    assert topo.sources["r1"].bind == "localhost" and topo.sources["r1"].port == 44444
    # Actors rebuild their config from Tier.raw (actors._typed -> build_config): the effective
    # batch size must be there.
    tier = topo.tiers[""]
    assert tier.raw["sources"]["r1"]["batch_size"] == 100
    errors: list[str] = []
    assert build_config("source", tier.raw["sources"]["r1"], "sources.r1", errors).batch_size == 100
    assert not errors
    # What the user wrote is unchanged (redeploys compare it), and validating it again (as the
    # controller does) gives the same effective mappings.
    assert "batch_size" not in topo.raw["sources"]["r1"]
    assert validate(copy.deepcopy(topo.raw)).tiers[""].raw == tier.raw


def test_default_batch_sizes_take_the_smallest_transaction_capacity():
    topo = loads_topology(FLUME_EXAMPLE.replace("channels: [c1]", "channels: [c1, c2]")
                          .replace("transaction_capacity: 100", "transaction_capacity: 100\n"
                                   "  c2: {type: memory, transaction_capacity: 30}")
                          .replace("    channel: c1", "    channel: c2")
                          + "  k2: {type: logger, channel: c1}\n")
    assert topo.sources["r1"].batch_size == 30
    assert topo.sinks["k1"].batch_size == 30  # the logger's default is 100
    assert topo.sinks["k2"].batch_size == 100 and "batch_size" not in topo.tiers[""].raw["sinks"]["k2"]
    assert topo.tiers[""].raw["sinks"]["k1"] == {"type": "logger", "channel": "c2", "batch_size": 30}


def test_given_dict_is_not_modified():
    data = {"name": "a1", "sources": {"r1": {"type": "netcat", "port": 44444, "channels": ["c1"]}},
            "channels": {"c1": {"type": "memory", "capacity": 1000, "transaction_capacity": 100}},
            "sinks": {"k1": {"type": "logger", "channel": "c1"}}}
    before = copy.deepcopy(data)
    topo = validate(data)
    assert data == before and topo.raw == before
    assert topo.sources["r1"].batch_size == 100


def test_explicit_batch_size_above_transaction_capacity_is_still_an_error():
    errors = errors_of(FLUME_EXAMPLE.replace("    port: 44444", "    port: 44444\n    batch_size: 1000")
                       .replace("    channel: c1", "    channel: c1\n    batch_size: 500"))
    assert the_error(errors, "sources.r1.batch_size") == (
        "sources.r1.batch_size: 1000 exceeds transaction_capacity 100 of channel 'c1'; lower batch_size or raise "
        "transaction_capacity (line 7)")
    assert the_error(errors, "sinks.k1.batch_size").startswith(
        "sinks.k1.batch_size: 500 exceeds transaction_capacity 100 of channel 'c1'")


def test_explicit_smaller_batch_size_is_kept():
    topo = loads_topology(FLUME_EXAMPLE.replace("    port: 44444", "    port: 44444\n    batch_size: 10"))
    assert topo.sources["r1"].batch_size == 10
    assert topo.tiers[""].raw["sources"]["r1"]["batch_size"] == 10


def test_tiers_fit_default_batch_sizes_per_tier():
    topo = loads_topology("""
name: tt
tiers:
  agent:
    placement: {per_node: {label: agent}}
    sources: {gen: {type: sequence, channels: [mem]}}
    channels: {mem: {type: memory, transaction_capacity: 200}}
    sinks: {fwd: {type: rayflume, tier: collector, channel: mem}}
  collector:
    placement: {replicas: 2, label: collector}
    sources: {in: {type: rayflume, channels: [mem]}}
    channels: {mem: {type: memory, transaction_capacity: 50}}
    sinks: {out: {type: null, channel: mem}}
""")
    agent, collector = topo.tiers["agent"], topo.tiers["collector"]
    assert agent.sources["gen"].batch_size == 200 and agent.sinks["fwd"].batch_size == 200
    assert agent.raw["sinks"]["fwd"]["batch_size"] == 200
    assert collector.sources["in"].batch_size == 50 and collector.sinks["out"].batch_size == 50
    assert collector.raw["sources"]["in"]["batch_size"] == 50


@pytest.mark.parametrize("section", ["sources", "channels", "sinks", "sink_groups"])
def test_a_section_that_is_not_a_mapping_is_named_not_a_crash(section):
    topology = {"name": "t", "sources": {"s": {"type": "sequence", "channels": ["m"]}},
                "channels": {"m": {"type": "memory"}}, "sinks": {"k": {"type": "null", "channel": "m"}}}
    topology[section] = "abc"
    with pytest.raises(ConfigError) as info:
        validate(topology)
    assert any(e.startswith(f"{section}: expected a mapping") for e in info.value.errors), info.value.errors
