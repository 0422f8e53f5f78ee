"""How the topology controller stops its topology: drain tier by tier, then remove everything.

Guarantees of ``stop()``:

* Tiers are drained in ``planner.drain_order`` (a tier into the next before the next drains): a
  tier's sources stop first, then its sinks empty its live channels, up to ``drain_timeout_s`` for
  all tiers together; then its sinks stop.
* A channel that cannot be drained at all is not waited for and is reported with why (dead, failed
  to open, LOST with its node, or drained only by paused sinks: draining it would undo the pause;
  a durable one keeps its events on its node). A channel restarting after a crash is waited for as
  a non-empty one, since its sinks drain it once it is back.
* Every actor is killed, the metrics endpoint and the alert webhook are closed, and the stored
  state (desired state and hourly volume) is deleted: a stopped topology leaves nothing behind.

:class:`Drain` is mixed into :class:`~rayflume._private.controller.TopologyController`: it runs
under the controller's reconcile lock, on its instance map, LOST records and pause state.
"""
from __future__ import annotations

import logging
import time

import ray

from rayflume._private import planner
from rayflume._private.instances import CALL_TIMEOUT_S, describe, kill

logger = logging.getLogger("rayflume.controller")


class Drain:
    """The controller's ``stop()`` (see the module docstring)."""

    def stop(self, drain_timeout_s: float = 30.0) -> dict:
        """Drain tier by tier, from the first to the last: stop a tier's sources, let its sinks
        empty its live channels (up to ``drain_timeout_s`` in all), stop its sinks; then remove
        every actor. Returns ``undrained`` (events left in live channels), ``not_drained`` (channels
        that could not be drained at all, with why: dead, unreachable, not open, lost with a node)
        and the final metrics."""
        with self._lock:
            self.state = "STOPPING"
            self.stopping.set()
            deadline = time.monotonic() + drain_timeout_s
            left: dict = {}
            not_drained: dict = {key[1]: f"LOST: {why}" for key, why in self.lost_channels.items()}
            for tier in planner.drain_order(self.topology):
                insts = [i for i in list(self.instances.values()) if i.tier == tier]
                self._event(tier or "topology", "stopping: sources first, then draining the channels")
                self._call_all(insts, "SOURCE", "stop")
                sizes, unavailable, pending = self._channel_sizes(insts)
                # A channel restarting after a crash is waited for as a non-empty one: its sinks
                # drain it once it is back.
                while (sum(sizes.values()) > 0 or pending) and time.monotonic() < deadline:
                    time.sleep(0.1)  # the poll interval of this drain wait, bounded by the deadline
                    sizes, unavailable, pending = self._channel_sizes(insts)
                unavailable.update(pending)
                if sum(sizes.values()):
                    self._event(tier or "topology", f"drain timed out; events left in channels: {sizes}")
                for label, why in unavailable.items():
                    self._event(tier or "topology", f"channel {label} not drained: {why}")
                left.update(sizes)
                not_drained.update(unavailable)
                self._call_all(insts, "SINK", "stop")
            final_metrics = self.metrics()
            self._call_all(list(self.instances.values()), "CHANNEL", "stop")
            for inst in list(self.instances.values()):
                for managed in inst.components.values():
                    kill(managed.handle)
            if self.metrics_server is not None:
                self.metrics_server.close()
            self._alerts.close()
            try:
                self.store.delete(self._state_key)
                self.store.delete(self._sampler.key)
            except Exception:
                logger.exception("topology '%s': could not delete its stored state", self.name)
            self.state = "STOPPED"
            return {"undrained": left, "not_drained": not_drained, "final_metrics": final_metrics}

    def _call_all(self, insts, kind: str, method: str) -> None:
        refs = [getattr(m.handle, method).remote() for i in insts for (k, _), m in i.components.items()
                if k == kind and m.handle is not None]
        for ref in refs:
            try:
                ray.get(ref, timeout=60)
            except Exception as exc:
                self._event("controller", f"{kind.lower()} {method} failed: {type(exc).__name__}")

    def _channel_sizes(self, insts) -> tuple[dict, dict, dict]:
        """``({label: events queued}, {label: why it cannot be drained}, {label: why it cannot be
        asked now})`` of the instances' channels. The second are not worth waiting for: no sink
        drains a dead or lost channel, or one whose sinks are all paused (a durable one keeps its
        events on its node for a later deploy), nor one that failed to open (it says why and keeps
        retrying). The third may answer soon: an actor restarting after a crash (recovering its
        log), a call that timed out."""
        sizes, unavailable, pending = {}, {}, {}
        for inst in insts:
            for (kind, name), m in inst.components.items():
                if kind != "CHANNEL":
                    continue
                label = f"{inst.tier}.{inst.instance_id}.{name}" if inst.tier else name
                if m.lost:
                    unavailable[label] = f"LOST: {m.lost}"
                    continue
                try:
                    size = ray.get(m.handle.size.remote(), timeout=CALL_TIMEOUT_S)
                except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError) as exc:
                    pending[label] = describe(exc)
                    continue
                except Exception as exc:
                    unavailable[label] = describe(exc)
                    continue
                drainers = [s for s, cfg in self.topology.tiers[inst.tier].sinks.items() if cfg.channel == name]
                if size and drainers and all((inst.tier, s) in self.paused for s in drainers):
                    # not waited for: draining into a paused sink would undo the pause
                    unavailable[label] = (f"{size} event(s) kept: drained only by paused sink(s) "
                                          f"{', '.join(drainers)}; resume them before stopping to drain it")
                else:
                    sizes[label] = size
        return sizes, unavailable, pending
