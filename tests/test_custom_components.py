"""Components of one's own: config classes named by import path, by an installed distribution's
entry point, or passed as class objects, with their code shipped to the actors through the
topology's runtime_env, on a two-node Ray cluster on loopback.

The user code is the example's (examples/custom_components/my_components.py), copied by each test
into a package of its own under tmp_path: no worker of the cluster can import it unless the
topology ships it.
"""
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import rayflume
from rayflume import registry
from rayflume._private.controller import check_class_types_pickle, spec_from_store, storable_spec
from rayflume.config_base import SourceConfig
from rayflume.errors import ConfigError
from rayflume.topology import load_topology, merge_runtime_envs, validate
from tests.channel_contract import wait_until
from tests.cluster_helpers import child_env, start_cluster, stop_cluster, tier_instances

EXAMPLE_DIR = Path(__file__).resolve().parent.parent / "examples" / "custom_components"
EXAMPLE_MODULE = EXAMPLE_DIR / "my_components.py"


@pytest.fixture(scope="module")
def cluster():
    c = start_cluster({"tier": "head"})
    c.add_node(num_cpus=1, labels={"tier": "worker"})
    yield c
    stop_cluster(c)


def components_package(root: Path) -> tuple[Path, str]:
    """A package holding the example's components under ``root``, named uniquely (a test process
    keeps the modules it imported): ``(package directory, package name)``."""
    name = f"numbered_{uuid.uuid4().hex[:8]}"
    package = root / "code" / name
    package.mkdir(parents=True)
    # Ray names an uploaded py_modules package by a hash of its files, not of its directory's name:
    # two packages with the same files would share one upload, under the first one's name.
    (package / "__init__.py").write_text(EXAMPLE_MODULE.read_text() + f"\n# package {name}\n")
    return package, name


def numbered_topology(name: str, module: str, out_dir: Path, count: int, replicas: int = 2,
                      runtime_env: dict | None = None) -> dict:
    """``replicas`` instances (spread over the nodes), each a numbered source into a file sink."""
    topology = {
        "name": name,
        "metrics": {"port": None},
        "tiers": {"numbers": {
            "placement": {"replicas": replicas},
            "sources": {"gen": {"type": f"{module}:NumberedSourceConfig", "count": count, "batch_size": 500,
                                "channels": ["mem"]}},
            "channels": {"mem": {"type": "memory", "capacity": 10_000}},
            "sinks": {"lines": {"type": f"{module}:NumberedFileSinkConfig", "channel": "mem",
                                "directory": str(out_dir)}},
        }},
    }
    if runtime_env is not None:
        topology["runtime_env"] = runtime_env
    return topology


def numbers_in(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def test_import_path_components_shipped_with_py_modules_deliver_every_event_on_both_nodes(cluster, tmp_path):
    package, module = components_package(tmp_path)
    out = tmp_path / "out"
    count = 3000
    topology = numbered_topology("cc-shipped", module, out, count, runtime_env={"py_modules": [str(package)]})
    # --log-level's runtime_env (env_vars) and the topology's (py_modules) are merged: the module
    # reaches the actors, and the controller logs at ERROR only
    handle = rayflume.deploy(topology, log_level="ERROR")
    try:
        instances = tier_instances(handle, "numbers")
        assert len(instances) == 2 and len(set(instances.values())) == 2, f"one replica per node: {instances}"
        files = [out / f"cc-shipped-numbers-{i}-lines.txt" for i in sorted(instances)]
        wait_until(lambda: all(len(set(numbers_in(f))) == count for f in files), timeout_s=90,
                   what=f"all {count} numbered events in {[f.name for f in files]}")
        for f in files:
            assert sorted(set(numbers_in(f))) == list(range(count)), f.name
        status = handle.status()
        assert not [c for c in status["components"] if c.get("error")], status["components"]
        assert status["events"] and not [line for line in handle._call("logs") if " INFO " in line]

        # the environment of a running topology is fixed: a redeploy that changes it is refused
        changed = {**topology, "runtime_env": {"py_modules": [str(package)], "env_vars": {"X": "1"}}}
        with pytest.raises(Exception, match="runtime_env"):
            rayflume.deploy(changed)
    finally:
        handle.stop(drain_timeout_s=10)


def test_a_runtime_env_given_to_deploy_ships_the_components(cluster, tmp_path, monkeypatch):
    package, module = components_package(tmp_path)
    out = tmp_path / "out"
    count = 1000
    monkeypatch.chdir(tmp_path)  # the call's relative paths are relative to the current directory
    handle = rayflume.deploy(numbered_topology("cc-call-env", module, out, count),
                             runtime_env={"py_modules": [os.path.relpath(package, tmp_path)],
                                          "env_vars": {"CC_CALL_ENV": "1"}})
    try:
        instances = tier_instances(handle, "numbers")
        files = [out / f"cc-call-env-numbers-{i}-lines.txt" for i in sorted(instances)]
        try:
            wait_until(lambda: all(sorted(set(numbers_in(f))) == list(range(count)) for f in files), timeout_s=90,
                       what=f"all {count} numbered events in {[f.name for f in files]}")
        except AssertionError:
            raise AssertionError(f"{[len(numbers_in(f)) for f in files]} events; status: {handle.status()}") from None
        assert len(set(instances.values())) == 2, f"one replica per node: {instances}"
        assert handle._call("raw_topology")["runtime_env"] == {"py_modules": [str(package)],
                                                               "env_vars": {"CC_CALL_ENV": "1"}}
    finally:
        handle.stop(drain_timeout_s=10)


def test_a_runtime_env_given_to_deploy_is_validated_with_the_topology(tmp_path):
    package, module = components_package(tmp_path)
    topology = numbered_topology("cc-validate", module, tmp_path / "out", 10)
    with pytest.raises(ConfigError, match=module):  # not importable here without the call's runtime_env
        validate(topology)
    from rayflume.api import _as_topology

    topo = _as_topology(topology, {"py_modules": [str(package)]})
    assert topo.raw["runtime_env"] == {"py_modules": [str(package)]}
    with pytest.raises(ConfigError, match="runtime_env"):
        _as_topology(topology, {"py_modules": [str(package)], "conda": "env"})


def test_components_not_shipped_fail_the_deploy_naming_the_module(cluster, tmp_path, monkeypatch):
    package, module = components_package(tmp_path)
    # importable here, where the topology is validated first, but on no node of the cluster
    monkeypatch.syspath_prepend(str(package.parent))
    topology = numbered_topology("cc-unshipped", module, tmp_path / "out", 10, replicas=1)
    validate(topology)
    with pytest.raises(Exception) as failed:
        rayflume.deploy(topology)
    message = str(failed.value)
    assert f"cannot import module '{module}'" in message and "runtime_env" in message, message
    assert "cc-unshipped" not in rayflume.list_deployed()


def test_example_topology_runs_with_its_working_dir(cluster, tmp_path):
    example = load_topology(EXAMPLE_DIR / "topology.yaml")
    # a relative working_dir is relative to the topology file
    assert example.runtime_env == {"working_dir": str(EXAMPLE_DIR)}
    raw = {**example.raw, "name": "cc-example", "metrics": {"port": None},
           "sources": {"numbers": {**example.raw["sources"]["numbers"], "count": 2000}},
           "sinks": {"lines": {**example.raw["sinks"]["lines"], "directory": str(tmp_path)}}}
    handle = rayflume.deploy(raw)
    try:
        handle.wait_finished(timeout_s=90)
        assert numbers_in(tmp_path / "cc-example-lines.txt") == list(range(2000))
        assert handle.metrics()["SINK.lines"]["LinesWritten"] == "2000"
    finally:
        handle.stop(drain_timeout_s=10)


NOTEBOOK_DRIVER = textwrap.dedent("""
    # A driver whose config classes live in __main__, as in a notebook: no other process can
    # import them, so they travel to the controller and the actors pickled by value.
    import sys

    import ray
    from pydantic import Field

    import rayflume
    from rayflume.config_base import SinkConfig, SourceConfig
    from rayflume.event import Event, EventBatch
    from rayflume.sinks.base import Sink
    from rayflume.sources.base import Source


    class CountdownSource(Source):
        def __init__(self, count):
            self.left = count
            self.pending = None

        def poll(self):
            if self.pending is None and self.left > 0:
                self.pending = EventBatch.from_events([Event(body=str(self.left).encode())])
            return self.pending

        def ack(self):
            if self.pending is not None:
                self.left -= 1
                self.pending = None

        @property
        def finished(self):
            return self.left == 0 and self.pending is None


    class CountdownSourceConfig(SourceConfig):
        count: int = Field(5, ge=1)

        def build(self, name):
            return CountdownSource(self.count)


    class AppendingSink(Sink):
        def __init__(self, path):
            self.path = path

        def write(self, batch):
            with open(self.path, "ab") as f:
                f.write(b"".join(b + b"\\n" for b in batch.bodies()))


    class AppendingSinkConfig(SinkConfig):
        path: str

        def build(self, name):
            return AppendingSink(self.path)


    ray.init(address=sys.argv[1], namespace="rayflume", logging_level="WARNING", log_to_driver=False)
    topology = {"name": "cc-classes", "metrics": {"port": None},
                "sources": {"down": {"type": CountdownSourceConfig, "count": 40, "channels": ["mem"]}},
                "channels": {"mem": {"type": "memory"}},
                "sinks": {"file": {"type": AppendingSinkConfig, "channel": "mem", "path": sys.argv[2]}}}
    handle = rayflume.deploy(topology)
    try:
        handle.wait_finished(timeout_s=60)
        # the controller's copy of the class comes back as the class itself
        print("same class:", handle._call("raw_topology")["sources"]["down"]["type"] is CountdownSourceConfig)
        # the controller keeps the classes (pickled in its stored state): the same mapping again
        # changes nothing
        print("redeploy:", rayflume.deploy(topology).last_update)
    finally:
        handle.stop(drain_timeout_s=10)
""")


def test_config_class_objects_defined_in_main_deploy_from_a_dict_topology(cluster, tmp_path):
    script = tmp_path / "notebook.py"
    script.write_text(NOTEBOOK_DRIVER)
    out = tmp_path / "countdown.txt"
    done = subprocess.run([sys.executable, str(script), cluster.address, str(out)], capture_output=True,
                          text=True, timeout=240, env=child_env(), cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "same class: True" in done.stdout and "redeploy: None" in done.stdout, done.stdout
    assert sorted(numbers_in(out)) == list(range(1, 41))


def test_a_config_class_that_cannot_be_pickled_is_a_config_error_naming_it():
    import threading

    guard = threading.Lock()  # held by the class below, through pydantic's record of this frame's locals

    class LocalConfig(SourceConfig):
        def build(self, name):
            return guard

    with pytest.raises(ConfigError) as failed:
        check_class_types_pickle({"name": "t", "sources": {"s": {"type": LocalConfig, "channels": ["c"]}}})
    (problem,) = failed.value.errors
    assert problem.startswith("sources.s.type: the config class") and "LocalConfig" in problem
    assert "top level of the notebook or of a module" in problem


def test_the_stored_spec_keeps_class_objects():
    class LocalConfig(SourceConfig):
        def build(self, name):
            raise RuntimeError("not built here")

    spec = {"name": "t", "sources": {"s": {"type": LocalConfig, "channels": ["c"]}}}
    stored = storable_spec(spec)
    assert isinstance(stored["sources"]["s"]["type"]["name"], str)
    assert "LocalConfig" in stored["sources"]["s"]["type"]["name"]
    back = spec_from_store(stored)
    assert back["sources"]["s"]["type"].__qualname__ == LocalConfig.__qualname__
    assert back["name"] == "t" and back["sources"]["s"]["channels"] == ["c"]


def test_import_paths_that_do_not_resolve_are_validation_errors_naming_them(tmp_path):
    package, module = components_package(tmp_path)
    topology = {
        "name": "broken",
        # the package is found through the runtime_env, as when validating before a deploy
        "runtime_env": {"py_modules": [str(package)]},
        "sources": {
            "missing_module": {"type": "no_such_module_xyz:NumberedSourceConfig", "channels": ["mem"]},
            "missing_class": {"type": f"{module}:NumberedSorceConfig", "channels": ["mem"]},
            "runtime_class": {"type": f"{module}:NumberedSource", "channels": ["mem"]},
            "good": {"type": f"{module}:NumberedSourceConfig", "count": 3, "chanels": ["mem"]},
        },
        "channels": {"mem": {"type": f"{module}:NumberedFileSinkConfig"}},
        "sinks": {"out": {"type": SourceConfig, "channel": "mem"}},
    }
    with pytest.raises(ConfigError) as failed:
        validate(topology)
    errors = failed.value.errors
    by_path = {e.split(": ", 1)[0]: e for e in errors}
    assert "cannot import module 'no_such_module_xyz'" in by_path["sources.missing_module.type"]
    assert "source type 'no_such_module_xyz:NumberedSourceConfig'" in by_path["sources.missing_module.type"]
    assert "runtime_env" in by_path["sources.missing_module.type"]
    missing_class = by_path["sources.missing_class.type"]
    assert "has no attribute 'NumberedSorceConfig'" in missing_class
    assert "did you mean 'NumberedSourceConfig'" in missing_class
    assert "is the running source itself; name its config class" in by_path["sources.runtime_class.type"]
    assert "is a sink config class, not a channel one" in by_path["channels.mem.type"]
    assert "SourceConfig is a source config class, not a sink one" in by_path["sinks.out.type"]
    # a good path validates its keys like a built-in's: a misspelt key gets a suggestion
    assert any(e.startswith("sources.good.chanels") and "channels" in e for e in errors), errors

    fixed = validate({"name": "fixed", "runtime_env": {"py_modules": [str(package)]},
                      "sources": {"gen": {"type": f"{module}:NumberedSourceConfig", "count": 3,
                                          "channels": ["mem"]}},
                      "channels": {"mem": {"type": "memory"}},
                      "sinks": {"out": {"type": f"{module}:NumberedFileSinkConfig", "channel": "mem",
                                        "directory": str(tmp_path)}}})
    assert type(fixed.sources["gen"]).__name__ == "NumberedSourceConfig" and fixed.sources["gen"].count == 3
    assert fixed.sources["gen"].type == f"{module}:NumberedSourceConfig"


def write_distribution(site: Path, entry_points: str) -> str:
    """A distribution 'installed' in ``site`` (a directory on sys.path): the example's module and a
    dist-info with METADATA and entry_points.txt. Returns the module's name."""
    module = f"dist_components_{uuid.uuid4().hex[:8]}"
    site.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE_MODULE, site / f"{module}.py")
    dist = site / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[rayflume.components]\n" + entry_points.format(module=module))
    return module


def test_entry_point_types_resolve(tmp_path, monkeypatch):
    site = tmp_path / "site"
    module = write_distribution(site, "numbered = {module}:NumberedSourceConfig\n"
                                      "numbered_lines = {module}:NumberedFileSinkConfig\n"
                                      "broken_numbers = {module}_missing:NumberedSourceConfig\n")
    base = {"name": "ep", "channels": {"mem": {"type": "memory"}},
            "sinks": {"out": {"type": "numbered_lines", "channel": "mem", "directory": str(tmp_path)}}}
    with pytest.raises(ConfigError, match="unknown source type 'numbered'"):
        validate({**base, "sources": {"gen": {"type": "numbered", "channels": ["mem"]}}})

    monkeypatch.syspath_prepend(str(site))
    topo = validate({**base, "sources": {"gen": {"type": "numbered", "count": 7, "channels": ["mem"]}}})
    assert type(topo.sources["gen"]).__module__ == module and topo.sources["gen"].count == 7
    assert type(topo.sinks["out"]).__name__ == "NumberedFileSinkConfig"
    assert topo.sources["gen"].type == "numbered"
    assert "numbered" in registry.entry_point_types("source")

    with pytest.raises(ConfigError) as failed:
        validate({**base, "sources": {"gen": {"type": "numbered_lines", "channels": ["mem"]},
                                      "other": {"type": "broken_numbers", "channels": ["mem"]}}})
    by_path = {e.split(": ", 1)[0]: e for e in failed.value.errors}
    assert "is a sink config class, not a source one" in by_path["sources.gen.type"]
    broken = by_path["sources.other.type"]
    assert f"entry point '{module}_missing:NumberedSourceConfig' of distribution '{module}'" in broken
    assert "ModuleNotFoundError" in broken


def test_runtime_env_is_validated_and_merged_with_the_deploy_settings():
    base = {"name": "env", "sources": {"gen": {"type": "sequence", "channels": ["mem"]}},
            "channels": {"mem": {"type": "memory"}}, "sinks": {"out": {"type": "null", "channel": "mem"}}}
    with pytest.raises(ConfigError) as failed:
        validate({**base, "runtime_env": {"py_module": ["x"], "env_vars": {"LEVEL": 3}, "pip": 5}})
    by_path = {e.split(": ", 1)[0]: e for e in failed.value.errors}
    assert "did you mean `py_modules`" in by_path["runtime_env.py_module"]
    assert "quote it" in by_path["runtime_env.env_vars.LEVEL"]
    assert "runtime_env.pip" in by_path
    with pytest.raises(ConfigError, match="runtime_env: expected a mapping"):
        validate({**base, "runtime_env": ["x"]})

    assert validate(base).runtime_env is None
    env = {"working_dir": "s3://bucket/code.zip", "env_vars": {"A": "1", "RAYFLUME_LOG_LEVEL": "INFO"}}
    assert validate({**base, "runtime_env": env}).runtime_env == env
    merged = merge_runtime_envs(env, {"env_vars": {"RAYFLUME_LOG_LEVEL": "DEBUG"}})
    assert merged == {"working_dir": "s3://bucket/code.zip", "env_vars": {"A": "1", "RAYFLUME_LOG_LEVEL": "DEBUG"}}
    assert merge_runtime_envs(None, None) is None
    assert os.path.isabs(load_topology(EXAMPLE_DIR / "topology.yaml").runtime_env["working_dir"])
