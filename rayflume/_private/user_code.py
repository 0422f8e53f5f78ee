"""How a topology's user code reaches the cluster: its ``runtime_env``, and config classes given
as a component's ``type``.

A topology's ``runtime_env`` (working_dir, py_modules, pip, env_vars) is the Ray runtime
environment of its controller, and so of every component actor, which inherits the environment of
the actor that creates it. :class:`ControllerActorClass` (the controller module's
``RemoteController``) applies it when the controller is started: the deploying process uploads the
local directories to the cluster (Ray accepts only URIs in an actor's options) and merges the
result with the options it was given (``deploy --log-level`` sets ``env_vars``; those win per
variable). A topology without one sets none, so its actors keep using Ray's pre-started workers.
The environment is fixed for the controller's life: a redeploy that changes it is refused (stop,
then deploy). A local path that is not there, or a config class that cannot be pickled, is a
ConfigError naming it, raised in the deploying process before anything starts.

A component's ``type`` may be a config class object (from Python): it reaches the actors pickled
with their arguments, and is kept in the controller's stored spec pickled too
(:func:`storable_spec`, :func:`spec_from_store`).
"""
from __future__ import annotations

import base64
import logging
import os
import tempfile

import ray

from rayflume import registry
from rayflume.errors import ConfigError
from rayflume.topology import merge_runtime_envs

logger = logging.getLogger("rayflume.controller")
_CLASS_KEY = "__rayflume_class__"


def storable_spec(value):
    """A topology mapping as the state store keeps it (JSON): a config class given as a component's
    ``type`` from Python is pickled (by value when defined in a notebook or ``__main__``), in a
    mapping that also names it."""
    if isinstance(value, type):
        pickled = base64.b64encode(ray.cloudpickle.dumps(value)).decode("ascii")
        return {_CLASS_KEY: pickled, "name": registry.type_label(value)}
    if isinstance(value, dict):
        return {k: storable_spec(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable_spec(v) for v in value]
    return value


def spec_from_store(value):
    """The topology mapping :func:`storable_spec` stored, with its classes unpickled."""
    if isinstance(value, dict):
        if set(value) == {_CLASS_KEY, "name"}:
            return ray.cloudpickle.loads(base64.b64decode(value[_CLASS_KEY]))
        return {k: spec_from_store(v) for k, v in value.items()}
    if isinstance(value, list):
        return [spec_from_store(v) for v in value]
    return value


def upload_runtime_env(runtime_env: dict) -> dict:
    """``runtime_env`` with its local ``working_dir`` and ``py_modules`` uploaded to the connected
    cluster and replaced by their ``gcs://`` URIs (an actor's options take URIs only); URIs and the
    other keys are kept. Runs in the deploying process, where the paths are. A local path that is
    not there is a ConfigError naming it."""
    env = dict(runtime_env)
    problems = []
    working_dir = env.get("working_dir")
    if isinstance(working_dir, str) and "://" not in working_dir:
        env["working_dir"] = os.path.abspath(os.path.expanduser(working_dir))
        if not os.path.isdir(env["working_dir"]):
            problems.append(f"runtime_env.working_dir: {working_dir!r} is not a directory here, where the topology "
                            f"is deployed from; give the directory holding your modules (a relative path is "
                            f"relative to the topology file)")
    if isinstance(env.get("py_modules"), list):
        modules = []
        for i, entry in enumerate(env["py_modules"]):
            if isinstance(entry, str) and "://" not in entry:
                entry = os.path.abspath(os.path.expanduser(entry))
                if not (os.path.isdir(entry) or (entry.endswith(".py") and os.path.isfile(entry))):
                    problems.append(f"runtime_env.py_modules[{i}]: {env['py_modules'][i]!r} is neither a package "
                                    f"directory nor a .py file here, where the topology is deployed from; fix "
                                    f"the path (a relative path is relative to the topology file)")
            modules.append(entry)
        env["py_modules"] = modules
    if problems:
        raise ConfigError(problems)
    if "working_dir" not in env and "py_modules" not in env:
        return env
    from ray._private import ray_constants
    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    worker = ray._private.worker.global_worker
    try:
        scratch_dir = worker.node.get_runtime_env_dir_path()
    except Exception:  # connected without a local node object: any local directory will do
        scratch_dir = tempfile.gettempdir()
    include_gitignore = os.environ.get(ray_constants.RAY_RUNTIME_ENV_IGNORE_GITIGNORE, "0") != "1"
    env = upload_py_modules_if_needed(env, include_gitignore=include_gitignore, scratch_dir=scratch_dir,
                                      logger=logger)
    return upload_working_dir_if_needed(env, include_gitignore=include_gitignore, scratch_dir=scratch_dir,
                                        logger=logger)


def with_topology_runtime_env(options: dict, raw_topology) -> dict:
    """Controller actor ``options`` with the topology's runtime_env (uploaded) merged in; the
    options as given when the topology has none."""
    topology_env = raw_topology.get("runtime_env") if isinstance(raw_topology, dict) else None
    if not topology_env:
        return options
    merged = merge_runtime_envs(upload_runtime_env(topology_env), options.get("runtime_env"))
    return {**options, "runtime_env": merged}


def check_class_types_pickle(raw_topology) -> None:
    """ConfigError naming each component whose ``type`` is a config class that cannot be pickled to
    the cluster (a pydantic model defined inside a function keeps that function's local variables,
    locks and all), rather than Ray's serialization report."""
    problems = []

    def walk(value, path):
        if isinstance(value, dict):
            for key, item in value.items():
                where = f"{path}.{key}" if path else str(key)
                if key == "type" and isinstance(item, type):
                    try:
                        ray.cloudpickle.dumps(item)
                    except Exception as exc:
                        problems.append(f"{where}: the config class {registry.type_label(item)} cannot be sent to the "
                                        f"cluster ({type(exc).__name__}: {exc}); define it at the top level of the "
                                        f"notebook or of a module, not inside a function")
                else:
                    walk(item, where)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")

    walk(raw_topology, "")
    if problems:
        name = raw_topology.get("name") if isinstance(raw_topology, dict) else None
        raise ConfigError(problems, topology=name if isinstance(name, str) else None)


class ControllerLauncher:
    """What ``RemoteController.options(...)`` returns: ``remote(raw_topology, ...)`` starts the
    controller with those options and the topology's runtime_env."""

    def __init__(self, actor_class, options: dict):
        self._actor_class = actor_class
        self._options = options

    def remote(self, raw_topology, *args, **kwargs):
        check_class_types_pickle(raw_topology)
        options = with_topology_runtime_env(self._options, raw_topology)
        return self._actor_class.options(**options).remote(raw_topology, *args, **kwargs)


class ControllerActorClass:
    """``ray.remote(TopologyController)`` that starts each controller in its topology's
    runtime_env (see the module docstring), whoever starts it: ``RemoteController.options(**opts)
    .remote(raw_topology)`` as for any actor class."""

    def __init__(self, actor_class):
        self._actor_class = actor_class

    def options(self, **options) -> ControllerLauncher:
        return ControllerLauncher(self._actor_class, options)

    def remote(self, raw_topology, *args, **kwargs):
        return self.options().remote(raw_topology, *args, **kwargs)
