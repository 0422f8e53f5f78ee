"""rayflume: Apache Flume rebuilt on Ray.

Collect, aggregate and move log and event data with sources, channels and sinks that run as
supervised Ray actors and move Arrow event batches.
"""
from rayflume.errors import (
    ChannelFull,
    ClusterUnavailable,
    ConfigError,
    DeliveryError,
    RayflumeError,
    TopologyNotRunning,
)
from rayflume.event import Event, EventBatch

__version__ = "0.1.0"


def __getattr__(name):
    # The deployment API imports Ray; load it on first use so `import rayflume` stays light.
    if name in ("deploy", "load", "loads", "get", "list_deployed", "TopologyHandle", "component_logs"):
        from rayflume import api

        return getattr(api, name)
    raise AttributeError(f"module 'rayflume' has no attribute {name!r}")


__all__ = ["Event", "EventBatch", "ChannelFull", "ClusterUnavailable", "ConfigError", "DeliveryError",
           "RayflumeError", "TopologyNotRunning", "deploy", "load", "loads", "get", "list_deployed", "TopologyHandle",
           "component_logs"]
