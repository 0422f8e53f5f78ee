"""A chaos runner for a deployed two-tier topology, in the spirit of Ray's resource killer and
Jepsen's total-queue checker.

Pipeline (:func:`chaos_topology`): ``taildir -> file channel -> rayflume sink`` on the agent tier,
hop, ``rayflume source -> file channel -> file_roll`` on the collector tier. While a
:class:`LineWriter` appends numbered lines to the tailed file (rotating it now and then), a
seeded :class:`Killer` SIGKILLs a random live actor of a random kind (source, channel and sink
group of each tier, so both sides of the hop, and the controller), records the kill, waits for
the actor to come back (a new pid answers) and waits a random gap before the next one. With
``node_faults`` it also removes the agent's or the collector's node and adds a node with the same
labels back.

Oracle (:meth:`ChaosResult.problems`): a line is *acknowledged* once written to the file (taildir
re-reads from its durable position, so a written line must arrive); at the end the writer stops,
the run waits until every written line is in the file_roll output, and then

* lost = written - delivered must be empty,
* unexpected = delivered - written must be empty (and every output line well formed),
* duplicates observed (deliveries beyond the first) <= bound = largest batch size x faults,
* duplicates observed == the sinks' summed ``DuplicateDeliveryCount``, only when
  ``RAYFLUME_CHAOS_CHECK_DUP_METRIC=1`` (the counters do not survive restarts yet); the two
  figures are always reported.

:class:`NumberedLines` reads the output incrementally with numpy (a seen-bitmap and a count of
extra deliveries), so nothing holds every event in memory; ``tests/test_soak.py`` uses it too.
"""
from __future__ import annotations

import dataclasses
import os
import random
import signal
import threading
import time
from collections import Counter

import numpy as np
import ray

from rayflume._private.identity import LABEL
from tests.cluster_helpers import start_cluster, stop_cluster

NAMESPACE = "rayflume"
AGENT_ID = "chaos-agent"
AGENT_LABELS = {"tier": "agent", LABEL: AGENT_ID}
COLLECTOR_LABELS = {"tier": "collector", LABEL: "chaos-collector"}
# what the killer picks from: "<tier>.<kind key of the actor name>", and the controller
ACTOR_KINDS = ("agent.source", "agent.channel", "agent.sinks",
               "collector.source", "collector.channel", "collector.sinks", "controller")
NODE_KINDS = ("node.agent", "node.collector")

SEQ_WIDTH = 10
LINE_SUFFIX = b" chaos-line-payload"


def check_dup_metric_default() -> bool:
    return os.environ.get("RAYFLUME_CHAOS_CHECK_DUP_METRIC", "0").lower() in ("1", "true", "yes", "on")


# -- cluster and topology ----------------------------------------------------------------------------
class ChaosCluster:
    """A head (the controller's node, no tier) plus an agent node and a collector node, on loopback
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, set by conftest), 1 CPU each, no dashboard."""

    def __init__(self):
        self.cluster = start_cluster({"tier": "head"})
        self.nodes = {}
        try:
            self.nodes["agent"] = self.cluster.add_node(num_cpus=1, labels=dict(AGENT_LABELS))
            self.nodes["collector"] = self.cluster.add_node(num_cpus=1, labels=dict(COLLECTOR_LABELS))
        except BaseException:
            stop_cluster(self.cluster)
            raise

    def replace(self, tier: str, downtime_s: float):
        """Remove ``tier``'s node, wait ``downtime_s`` (the fault), add a node with the same labels
        back. Main thread only (``Cluster.add_node`` installs signal handlers)."""
        node = self.nodes.pop(tier, None)
        if node is not None:
            self.cluster.remove_node(node)
        time.sleep(downtime_s)
        labels = AGENT_LABELS if tier == "agent" else COLLECTOR_LABELS
        self.nodes[tier] = self.cluster.add_node(num_cpus=1, labels=dict(labels))
        return self.nodes[tier]

    def shutdown(self) -> None:
        stop_cluster(self.cluster)


def chaos_topology(name: str, base, batch: int = 200) -> dict:
    """taildir -> file -> rayflume hop -> file -> file_roll, all files under ``base``."""
    base = str(base)

    def file_channel(tier, **extra):
        return {"type": "file", "checkpoint_dir": os.path.join(base, f"{tier}-cp"),
                "data_dirs": [os.path.join(base, f"{tier}-data")], "capacity": 2_000_000,
                "checkpoint_interval_s": 5, "minimum_required_space_bytes": 1 << 20, **extra}

    return {
        "name": name,
        "metrics": {"port": None},
        "tiers": {
            "agent": {
                "placement": {"per_node": {"label": "agent"}},
                "sources": {"tail": {"type": "taildir", "channels": ["disk"], "batch_size": batch,
                                     "filegroups": {"app": os.path.join(base, "logs", r"app\.log")},
                                     "position_file": os.path.join(base, "pos", "tail.json"),
                                     "idle_timeout_s": 2}},
                "channels": {"disk": file_channel("agent")},
                "sinks": {"fwd": {"type": "rayflume", "tier": "collector", "channel": "disk", "batch_size": batch,
                                  "refresh_s": 0.5, "max_backoff_s": 1}},
            },
            "collector": {
                "placement": {"replicas": 1, "label": "collector"},
                "sources": {"in": {"type": "rayflume", "channels": ["disk"]}},
                # every node of this cluster shares this machine's disk: a collector moved to a
                # new node (node_faults) replays its channel there
                "channels": {"disk": file_channel("collector", shared_storage=True)},
                "sinks": {"out": {"type": "file_roll", "channel": "disk", "batch_size": batch,
                                  "directory": os.path.join(base, "out"), "roll_interval_s": 5}},
            },
        },
    }


def largest_batch(topology: dict) -> int:
    """The largest batch size of any source or sink of ``topology`` (the duplicate bound per fault)."""
    sizes = [c.get("batch_size", 100) for tier in topology["tiers"].values()
             for group in ("sources", "sinks") for c in tier[group].values() if "batch_size" in c]
    return max(sizes)


# -- the output reader ---------------------------------------------------------------------------------
class NumberedLines:
    """Reads lines ``<width decimal digits><suffix>\\n`` from every file of ``directory``,
    incrementally (each call of :meth:`scan` reads what was appended since the last one, up to the
    last newline). Keeps a bitmap of the numbers seen and counts deliveries beyond the first;
    a line of any other shape is counted as malformed (first few kept as examples)."""

    CHUNK = 8 << 20

    def __init__(self, directory, width: int, suffix: bytes = b""):
        self.directory = str(directory)
        self.width = width
        self.suffix = suffix
        self.line_len = width + len(suffix) + 1
        self.offsets: dict[str, int] = {}
        self.seen = np.zeros(1 << 16, dtype=bool)
        self.distinct = 0
        self.lines = 0
        self.extra = 0  # deliveries of a number beyond its first
        self.malformed = 0
        self.malformed_examples: list[bytes] = []
        self._pow10 = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
        self._suffix = np.frombuffer(suffix, dtype=np.uint8)

    def scan(self) -> int:
        """Read what is new; returns the number of distinct numbers seen so far."""
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return self.distinct
        for name in names:
            path = os.path.join(self.directory, name)
            offset = self.offsets.get(path, 0)
            try:
                size = os.path.getsize(path)
            except FileNotFoundError:
                continue
            if size <= offset:
                continue
            with open(path, "rb") as f:
                f.seek(offset)
                while True:
                    data = f.read(self.CHUNK)
                    if not data:
                        break
                    end = data.rfind(b"\n")
                    if end < 0:
                        if len(data) == self.CHUNK:  # a "line" longer than a chunk: garbage
                            self._bad(data[:80])
                            offset += len(data)
                            continue
                        break  # an unterminated tail: wait for the rest
                    self._take(data[:end + 1])
                    offset += end + 1
                    if end + 1 < len(data):
                        f.seek(offset)
            self.offsets[path] = offset
        return self.distinct

    def unterminated(self) -> dict[str, int]:
        """Files whose end is not a newline, with the bytes past their last one (a torn write)."""
        out = {}
        for path, offset in self.offsets.items():
            size = os.path.getsize(path)
            if size > offset:
                out[os.path.basename(path)] = size - offset
        return out

    def _bad(self, line: bytes) -> None:
        self.malformed += 1
        if len(self.malformed_examples) < 5:
            self.malformed_examples.append(line[:80])

    def _take(self, data: bytes) -> None:
        arr = np.frombuffer(data, dtype=np.uint8)
        w, n = self.width, len(arr) // self.line_len
        if len(arr) % self.line_len == 0:
            rows = arr.reshape(n, self.line_len)
            digits = rows[:, :w]
            ok = (rows[:, -1] == 10) & ((digits >= 48) & (digits <= 57)).all(axis=1)
            if self._suffix.size:
                ok &= (rows[:, w:-1] == self._suffix).all(axis=1)
            if ok.all():
                self._add((digits.astype(np.int64) - 48) @ self._pow10)
                return
        numbers = []
        for line in data.split(b"\n")[:-1]:
            if len(line) == self.line_len - 1 and line[:w].isdigit() and line[w:] == self.suffix:
                numbers.append(int(line[:w]))
            else:
                self._bad(line)
        if numbers:
            self._add(np.array(numbers, dtype=np.int64))

    def _add(self, numbers: np.ndarray) -> None:
        top = int(numbers.max())
        if top >= len(self.seen):
            grown = np.zeros(max(top + 1, 2 * len(self.seen)), dtype=bool)
            grown[:len(self.seen)] = self.seen
            self.seen = grown
        unique, counts = np.unique(numbers, return_counts=True)
        already = self.seen[unique]
        self.extra += int((counts - 1).sum()) + int(already.sum())
        self.distinct += int(len(unique) - already.sum())
        self.seen[unique] = True
        self.lines += len(numbers)

    def missing(self, below: int) -> np.ndarray:
        """Numbers in ``[0, below)`` never seen."""
        seen = self.seen[:below]
        missing = np.flatnonzero(~seen)
        if below > len(self.seen):
            missing = np.concatenate([missing, np.arange(len(self.seen), below)])
        return missing

    def beyond(self, limit: int) -> np.ndarray:
        """Numbers seen that are ``>= limit``."""
        return np.flatnonzero(self.seen[limit:]) + limit if limit < len(self.seen) else np.array([], np.int64)


def ranges(numbers: np.ndarray, most: int = 10) -> list[tuple[int, int]]:
    """Sorted numbers as (first, last) runs, the first ``most`` of them."""
    if numbers.size == 0:
        return []
    runs = np.split(numbers, np.flatnonzero(np.diff(numbers) != 1) + 1)
    return [(int(r[0]), int(r[-1])) for r in runs[:most]]


# -- the writer ------------------------------------------------------------------------------------------
class LineWriter(threading.Thread):
    """Appends ``<seq:010d> chaos-line-payload`` lines to ``<logs>/app.log`` at about ``rate`` lines/s
    until stopped. ``written`` counts lines handed to the file system (acknowledged: taildir
    re-reads from its durable position). About every ``rotate_every`` lines it renames app.log to
    app.log.<k> and opens a new app.log, but only once ``tracked(inode)`` says a source recorded the
    current file (taildir follows recorded identities by design; a generation created and renamed
    away unseen would never be read). It never waits for that: it keeps appending meanwhile."""

    def __init__(self, logs_dir, rate: float, rotate_every: int, tracked, seed: int = 0):
        super().__init__(daemon=True, name="chaos-writer")
        self.logs_dir = str(logs_dir)
        self.path = os.path.join(self.logs_dir, "app.log")
        self.rate = rate
        self.rotate_every = rotate_every
        self.tracked = tracked
        self.rng = random.Random(seed)
        self.stopping = threading.Event()
        self.written = 0
        self.rotations = 0
        self.error: BaseException | None = None

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)

    def run(self) -> None:
        try:
            os.makedirs(self.logs_dir, exist_ok=True)
            f = open(self.path, "ab")
            since_rotation = 0
            t0 = time.monotonic()
            while not self.stopping.is_set():
                n = min(max(0, int(self.rate * (time.monotonic() - t0)) - self.written), 5000)
                if n:
                    f.write(b"".join(b"%0*d%s\n" % (SEQ_WIDTH, i, LINE_SUFFIX)
                                     for i in range(self.written, self.written + n)))
                    f.flush()
                    self.written += n
                    since_rotation += n
                if since_rotation >= self.rotate_every and self.tracked(os.fstat(f.fileno()).st_ino):
                    f.close()
                    self.rotations += 1
                    os.rename(self.path, f"{self.path}.{self.rotations}")
                    f = open(self.path, "ab")
                    since_rotation = 0
                self.stopping.wait(self.rng.uniform(0.005, 0.03))
            f.close()
        except BaseException as exc:  # reported by the run
            self.error = exc


def position_tracker(position_file: str, tier: str = "agent", instance: str = AGENT_ID):
    """``tracked(inode)``: whether the instance's taildir position file records that inode."""
    import json

    scoped = os.path.join(os.path.dirname(position_file), tier, instance, os.path.basename(position_file))

    def tracked(inode: int) -> bool:
        try:
            with open(scoped) as f:
                return any(int(e["ino"]) == inode for e in json.load(f)["files"])
        except (OSError, ValueError, KeyError):
            return False
    return tracked


# -- the killer --------------------------------------------------------------------------------------------
def actor_kind(topology: str, name: str) -> str | None:
    """``agent.channel``, ``collector.sinks``, ``controller``... for an actor name of ``topology``."""
    if not name.startswith(topology + "/"):
        return None
    rel = name[len(topology) + 1:]
    if rel == "controller":
        return "controller"
    parts = rel.split("/")
    if len(parts) == 4:  # tier / instance / kind key / component
        return f"{parts[0]}.{parts[2]}"
    return None


def topology_actors(topology: str) -> dict[str, list[str]]:
    """``{kind: [actor names]}`` of the named actors of ``topology``."""
    out: dict[str, list[str]] = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") != NAMESPACE:
            continue
        kind = actor_kind(topology, entry["name"])
        if kind is not None:
            out.setdefault(kind, []).append(entry["name"])
    return out


def actor_pid(name: str, timeout_s: float = 5.0) -> int | None:
    """The pid of the named actor's process, or None if it does not answer within ``timeout_s``."""
    try:
        actor = ray.get_actor(name, namespace=NAMESPACE)
        return ray.get(actor.pid.remote(), timeout=timeout_s)
    except Exception:  # not there, dead, restarting, slow
        return None


def actor_node(name: str, timeout_s: float = 5.0) -> str | None:
    try:
        actor = ray.get_actor(name, namespace=NAMESPACE)
        return ray.get(actor.info.remote(), timeout=timeout_s)["node_id"]
    except Exception:
        return None


class Killer:
    """SIGKILLs a random live actor of a random kind, waits until it answers again from a new
    process, then waits a random gap; until the deadline given to :meth:`run`. Kinds come in seeded
    shuffled rounds, so every kind is hit once per round. With ``cluster`` and node kinds in
    ``kinds`` it also replaces a tier's node (remove, wait, add back with the same labels) and
    waits until the tier's actors answer from the new node.

    :meth:`run` runs in the calling thread, which must be the main thread when nodes are
    replaced: ``Cluster.add_node`` installs signal handlers."""

    def __init__(self, topology: str, kinds=ACTOR_KINDS, seed: int = 0, gap_s=(0.3, 2.5),
                 restart_timeout_s: float = 90.0, cluster: ChaosCluster | None = None,
                 downtime_s=(1.0, 6.0)):
        self.topology = topology
        self.kinds = tuple(kinds)
        self.rng = random.Random(seed)
        self.gap_s = gap_s
        self.restart_timeout_s = restart_timeout_s
        self.cluster = cluster
        self.downtime_s = downtime_s
        self.stopping = threading.Event()
        self.kills: Counter = Counter()
        self.log: list[tuple] = []  # (t, kind, target, pid or node, seconds until back)
        self.skipped: Counter = Counter()  # picked a kind with no live actor (or its pid vanished)
        self.stuck: list[str] = []  # did not come back within restart_timeout_s
        self.errors: list[str] = []
        self.t0 = time.monotonic()

    @property
    def faults(self) -> int:
        return sum(self.kills.values())

    def run(self, duration_s: float, rounds: int | None = None) -> None:
        """Inject faults for ``duration_s`` (a fault under way is finished, its actor waited for),
        or until ``rounds`` rounds (every kind once each) are done, whichever comes first."""
        self.t0 = time.monotonic()
        deadline = self.t0 + duration_s
        order: list[str] = []
        started_rounds = 0
        while not self.stopping.is_set():
            if not order:
                if rounds is not None and started_rounds == rounds:
                    break
                started_rounds += 1
                order = list(self.kinds)
                self.rng.shuffle(order)
            kind = order.pop()
            gap = self.rng.uniform(*self.gap_s)
            if time.monotonic() + gap >= deadline or self.stopping.wait(gap):
                break
            try:
                if kind.startswith("node."):
                    self._replace_node(kind.split(".", 1)[1])
                else:
                    self._kill(kind)
            except Exception as exc:
                self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")

    def _kill(self, kind: str) -> None:
        names = topology_actors(self.topology).get(kind, [])
        if not names:
            self.skipped[kind] += 1
            return
        name = self.rng.choice(sorted(names))
        pid = actor_pid(name, timeout_s=10)
        if pid is None:
            self.skipped[kind] += 1
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            self.skipped[kind] += 1
            return
        t = time.monotonic()
        self.kills[kind] += 1
        deadline = t + self.restart_timeout_s
        while True:
            now_pid = actor_pid(name, timeout_s=5)
            if now_pid is not None and now_pid != pid:
                break
            if time.monotonic() > deadline:
                self.stuck.append(f"{name} (pid {pid}) not back within {self.restart_timeout_s:g}s")
                break
            time.sleep(0.1)
        self.log.append((round(t - self.t0, 2), kind, name, pid, round(time.monotonic() - t, 2)))

    def _replace_node(self, tier: str) -> None:
        if self.cluster is None:
            self.skipped[f"node.{tier}"] += 1
            return
        def tier_actors():
            return sorted(n for k, ns in topology_actors(self.topology).items() if k.startswith(tier + ".")
                          for n in ns)

        expected = len(tier_actors())
        t = time.monotonic()
        self.kills[f"node.{tier}"] += 1
        node = self.cluster.replace(tier, self.rng.uniform(*self.downtime_s))
        deadline = time.monotonic() + self.restart_timeout_s
        while True:
            names = tier_actors()
            if len(names) == expected and all(actor_node(n) == node.node_id for n in names):
                break
            if time.monotonic() > deadline:
                self.stuck.append(f"tier {tier} not back on node {node.node_id[:12]} within "
                                  f"{self.restart_timeout_s:g}s (actors: {sorted(names)})")
                break
            time.sleep(0.2)
        self.log.append((round(t - self.t0, 2), f"node.{tier}", node.node_id[:12], None,
                         round(time.monotonic() - t, 2)))


# -- the run -------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ChaosResult:
    duration_s: float
    kills: dict
    events: int
    delivered_lines: int
    lost: int
    unexpected: int
    malformed: int
    duplicates: int
    bound: int
    dup_metric: int | None
    rotations: int
    drain_s: float | None  # None: not every line arrived within the drain timeout
    details: dict
    seed: int = 0

    def summary(self) -> str:
        kills = ", ".join(f"{k} {v}" for k, v in sorted(self.kills.items()))
        restart = self.details.get("max_back_s")
        return (f"chaos {self.duration_s:.0f}s (seed {self.seed}): {sum(self.kills.values())} kills ({kills}); "
                f"{self.events:,} events, {self.lost} lost, {self.unexpected} unexpected, {self.malformed} malformed, "
                f"duplicates observed {self.duplicates} (bound {self.bound}), by metrics {self.dup_metric}; "
                f"{self.rotations} rotations; slowest comeback {restart}s; drained "
                f"{'in %.1fs' % self.drain_s if self.drain_s is not None else 'NOT within the timeout'}")

    def problems(self, check_dup_metric: bool | None = None, min_kills_per_kind: int = 1) -> list[str]:
        """Every violated expectation; empty when the run is valid."""
        if check_dup_metric is None:
            check_dup_metric = check_dup_metric_default()
        d = self.details
        out = []
        if d.get("writer_error"):
            out.append(f"writer failed: {d['writer_error']}")
        if d.get("killer_errors"):
            out.append(f"killer errors: {d['killer_errors']}")
        if d.get("stuck"):
            out.append(f"actors that did not come back: {d['stuck']}")
        short = {k: self.kills.get(k, 0) for k in d.get("kinds", ()) if self.kills.get(k, 0) < min_kills_per_kind}
        if short:
            out.append(f"kinds killed fewer than {min_kills_per_kind} time(s): {short}")
        if self.lost:
            out.append(f"{self.lost} acknowledged (written) lines lost, ranges {d.get('missing_ranges')}")
        if self.unexpected:
            out.append(f"{self.unexpected} unexpected (never written) numbers delivered, ranges "
                       f"{d.get('unexpected_ranges')}")
        if self.malformed:
            out.append(f"{self.malformed} malformed output lines, e.g. {d.get('malformed_examples')}")
        if self.duplicates > self.bound:
            out.append(f"{self.duplicates} duplicates exceed the bound {self.bound} "
                       f"({d.get('batch')} per fault x {sum(self.kills.values())} faults)")
        if check_dup_metric and self.dup_metric != self.duplicates:
            out.append(f"DuplicateDeliveryCount summed over sinks is {self.dup_metric}, "
                       f"but {self.duplicates} duplicates were delivered")
        return out


def sink_duplicates(metrics: dict) -> int:
    return sum(int(v.get("DuplicateDeliveryCount", 0) or 0) for k, v in metrics.items() if k.startswith("SINK."))


def run_chaos(handle, topology: dict, base, duration_s: float, seed: int = 0, rate: float = 2000.0,
              rotate_every: int = 20_000, kinds=ACTOR_KINDS, cluster: ChaosCluster | None = None,
              warmup_timeout_s: float = 90.0, drain_timeout_s: float = 120.0, gap_s=(0.3, 2.5),
              log=print, rounds: int | None = None) -> ChaosResult:
    """Write, kill for ``duration_s`` (or ``rounds`` rounds of every kind, if sooner), stop
    writing, wait for every line, check the total queue."""
    base = str(base)
    source = topology["tiers"]["agent"]["sources"]["tail"]
    out_dir = topology["tiers"]["collector"]["sinks"]["out"]["directory"]
    batch = largest_batch(topology)
    output = NumberedLines(out_dir, SEQ_WIDTH, LINE_SUFFIX)
    writer = LineWriter(os.path.join(base, "logs"), rate, rotate_every, position_tracker(source["position_file"]),
                        seed=seed)
    killer = Killer(topology["name"], kinds, seed=seed, gap_s=gap_s, cluster=cluster)
    writer.start()
    try:
        deadline = time.monotonic() + warmup_timeout_s
        while output.scan() == 0:  # chaos starts once lines flow end to end
            if writer.error is not None or time.monotonic() > deadline:
                raise AssertionError(f"no line reached the output within {warmup_timeout_s}s "
                                     f"(writer error: {writer.error!r}); status: {handle.status()}")
            time.sleep(0.2)
        t0 = time.monotonic()
        killer.run(duration_s, rounds)  # in this (the main) thread: Cluster.add_node needs it
        duration = time.monotonic() - t0
    finally:
        writer.stop()
    written = writer.written
    t1 = time.monotonic()
    drain_s = None
    last_progress = (output.scan(), time.monotonic())
    while True:
        distinct = output.scan()
        if not output.missing(written).size:
            drain_s = time.monotonic() - t1
            break
        if distinct != last_progress[0]:
            last_progress = (distinct, time.monotonic())
        if time.monotonic() - t1 > drain_timeout_s:
            break
        time.sleep(0.25)
    metrics = handle.metrics()
    # a last look, for late (duplicate or unexpected) arrivals already on disk
    output.scan()
    missing = output.missing(written)
    beyond = output.beyond(written)
    back = [entry[-1] for entry in killer.log]
    details = {
        "batch": batch, "kinds": tuple(kinds), "kill_log": killer.log, "skipped": dict(killer.skipped),
        "stuck": killer.stuck, "killer_errors": killer.errors,
        "writer_error": repr(writer.error) if writer.error else None,
        "missing_ranges": ranges(missing), "unexpected_ranges": ranges(beyond),
        "malformed_examples": output.malformed_examples, "unterminated": output.unterminated(),
        "max_back_s": max(back) if back else None,
        "dup_metric_by_sink": {k: v.get("DuplicateDeliveryCount") for k, v in metrics.items()
                               if k.startswith("SINK.")},
        "restarts": {k: v.get("Restarts") for k, v in metrics.items()},
    }
    result = ChaosResult(duration_s=duration, kills=dict(killer.kills), events=written,
                         delivered_lines=output.lines, lost=int(missing.size), unexpected=int(beyond.size),
                         malformed=output.malformed, duplicates=output.extra, bound=batch * killer.faults,
                         dup_metric=sink_duplicates(metrics), rotations=writer.rotations, drain_s=drain_s,
                         details=details, seed=seed)
    log(result.summary())
    return result
