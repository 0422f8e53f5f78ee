"""The topology checks: within a tier, that every channel a source or sink names exists, is used,
and is drained, that batch sizes fit the channels' transaction capacity and that names are unique
(:func:`validate_graph`); between tiers, that every hop reaches a tier with a rayflume source to
receive it and that the hops form no cycle (:func:`validate_hops`).

Channel references are checked from the raw mapping, so they are reported even for a component
whose own keys had errors. Reads only; problems are appended as ``path: message``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from rayflume._private.topology_messages import did_you_mean

if TYPE_CHECKING:
    from rayflume._private.topology_model import Tier, Topology


def validate_hops(topo: Topology, errors: list[str]) -> None:
    """Every rayflume sink targets a known other tier with a rayflume source; no cycles."""
    edges: dict[str, set[str]] = {t: set() for t in topo.tiers}
    for tier_name, tier in topo.tiers.items():
        for sink_name, target in tier.hops().items():
            path = f"tiers.{tier_name}.sinks.{sink_name}.tier"
            if target not in topo.tiers:
                errors.append(f"{path}: unknown tier '{target}'{did_you_mean(target, topo.tiers)}; tiers: "
                              f"{', '.join(sorted(topo.tiers))}")
                continue
            if target == tier_name:
                errors.append(f"{path}: a tier cannot send to itself")
                continue
            receivers = [n for n, c in topo.tiers[target].sources.items() if getattr(c, "receives_hops", False)]
            wanted = getattr(tier.sinks[sink_name], "source", None)
            if not receivers:
                errors.append(f"{path}: tier '{target}' has no rayflume source to receive from this sink; add "
                              f"one (type: rayflume)")
            elif wanted and wanted not in receivers:
                errors.append(f"tiers.{tier_name}.sinks.{sink_name}.source: tier '{target}' has no rayflume "
                              f"source named '{wanted}'; it has {', '.join(receivers)}")
            elif not wanted and len(receivers) > 1:
                errors.append(f"tiers.{tier_name}.sinks.{sink_name}.source: tier '{target}' has several rayflume "
                              f"sources ({', '.join(receivers)}); name one")
            edges[tier_name].add(target)
    # cycles: depth-first search over the tier graph
    state: dict[str, int] = {}

    def visit(t, trail):
        state[t] = 1
        for nxt in sorted(edges.get(t, ())):
            if state.get(nxt) == 1:
                errors.append(f"tiers: the hops form a cycle: {' -> '.join(trail + [nxt])}")
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[t] = 2

    for t in sorted(edges):
        if t not in state:
            visit(t, [t])


def validate_graph(data: dict, topo: Tier, prefix: str, errors: list[str]) -> None:
    """A tier's channel graph: references to unknown channels, channels listed twice, selectors naming
    channels their source does not write, batch sizes above a channel's transaction capacity, unused
    or undrained channels, and a name used in two sections."""
    raw_sinks = data.get("sinks") or {}
    channel_names = set((data.get("channels") or {}))
    written, drained = set(), set()

    for sname, raw in (data.get("sources") or {}).items():
        # Channel references are checked from the raw mapping, so they are reported even when
        # the source's own keys had errors.
        listed = raw.get("channels") if isinstance(raw, dict) else None
        listed = [c for c in listed if isinstance(c, str)] if isinstance(listed, list) else []
        for i, ch in enumerate(listed):
            if ch not in channel_names:
                errors.append(f"{prefix}sources.{sname}.channels[{i}]: unknown channel '{ch}'"
                              f"{did_you_mean(ch, channel_names)}")
            written.add(ch)
        if len(set(listed)) != len(listed):
            errors.append(f"{prefix}sources.{sname}.channels: a channel is listed twice")
        cfg = topo.sources.get(sname)
        if cfg is None:
            continue
        if cfg.selector is not None:
            for ch in sorted(cfg.selector.channels_named() - set(cfg.channels)):
                errors.append(f"{prefix}sources.{sname}.selector: names channel '{ch}', which is not in the "
                              f"source's channels")
        for ch in cfg.channels:
            chan = topo.channels.get(ch)
            if chan is not None and cfg.batch_size > chan.transaction_capacity:
                errors.append(f"{prefix}sources.{sname}.batch_size: {cfg.batch_size} exceeds transaction_capacity "
                              f"{chan.transaction_capacity} of channel '{ch}'; lower batch_size or raise "
                              f"transaction_capacity")
    for sname, raw in raw_sinks.items():
        ch = raw.get("channel") if isinstance(raw, dict) else None
        if ch is not None and ch not in channel_names:
            errors.append(f"{prefix}sinks.{sname}.channel: unknown channel '{ch}'{did_you_mean(ch, channel_names)}")
        drained.add(ch)
        cfg = topo.sinks.get(sname)
        chan = topo.channels.get(ch)
        if cfg is not None and chan is not None and cfg.batch_size > chan.transaction_capacity:
            errors.append(f"{prefix}sinks.{sname}.batch_size: {cfg.batch_size} exceeds transaction_capacity "
                          f"{chan.transaction_capacity} of channel '{ch}'; lower batch_size or raise "
                          f"transaction_capacity")
    for ch in sorted(channel_names):
        cfg = topo.channels.get(ch)
        if ch not in written and ch not in drained and (cfg is None or cfg.needs_source):
            errors.append(f"{prefix}channels.{ch}: unused channel: no source writes to it and no sink drains it")
        elif ch not in drained and getattr(cfg, "needs_sink", True):
            errors.append(f"{prefix}channels.{ch}: no sink drains this channel; it would fill up and stop its "
                          f"sources. Add a sink with channel: {ch}")

    seen: dict[str, str] = {}
    for section in ("sources", "channels", "sinks", "sink_groups"):
        entries = data.get(section)
        for n in (entries if isinstance(entries, dict) else {}):
            if n in seen and seen[n] != section:
                errors.append(f"{prefix}{section}.{n}: the name '{n}' is also used in {seen[n]}; names must be "
                              f"unique across sources, channels, sinks and sink groups")
            seen.setdefault(n, section)
