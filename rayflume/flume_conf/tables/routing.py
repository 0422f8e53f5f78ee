"""The Flume mapping table's channel selectors (``selector.*`` of a source) and sink processors
(``processor.*`` of a sink group): how their properties become rayflume keys.
"""
from __future__ import annotations

from rayflume.flume_conf.tables.entries import INT, LIST, MS, ComponentMapping, Prop, enum

SELECTORS = (
    ComponentMapping("selector", "replicating", "replicating", (Prop("optional", "optional", LIST),)),
    ComponentMapping("selector", "multiplexing", "multiplexing", (
        Prop("header", "header"), Prop("default", "default", LIST),
        Prop("mapping.*", "mapping.*", LIST), Prop("optional.*", "optional.*", LIST))),
)

PROCESSORS = (
    ComponentMapping("processor", "default", "default", ()),
    ComponentMapping("processor", "failover", "failover", (
        Prop("priority.*", "priority.*", INT), Prop("maxpenalty", "max_penalty_s", MS))),
    ComponentMapping("processor", "load_balance", "load_balance", (
        Prop("selector", "selector", enum({"round_robin": "round_robin", "random": "random"},
                                          "a custom Java sink selector does not run here; use round_robin or "
                                          "random")),
        Prop("backoff", "backoff"), Prop("selector.maxTimeOut", "selector_max_timeout_s", MS))),
)
