"""``rayflume types``: component listing, per-type keys, and the topology JSON Schema, all read from
the registered configs."""
from __future__ import annotations

import pathlib

import jsonschema
import pytest
import yaml

from rayflume._private import describe

TOPOLOGIES = sorted(pathlib.Path(__file__).resolve().parents[1].joinpath("topologies").glob("*.yaml"))


def test_every_registered_type_is_listed_with_a_summary():
    table = describe.types_table()
    listed = {(kind, name) for kind, name, _ in table}
    assert {("source", "avro"), ("sink", "thrift"), ("channel", "file"), ("processor", "failover")} <= listed
    assert all(text for kind, name, text in table if kind in ("source", "sink", "channel")), \
        [(k, n) for k, n, t in table if not t and k in ("source", "sink", "channel")]


def test_describe_shows_each_key_with_type_default_and_description():
    text = describe.describe("avro", "sink")
    assert text.startswith("sink avro: avro (Flume's avro sink)")
    line = next(x for x in text.splitlines() if x.strip().startswith("request_timeout_s"))
    assert "float = 20.0" in line
    assert "hostname" in text and "= required" in text
    assert "Flume's request-timeout" in text
    both = describe.describe("avro")
    assert both.count("avro:") == 2  # the source and the sink


def test_describe_an_unknown_type_names_the_known_ones():
    with pytest.raises(LookupError, match="no component type 'avor'.*source avro"):
        describe.describe("avor")


@pytest.mark.parametrize("path", TOPOLOGIES, ids=lambda p: p.name)
def test_shipped_topologies_satisfy_the_schema(path):
    jsonschema.Draft202012Validator(describe.topology_schema()).validate(yaml.safe_load(path.read_text()))


def test_schema_rejects_an_unknown_key_and_a_wrong_type():
    schema = describe.topology_schema()
    validator = jsonschema.Draft202012Validator(schema)
    good = {"sources": {"s": {"type": "sequence", "channels": ["c"]}},
            "channels": {"c": {"type": "memory"}},
            "sinks": {"k": {"type": "avro", "channel": "c", "hostname": "h", "port": 4141}}}
    validator.validate(good)
    bad_key = {**good, "sinks": {"k": {**good["sinks"]["k"], "hostnmae": "h"}}}
    bad_type = {**good, "sinks": {"k": {**good["sinks"]["k"], "port": "4141x"}}}
    for bad in (bad_key, bad_type):
        assert list(validator.iter_errors(bad)), bad


def test_types_command_lists_describes_and_prints_the_schema(capsys):
    import json

    from rayflume.cli import main

    assert main(["types", "--kind", "sink"]) == 0
    listing = capsys.readouterr().out
    rows = [line.split() for line in listing.splitlines()]
    assert {row[0] for row in rows} == {"sink"}  # --kind sink lists sinks only
    assert ["avro", "thrift"] == [row[1] for row in rows if row[1] in ("avro", "thrift")]
    assert main(["types", "TAILDIR"]) == 0  # Flume's name
    assert capsys.readouterr().out.startswith("source taildir:")
    assert main(["types", "--json-schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "rayflume topology"
    assert main(["types", "avor"]) == 2
    assert "no component type 'avor'" in capsys.readouterr().err
