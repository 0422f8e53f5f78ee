"""What the ``rayflume`` command prints: the status table (:func:`format_status`), the alerts and
volume tables, the live status line of ``deploy`` in the foreground, the lines of a tapped batch,
the outline of a validated topology and what a stop could not drain.

Pure functions of what the API hands back (a handle's ``status()``, ``alerts()``, ``metrics()``, a
stop's result), so each is tested without a cluster: nothing here connects, prints or exits.
"""
from __future__ import annotations

import json
import time


def describe_tier(tier, tiered: bool) -> list[str]:
    """``rayflume validate``'s outline of a validated tier: its placement (with tiers), then a line for
    each source, channel, sink and sink group."""
    groups = {g: sinks for g, sinks in tier.groups().items() if g in tier.sink_groups}
    lines = []
    if tiered:
        p = tier.placement
        where = (f"one instance per node with {p.describe()}" if p.mode == "per_node"
                 else f"{p.replicas} replica(s) on nodes with {p.describe()}")
        lines.append(f"  tier {tier.name}: {where}")
    indent = "    " if tiered else "  "
    for src, cfg in tier.sources.items():
        lines.append(f"{indent}source  {src} ({cfg.type}) -> {', '.join(cfg.channels)}")
    for ch, cfg in tier.channels.items():
        lines.append(f"{indent}channel {ch} ({cfg.type})")
    for sink, cfg in tier.sinks.items():
        hop = f" -> tier {cfg.tier}" if getattr(cfg, "tier", None) else ""
        lines.append(f"{indent}sink    {sink} ({cfg.type}) <- {cfg.channel}{hop}")
    for group, sinks in groups.items():
        lines.append(f"{indent}group   {group}: {', '.join(sinks)} "
                     f"({tier.sink_groups[group].raw_processor.get('type', 'default')})")
    return lines


def counter_total(metrics: dict, prefix: str, key: str) -> int:
    """Counter ``key`` summed over the components whose metric name starts with ``prefix`` (``SINK.``)."""
    return sum(int(float(v.get(key) or 0)) for k, v in metrics.items() if k.startswith(prefix))


def status_line(name: str, metrics: dict, previous: dict | None, dt: float) -> str:
    """One line: events in/out per second and each channel's fill."""
    accepted = counter_total(metrics, "SOURCE.", "EventAcceptedCount")
    drained = counter_total(metrics, "SINK.", "EventDrainSuccessCount")
    rate_in = rate_out = 0.0
    if previous is not None and dt > 0:
        rate_in = (accepted - counter_total(previous, "SOURCE.", "EventAcceptedCount")) / dt
        rate_out = (drained - counter_total(previous, "SINK.", "EventDrainSuccessCount")) / dt
    fills = " ".join(f"{k.split('.', 1)[1]}={float(v.get('ChannelFillPercentage') or 0):.0f}%"
                     for k, v in sorted(metrics.items()) if k.startswith("CHANNEL."))
    return (f"[{name}] in {rate_in:>10,.0f} ev/s  out {rate_out:>10,.0f} ev/s  "
            f"total in {accepted:,} out {drained:,}  channels {fills}")


STATUS_COUNTERS = {"SOURCE": ["EventReceivedCount", "EventAcceptedCount", "ChannelWriteFail"],
                   "CHANNEL": ["ChannelSize", "ChannelFillPercentage", "EventPutSuccessCount",
                               "EventTakeSuccessCount"],
                   "SINK": ["EventDrainSuccessCount", "EventWriteFail", "RollbackCount"]}


def _megabytes(value) -> str:
    """A byte count (a number or its string, as counters come) in whole MB; '-' when unknown."""
    try:
        return f"{int(value) / 1e6:.0f}"
    except (TypeError, ValueError):
        return "-"


def format_status(status: dict) -> str:
    lines = [f"topology {status['name']}: {status['state']}"
             + (f" (version {status['version']})" if status.get("version") else "")
             + (f"  metrics: {status['metrics_url']}" if status.get("metrics_url") else "")]
    tiers = status.get("tiers") or {}
    tiered = any(name for name in tiers)
    for name, tier in tiers.items():
        if not tiered:
            break
        want = f"{tier['replicas']} replica(s)" if tier["placement"] == "replicas" else tier["placement"]
        nodes = ", ".join(f"{i}@{(n or '-')[:12]}" for i, n in sorted(tier["instances"].items())) or "none"
        lines.append(f"  tier {name}: {want} on {tier['selector']}; instances: {nodes}")
        if tier.get("waiting"):
            lines.append(f"    waiting: {tier['waiting']}")
    where = "TIER/INSTANCE" if tiered else ""
    lines.append(f"  {'KIND':<8} {where:<{20 if tiered else 0}}{' ' if tiered else ''}{'NAME':<16} {'STATE':<10} "
                 f"{'RESTARTS':>8} {'RSS MB':>7}  COUNTERS")
    for c in status["components"]:
        scope = f"{c.get('tier')}/{c.get('instance')}" if c.get("tier") else ""
        place = f"{scope:<20} " if tiered else ""
        rows = c.get("sinks", {}).items() if c["kind"] == "SINK" else [(c["name"], c.get("counters", {}))]
        for name, counters in rows:
            shown = "  ".join(f"{k}={counters.get(k, '-')}" for k in STATUS_COUNTERS[c["kind"]])
            label = name if name == c["name"] else f"{c['name']}/{name}"
            state = "PAUSED" if c["state"] == "ALIVE" and str(counters.get("Paused")) == "1" else c["state"]
            lines.append(f"  {c['kind']:<8} {place}{label:<16} {state:<10} {c['restarts']:>8} "
                         f"{_megabytes(counters.get('ProcessRssBytes')):>7}  {shown}")
        if c.get("error"):
            lines.append(f"  {'':<8} {place}error: {c['error']}")
    for a in (status.get("alerts") or {}).get("firing") or []:
        lines.append(f"  ALERT FIRING: {a['rule']} on {a['component']}: {a['message']} "
                     f"(`rayflume alerts {status['name']}`)")
    for p in status.get("paused") or []:
        tier = f" (tier {p['tier']})" if p["tier"] else ""
        lines.append(f"  paused: sink {p['sink']}{tier}; `rayflume resume {status['name']} {p['sink']}` drains its "
                     f"channel {p['channel']}")
        for label, inst in p["instances"].items():
            backlog = "-" if inst["backlog"] is None else f"{inst['backlog']:,}"
            applied = "" if inst["applied"] else "  (not applied yet: the sink is starting or unreachable)"
            lines.append(f"    {label}: backlog {backlog} event(s){applied}")
    if status.get("events"):
        lines.append("  recent events:")
        for e in status["events"][-10:]:
            lines.append(f"    {time.strftime('%H:%M:%S', time.localtime(e['time']))} "
                         f"{e['component']}: {e['message']}")
    return "\n".join(lines)


def tap_lines(target, batch, fmt: str) -> list[str]:
    """The lines ``rayflume tap`` prints for ``batch`` of ``target`` (a tapping.TapTarget):
    ``text``, each body decoded as UTF-8 (undecodable bytes replaced); ``json``, one object per
    event, the body as ``body`` when it is UTF-8, else as ``body_base64``."""
    import base64

    bodies = batch.bodies()
    if fmt == "text":
        return [b.decode("utf-8", errors="replace") for b in bodies]
    lines = []
    for headers, body in zip(batch.headers.to_pylist(), bodies):
        event = {"component": target.component, "tier": target.tier or None, "instance": target.instance,
                 "headers": dict(headers or [])}
        try:
            event["body"] = body.decode("utf-8")
        except UnicodeDecodeError:
            event["body_base64"] = base64.b64encode(body).decode("ascii")
        lines.append(json.dumps(event, ensure_ascii=False))
    return lines


def format_volume(rows: list[dict]) -> str:
    """``rayflume volume``: one line per (hour, series), oldest hour first."""
    if not rows:
        return "no volume counted yet"
    lines = [f"{'hour (UTC)':<17} {'tier':<10} {'instance':<14} {'source':<20} {'header value':<20} {'events':>12}"]
    for r in rows:
        lines.append(f"{time.strftime('%Y-%m-%d %H:00', time.gmtime(r['hour'])):<17} {r['tier'] or '-':<10} "
                     f"{r['instance'] or '-':<14} {r['source']:<20} {r['header_value'] or '-':<20} {r['events']:>12}")
    return "\n".join(lines)


def format_alerts(report: dict) -> str:
    """``rayflume alerts``: the firing alerts, then the recent transitions (oldest first)."""
    def when(t) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))

    lines = [f"topology {report['name']}: {len(report['rules'])} alert rule(s), {len(report['firing'])} firing"]
    for a in report["firing"]:
        lines.append(f"  FIRING   {a['rule']:<20} {a['component']:<32} since {when(a['since'])}  {a['message']}")
    if report["recent"]:
        lines.append("recent:")
    for a in report["recent"]:
        lines.append(f"  {when(a['time'])}  {a['state'].upper():<8} {a['rule']:<20} {a['component']:<32} "
                     f"{a['message']}")
    return "\n".join(lines)


def leftovers(stop_result: dict) -> str:
    """What a stop could not drain: events left in live channels, and channels it could not reach."""
    left = {k: v for k, v in (stop_result.get("undrained") or {}).items() if v}
    text = f"; left in channels: {left}" if left else ""
    for label, why in (stop_result.get("not_drained") or {}).items():
        text += f"; channel {label} not drained ({why})"
    return text
