"""The controller's planner without Ray: placement, per-node join and leave, replica re-placement,
the redeploy diff, component replacement and the drain order."""
from __future__ import annotations

from rayflume._private import planner
from rayflume._private.planner import (
    AddInstance,
    ClearLost,
    ComponentLost,
    ComponentRestarted,
    ComponentView,
    DropInstance,
    MarkLost,
    Note,
    Placed,
    ReplaceComponent,
    Waiting,
)
from rayflume.topology import validate


def node(node_id, tier=None, host=None, **labels):
    if tier:
        labels["tier"] = tier
    return {"NodeID": node_id, "Alive": True, "Labels": labels, "NodeManagerHostname": host or f"host-{node_id}",
            "NodeManagerAddress": "127.0.0.1", "Resources": {"CPU": 1.0}}


def tiered(agent_channel=None, collector_placement=None, collector_channel=None):
    mem = {"type": "memory"}
    return validate({
        "name": "plan",
        "tiers": {
            "agent": {
                "placement": {"per_node": {"label": "agent"}},
                "sources": {"gen": {"type": "sequence", "channels": ["c"]}},
                "channels": {"c": agent_channel or {"type": "file"}},
                "sinks": {"fwd": {"type": "rayflume", "tier": "collector", "channel": "c"}},
            },
            "collector": {
                "placement": collector_placement or {"replicas": 2, "label": "collector"},
                "sources": {"in": {"type": "rayflume", "channels": ["m"]}},
                "channels": {"m": collector_channel or mem},
                "sinks": {"out": {"type": "null", "channel": "m"}},
            },
        },
    })


def single():
    return validate({"name": "one", "sources": {"gen": {"type": "sequence", "channels": ["c"]}},
                     "channels": {"c": {"type": "memory"}}, "sinks": {"out": {"type": "null", "channel": "c"}}})


def of(plan, kind):
    return [a for a in plan.actions if isinstance(a, kind)]


def apply(placed, plan):
    """The instance map after the plan (what the controller's executor does to it)."""
    out = {(p.tier, p.instance_id): p for p in placed}
    for a in plan.actions:
        if isinstance(a, DropInstance):
            del out[(a.tier, a.instance_id)]
        elif isinstance(a, AddInstance):
            assert (a.tier, a.instance_id) not in out, f"{a} adds an instance that runs"
            out[(a.tier, a.instance_id)] = Placed(a.tier, a.instance_id, a.node_id)
    return list(out.values())


# -- placement ------------------------------------------------------------------------------------
def test_single_tier_gets_one_instance_placed_by_ray_and_keeps_it():
    plan = planner.plan_instances(single(), [node("n1")], [], set(), 0)
    assert plan.actions == (AddInstance("", "main", None),)
    again = planner.plan_instances(single(), [node("n1")], apply([], plan), set(), 0)
    assert again.actions == () and not again.changes_instances


def test_per_node_tier_runs_once_on_each_matching_node_named_after_the_machine():
    nodes = [node("n2", "agent", host="web-2"), node("n1", "agent", host="web-1"), node("n3", "collector")]
    plan = planner.plan_instances(tiered(), nodes, [], set(), 0)
    agents = [a for a in of(plan, AddInstance) if a.tier == "agent"]
    assert [(a.instance_id, a.node_id, a.identity) for a in agents] == [("web-1", "n1", "web-1"),
                                                                        ("web-2", "n2", "web-2")]
    # planned again with nothing changed: nothing to do (a tier that has its nodes does not wait)
    again = planner.plan_instances(tiered(), nodes, apply([], plan), set(), plan.next_replica)
    assert not again.changes_instances
    assert set(of(again, Waiting)) == {Waiting("agent", None), Waiting("collector", None)}


def test_replicas_spread_over_matching_nodes_with_slot_names():
    nodes = [node("n1", "collector"), node("n2", "collector"), node("n3", "agent")]
    plan = planner.plan_instances(tiered(collector_placement={"replicas": 3, "label": "collector"}),
                                  nodes, [], set(), 0)
    collectors = [a for a in of(plan, AddInstance) if a.tier == "collector"]
    assert [(a.instance_id, a.node_id) for a in collectors] == [("r0", "n1"), ("r1", "n2"), ("r2", "n1")]
    assert plan.next_replica == 3


def test_a_tier_without_a_matching_node_waits_and_says_for_what():
    plan = planner.plan_instances(tiered(), [node("n1", "agent")], [], set(), 0)
    assert [a.tier for a in of(plan, AddInstance)] == ["agent"]
    (waiting,) = [w for w in of(plan, Waiting) if w.message]
    assert waiting.tier == "collector" and "tier=collector" in waiting.message


def test_fewer_replicas_drops_the_highest_slots():
    placed = [Placed("collector", f"r{i}", "n1") for i in range(3)] + [Placed("agent", "host-n2", "n2")]
    plan = planner.plan_instances(tiered(), [node("n1", "collector"), node("n2", "agent")], placed, set(), 3)
    assert [(a.instance_id, "more replicas" in a.why) for a in of(plan, DropInstance)] == [("r2", True)]
    assert not of(plan, AddInstance)


# -- nodes leaving and joining --------------------------------------------------------------------
def test_per_node_instance_whose_node_leaves_is_removed_and_its_file_channel_reported_lost():
    placed = [Placed("agent", "web-1", "n1"), Placed("collector", "r0", "n9"), Placed("collector", "r1", "n9")]
    plan = planner.plan_instances(tiered(), [node("n9", "collector")], placed, set(), 2)
    (lost,) = of(plan, MarkLost)
    assert (lost.tier, lost.instance_id, lost.channel) == ("agent", "web-1", "c")
    assert "identity 'web-1'" in lost.why and "joins again" in lost.why
    (drop,) = of(plan, DropInstance)
    assert drop.instance_id == "web-1" and "LOST until a node with identity 'web-1'" in drop.why
    assert plan.actions.index(lost) < plan.actions.index(drop), "recorded before the instance goes"
    assert not [a for a in of(plan, AddInstance) if a.tier == "agent"]


def test_a_node_with_the_same_identity_gets_the_instance_back_and_clears_lost():
    lost = {("agent", "web-1", "c")}
    returned = node("n1-new", "agent", host="web-1")  # a new NodeID: the raylet restarted
    plan = planner.plan_instances(tiered(), [returned, node("n9", "collector")],
                                  [Placed("collector", "r0", "n9"), Placed("collector", "r1", "n9")], lost, 2)
    assert of(plan, ClearLost) == [ClearLost("agent", "web-1", "c")]
    assert [a for a in of(plan, AddInstance) if a.tier == "agent"] == [AddInstance("agent", "web-1", "n1-new",
                                                                                   "web-1")]
    assert any("is back" in n.message for n in of(plan, Note))


def test_a_node_labelled_rayflume_node_id_keeps_its_instance_whatever_its_host_name():
    plan = planner.plan_instances(tiered(), [node("n5", "agent", host="dhcp-17", rayflume_node_id="Web-1")],
                                  [], {("agent", "web-1", "c")}, 0)
    assert [a.instance_id for a in of(plan, AddInstance) if a.tier == "agent"] == ["web-1"]
    assert of(plan, ClearLost) == [ClearLost("agent", "web-1", "c")]


def test_two_live_nodes_with_one_identity_are_told_apart_and_warned():
    nodes = [node("n1", "agent", host="same"), node("n2", "agent", host="same")]
    plan = planner.plan_instances(tiered(), nodes, [], set(), 0)
    assert sorted(a.instance_id for a in of(plan, AddInstance) if a.tier == "agent") == ["same", "same-2"]
    assert any("rayflume_node_id" in n.message for n in of(plan, Note))


def test_replica_on_a_lost_node_moves_under_its_slot_name_when_nothing_is_node_local():
    shared = {"type": "file", "shared_storage": True}
    placed = [Placed("collector", "r0", "n1"), Placed("collector", "r1", "n2")]
    plan = planner.plan_instances(tiered(collector_channel=shared), [node("n2", "collector")], placed, set(), 2)
    assert of(plan, DropInstance)[0].instance_id == "r0"
    assert [(a.instance_id, a.node_id) for a in of(plan, AddInstance)] == [("r0", "n2")]
    assert not of(plan, MarkLost) and plan.next_replica == 2


def test_replica_with_a_node_local_channel_is_lost_and_replaced_by_a_new_slot():
    local = {"type": "file"}
    placed = [Placed("collector", "r0", "n1"), Placed("collector", "r1", "n2")]
    plan = planner.plan_instances(tiered(collector_channel=local), [node("n2", "collector")], placed, set(), 2)
    (lost,) = of(plan, MarkLost)
    assert lost.instance_id == "r0" and "not replayed" in lost.why
    assert [(a.instance_id, a.node_id) for a in of(plan, AddInstance)] == [("r2", "n2")]
    assert plan.next_replica == 3


def test_replica_on_a_lost_node_with_no_node_left_stays_until_one_joins():
    shared = {"type": "file", "shared_storage": True}
    plan = planner.plan_instances(tiered(collector_channel=shared), [node("a", "agent")],
                                  [Placed("collector", "r0", "n1")], set(), 1)
    assert not [a for a in plan.actions if isinstance(a, (DropInstance, AddInstance)) and a.tier == "collector"]


# -- components -----------------------------------------------------------------------------------
def view(kind="SINK", name="out", state="ALIVE", restarts=0, announced=0, lost=False, node_local=False):
    return ComponentView(kind, name, state, restarts, announced, lost, node_local)


def test_a_component_dead_for_good_is_replaced_and_new_restarts_are_announced_once():
    actions = planner.plan_components([view(state="DEAD"), view("SOURCE", "gen", restarts=2, announced=1),
                                       view("CHANNEL", "c", restarts=1, announced=1)], "n1", node_alive=True)
    assert actions == [ReplaceComponent("SINK", "out"), ComponentRestarted("SOURCE", "gen", 2)]


def test_a_dead_node_local_channel_on_a_gone_node_is_lost_not_recreated_empty():
    dead = view("CHANNEL", "c", state="DEAD", node_local=True)
    (lost,) = planner.plan_components([dead], "n1" * 8, node_alive=False)
    assert isinstance(lost, ComponentLost) and "not recreated empty" in lost.why
    assert planner.plan_components([dead], "n1", node_alive=True) == [ReplaceComponent("CHANNEL", "c")]
    assert planner.plan_components([view("CHANNEL", "c", state="DEAD", node_local=True, lost=True)], "n1",
                                   node_alive=False) == [], "reported once"


def test_redeploy_diff_keeps_unchanged_and_replaces_what_holds_a_changed_channel():
    before = {k: planner.fingerprint(v) for k, v in planner.component_configs(tiered().tiers["agent"]).items()}
    changed = tiered(agent_channel={"type": "file", "capacity": 5}).tiers["agent"]
    after = {k: planner.fingerprint(v) for k, v in planner.component_configs(changed).items()}
    diff = planner.diff_components(before, after)
    # the channel changed, and so did everything that holds it
    assert set(diff.replace) == {("CHANNEL", "c"), ("SINK", "fwd"), ("SOURCE", "gen")}
    assert diff.keep == () and diff.remove == () and diff.add == ()
    renamed = {(k if k != ("SINK", "fwd") else ("SINK", "fwd2")): v for k, v in before.items()}
    diff = planner.diff_components(before, renamed)
    assert diff.remove == (("SINK", "fwd"),) and diff.add == (("SINK", "fwd2"),)
    assert ("CHANNEL", "c") in diff.keep


# -- stop and hops ----------------------------------------------------------------------------------
def test_drain_order_follows_the_hops_whatever_the_yaml_order():
    topo = tiered()
    assert planner.drain_order(topo) == ["agent", "collector"]
    raw = dict(topo.raw)
    raw["tiers"] = {"collector": raw["tiers"]["collector"], "agent": raw["tiers"]["agent"]}
    assert planner.drain_order(validate(raw)) == ["agent", "collector"]
    assert planner.drain_order(single()) == [""]


def test_hop_sources_name_the_sink_groups_to_push_targets_to():
    assert planner.hop_sources(tiered()) == {("collector", "in"): [("agent", "fwd")]}
    assert planner.hop_sources(single()) == {}
