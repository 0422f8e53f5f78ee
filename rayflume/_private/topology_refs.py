"""``${env:NAME}`` and ``${file:PATH}`` in a topology's values, substituted when a file or text is
loaded (:func:`substitute_references`), on the machine that loads it.

The keys a component reads itself on its node (:func:`rayflume.registry.self_resolved_keys`, such as
the http source's tokens, and ``metrics.token``) are left as written, so that a secret never enters
the stored topology. A reference that cannot be read is a problem naming its path and what to do.
"""
from __future__ import annotations

import os
import re

from rayflume import registry
from rayflume._private.topology_model import SECTIONS
from rayflume.errors import ConfigError

REFERENCE_RE = re.compile(r"\$\{(env|file):([^}]*)\}")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # also what runtime_env.env_vars may name


def _resolve_reference(kind: str, target: str, base_dir: str | None) -> str:
    """The text ``${kind:target}`` stands for, read here. Raises ValueError saying what to do."""
    if kind == "env":
        if not ENV_NAME.match(target):
            raise ValueError(f"${{env:{target}}}: {target!r} is not an environment variable name (letters, digits "
                             f"and '_', not starting with a digit)")
        if target not in os.environ:
            raise ValueError(f"${{env:{target}}}: the environment variable {target} is not set where the topology "
                             f"is loaded; export it, or write the value itself")
        return os.environ[target]
    path = os.path.expanduser(target.strip())
    if base_dir and not os.path.isabs(path):
        path = os.path.join(base_dir, path)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except (OSError, ValueError) as exc:
        raise ValueError(f"${{file:{target}}}: cannot read {path!r} "
                         f"({getattr(exc, 'strerror', None) or type(exc).__name__}); create the file or fix the "
                         f"path (a relative path is relative to the topology file)") from None


def substitute_references(data, base_dir: str | None = None, errors: list[str] | None = None):
    """A copy of a topology mapping with every ``${env:NAME}`` and ``${file:PATH}`` (anywhere in a
    string value) replaced by what it refers to on this machine, except in the keys a component
    resolves itself on its node (:func:`rayflume.registry.self_resolved_keys`, and
    ``metrics.token``), which stay as written. A ``${file:}`` path is relative to ``base_dir``.

    Problems are added to ``errors`` as ``path: message``; without ``errors``, they raise
    ConfigError. ``data`` is not modified."""
    problems: list[str] = [] if errors is None else errors

    def resolve(value, path):
        if isinstance(value, str):
            if "${" not in value:
                return value

            def one(m):
                try:
                    return _resolve_reference(m.group(1), m.group(2), base_dir)
                except ValueError as exc:
                    problems.append(f"{path}: {exc}")
                    return m.group(0)

            return REFERENCE_RE.sub(one, value)
        if isinstance(value, dict):
            return {k: resolve(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    def component(kind, raw, path):
        if not isinstance(raw, dict):
            return resolve(raw, path)
        type_name = raw.get("type")
        kept = set(registry.self_resolved_keys(kind, type_name)) if isinstance(type_name, (str, type)) else set()
        return {k: (v if k in kept else resolve(v, f"{path}.{k}")) for k, v in raw.items()}

    def tier(tier_data, prefix):
        if not isinstance(tier_data, dict):
            return resolve(tier_data, prefix.rstrip("."))
        out = {}
        for key, value in tier_data.items():
            kind = SECTIONS.get(key)
            if kind and isinstance(value, dict):
                out[key] = {n: component(kind, raw, f"{prefix}{key}.{n}") for n, raw in value.items()}
            else:
                out[key] = resolve(value, f"{prefix}{key}")
        return out

    if not isinstance(data, dict):
        return data
    out = tier({k: v for k, v in data.items() if k not in ("tiers", "metrics")}, "")
    if isinstance(data.get("tiers"), dict):
        out["tiers"] = {t: tier(d, f"tiers.{t}.") for t, d in data["tiers"].items()}
    elif "tiers" in data:
        out["tiers"] = data["tiers"]
    if "metrics" in data:
        metrics = data["metrics"]
        out["metrics"] = ({k: (v if k == "token" else resolve(v, f"metrics.{k}")) for k, v in metrics.items()}
                          if isinstance(metrics, dict) else metrics)
    out = {k: out[k] for k in data}  # the user's order
    if problems and errors is None:
        raise ConfigError(problems)
    return out
