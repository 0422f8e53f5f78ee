"""Built-in component types load lazily: the registry's index of where each type is registered
matches what the modules register, and resolving one type imports its module only (checked in a
fresh interpreter, as an actor process starts). The test components are no built-ins: they are
left out of what users are shown, yet resolve by name where rayflume.testing was never imported."""
from __future__ import annotations

import json
import subprocess
import sys

from rayflume import registry


def test_the_index_names_the_module_registering_every_built_in_type():
    for kind in registry.KINDS:
        registry._load_builtins(kind)
        registered = {name: cls.__module__ for name, cls in registry._registry[kind].items()
                      if cls.__module__.startswith("rayflume.") and cls.__module__ != registry.TESTING_MODULE}
        index = registry._BUILTIN_TYPES[kind]
        assert set(index) == set(registered), f"{kind}: index {sorted(index)} != registered {sorted(registered)}"
        for name, module in registered.items():
            assert module == index[name] or module.startswith(index[name] + "."), (kind, name, module, index[name])


CHILD = """
import json, sys
from rayflume._private.actors import _typed  # what a component actor runs to read its config
_typed("source", {"type": "taildir", "channels": ["disk"], "filegroups": {"a": "/var/log/app.*"}}, "sources.tail")
_typed("channel", {"type": "file"}, "channels.disk")
_typed("sink", {"type": "hdfs", "channel": "disk", "path": "/tmp/out", "roll_count": 0}, "sinks.out")
print(json.dumps(sorted(m for m in sys.modules if m.startswith("rayflume.sources") or m.startswith("rayflume.sinks")
                        or m.startswith("rayflume.channels") or m in ("fastavro", "thrift", "confluent_kafka"))))
"""


def test_an_agent_s_types_import_only_their_own_modules():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "rayflume.sources.taildir.source" in loaded and "rayflume.sinks.hdfs.config" in loaded, sorted(loaded)
    for unused in ("rayflume.sources.syslog", "rayflume.sources.kafka", "rayflume.sources.avro",
                   "rayflume.sinks.http", "rayflume.channels.kafka", "fastavro", "thrift", "confluent_kafka"):
        assert unused not in loaded, f"{unused} was imported for taildir -> file -> hdfs"


def test_flume_names_and_listings_still_load_every_built_in():
    assert registry.canonical_type("source", "TAILDIR")[0] == "taildir"
    assert {"syslog_tcp", "kafka", "taildir"} <= set(registry.known_types("source"))


TESTING_CHILD = """
import json, sys
from rayflume import registry
from rayflume.topology import validate
from rayflume.errors import ConfigError
before = "rayflume.testing" in sys.modules
listed = registry.known_types("source") + registry.known_types("sink")
try:
    validate({"name": "t", "sources": {"s": {"type": "no_such_type", "channels": ["m"]}},
              "channels": {"m": {"type": "memory"}}, "sinks": {"k": {"type": "null", "channel": "m"}}})
    message = ""
except ConfigError as exc:
    message = str(exc)
found = [registry.lookup("source", "testing_feed") is not None, registry.lookup("sink", "flaky_sink") is not None]
print(json.dumps({"before": before, "listed": listed, "message": message, "found": found}))
"""


def test_test_components_are_not_listed_to_users_but_resolve_by_name():
    out = subprocess.run([sys.executable, "-c", TESTING_CHILD], capture_output=True, text=True, timeout=120,
                         check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["before"] is False  # listing the types did not load the test components
    testing_types = {"testing_source", "testing_feed", "testing_sink", "flaky_sink"}
    assert not testing_types & set(got["listed"]), got["listed"]
    assert "known types: " in got["message"] and "sequence" in got["message"], got["message"]
    assert not any(t in got["message"] for t in testing_types), got["message"]
    assert got["found"] == [True, True]
