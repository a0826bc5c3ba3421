"""The fault scenarios. Each builds its own cluster with the real CLI, pushes continuously
while it injects one fault and recovers from it the way an operator would, then pulls every
acknowledged image through the healthy replicas and checks every digest.

`gc` also deletes images and collects garbage all along (chaos/gc.py).

Load runs in three phases of `duration / 3` seconds each: before the fault, during it, and
after the recovery (total-loss has a fourth: between the backup and the loss).

Every cluster serves HTTPS (`--tls` on loopback; by default in network namespaces): pushers,
verifier and CLI trust only the cluster CA that `moorage ca export` wrote (a restore makes a
new CA, which is exported and trusted from then on).

With `Options.s3` blob storage is an S3 prefix (each scenario under a prefix of its own below
it) instead of a directory: replicas run on loopback then (a store on the host's loopback is
out of the namespaces' reach), and `netcut` (a cut between namespaces) is not run. `gc`'s
final check lists blob storage through the driver, so it runs on S3 too.
"""

from __future__ import annotations

import json
import signal
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from harness.cluster import Cluster, Node
from harness.netns import NetLab, netns_unavailable

from chaos import gc
from chaos.load import Ack, Load, missing_tags, verify_all

SURVIVOR_LAG = 1.5  # seconds the survivors of a majority loss fall behind before it
SCENARIOS = ("kill-minority", "sigstop", "netcut", "majority-loss", "total-loss", "gc")
#: Scenarios that need namespaces, and why (with Options.s3).
S3_UNSUPPORTED = {
    "netcut": "replicas in network namespaces cannot reach a store on the host's loopback",
}


@dataclass
class Options:
    replicas: int = 3
    duration: float = 30.0  # seconds of load per scenario
    replay: bool = True  # replay the journal on recovery (off: --no-replay)
    workers: int = 4
    #: Blob storage on S3: a `--storage s3://BUCKET/PREFIX?...` value (credentials from the
    #: environment as the AWS tools read them); None: a directory of the work directory.
    s3: str | None = None
    log: Callable[[str], None] = lambda line: None


@dataclass
class Result:
    scenario: str
    replicas: int
    fault: str = ""
    acknowledged: int = 0
    verified: int = 0
    deleted: int = 0  # gc: acknowledged, then deleted (or maybe: the delete got no answer)
    lost: list[str] = field(default_factory=list)
    # Acknowledged pushes the recovered store lacked before the journal replay: what etcd
    # (or the backup) alone would have lost. None where the scenario cannot lose any.
    etcd_alone_lost: int | None = None
    etcd_alone_lost_refs: list[str] = field(default_factory=list)
    journal_replayed: int | None = None
    attempts: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    failure_samples: dict[str, str] = field(default_factory=dict)
    acknowledged_by_phase: dict[str, int] = field(default_factory=dict)
    # total-loss: what restoring the backup alone brought back, against when each push ran.
    # Every push answered before the backup began must be in it, every push begun after it
    # ended must not; the ones that overlapped the backup may go either way.
    backup_window: dict[str, int] = field(default_factory=dict)
    backup_mismatch: list[str] = field(default_factory=list)
    # gc: deletes, collections, kills; the last collection; what the final check found
    gc: dict[str, Any] = field(default_factory=dict)
    gc_last: dict[str, Any] = field(default_factory=dict)
    gc_problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    events: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and not self.lost
            and not self.backup_mismatch
            and not self.gc_problems
            and self.acknowledged > 0
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def describe(self) -> str:
        r = self
        lines = [
            f"{r.scenario} ({r.replicas} replicas; {r.fault}; {r.seconds} s)",
            f"  pushes acknowledged {r.acknowledged}, verified {r.verified}, lost {len(r.lost)}"
            + (f", deleted {r.deleted}" if r.gc else "")
            + f"  (attempts {r.attempts}; acknowledged by phase {r.acknowledged_by_phase})",
        ]
        if r.failures:
            lines.append(f"  failed attempts (not acknowledged, not counted): {r.failures}")
            lines += [f"    first {k}: {v}" for k, v in r.failure_samples.items()]
        if r.etcd_alone_lost is not None:
            lines.append(
                f"  {'the backup' if r.backup_window else 'etcd'} alone would have lost "
                f"{r.etcd_alone_lost} acknowledged push(es); "
                f"journal replayed {r.journal_replayed} entries"
            )
            lines += [f"    {ref}" for ref in r.etcd_alone_lost_refs[:10]]
            if len(r.etcd_alone_lost_refs) > 10:
                lines.append(f"    ... and {len(r.etcd_alone_lost_refs) - 10} more")
        if r.backup_window:
            w = r.backup_window
            lines.append(
                f"  the backup alone: {w['before_present']}/{w['before']} pushes answered before "
                f"it present, {w['after_missing']}/{w['after']} begun after it missing, "
                f"{w['during_missing']}/{w['during']} overlapping it missing"
            )
        if r.gc:
            g = r.gc
            lines.append(
                f"  deletes acknowledged {g['deletes']} (unanswered {g['deletes_unknown']}); "
                f"collections {g['collections']} finished, {g['collections_interrupted']} "
                f"interrupted, {g['busy']} busy; freed {g['blobs_freed']} blobs "
                f"({g['bytes_freed']} bytes), {g['manifests_collected']} untagged manifests, "
                f"rescued {g['rescued']}; kills {g['kills']} (collections killed: "
                f"{g['killed_collections']})"
            )
            if g["failures"]:
                lines.append(f"  churn failures: {g['failures']}")
                lines += [f"    first {k}: {v}" for k, v in g["samples"].items()]
        if r.gc_last:
            lines.append(
                f"  last collection freed {r.gc_last.get('blobs')} blobs, "
                f"{r.gc_last.get('manifests')} manifests; blob storage then held "
                f"{r.gc_last.get('stored_blobs')} blobs, unreferenced or missing "
                f"{len(r.gc_problems)}"
            )
        lines += [f"  GC PROBLEM {item}" for item in r.gc_problems[:50]]
        lines += [f"  BACKUP MISMATCH {item}" for item in r.backup_mismatch]
        lines += [f"  LOST {item}" for item in r.lost]
        if r.error:
            lines.append(f"  ERROR {r.error}")
        return "\n".join(lines)


class Run:
    """One scenario's cluster, load and bookkeeping."""

    def __init__(
        self,
        name: str,
        opts: Options,
        workdir: Path,
        lab: NetLab | None,
        cluster: Cluster | None = None,
    ) -> None:
        """`cluster`: run on this one (built here when it has no replica yet) instead of a
        new cluster in `workdir`."""
        self.name = name
        self.opts = opts
        s3 = s3_prefix(opts.s3, f"{name}-{uuid.uuid4().hex[:8]}") if opts.s3 else None
        self.cluster = cluster if cluster is not None else Cluster(workdir, lab, tls=True, s3=s3)
        shared = gc.SHARED_LAYERS if name == "gc" else 0
        self.load = Load(name, workers=opts.workers, shared=shared)
        self.churn = gc.Churn(self.load) if name == "gc" else None
        self.result = Result(name, opts.replicas)
        self.t0 = time.monotonic()
        self.third = opts.duration / 3

    def event(self, what: str) -> None:
        line = f"[{self.name} +{time.monotonic() - self.t0:6.1f}s] {what}"
        self.result.events.append(line)
        self.opts.log(line)

    def phase(self, phase: str) -> None:
        self.load.phase = phase
        self.event(f"phase: {phase} ({len(self.load.acks)} acknowledged so far)")

    def targets(self, nodes: list[Node] | None = None) -> None:
        nodes = nodes or self.cluster.nodes
        self.load.set_targets([n.url for n in nodes], nodes[0].verify())
        if self.churn is not None:
            self.churn.set_targets([n.url for n in nodes], nodes[0].verify())

    def build(self) -> None:
        if self.cluster.nodes:  # a cluster an earlier scenario ran on, and left healthy
            doc = self.cluster.wait_status("healthy", timeout=180)
            members = doc["quorum"]["members"]
            if members != self.opts.replicas:
                raise RuntimeError(
                    f"the cluster given has {members} replicas, not {self.opts.replicas}"
                )
            self.event(f"on the cluster of an earlier scenario: {self.cluster.nodes}")
            return
        self.cluster.install()
        while len(self.cluster.nodes) < self.opts.replicas:
            self.cluster.join()
        self.cluster.wait_status("healthy")
        self.event(f"built {self.opts.replicas} replicas: {self.cluster.nodes}")

    def wait_healthy(self) -> None:
        doc = self.cluster.wait_status("healthy", timeout=180)
        self.event(f"status healthy, quorum {doc['quorum']}")

    def survivors_and_victims(self, count: int) -> tuple[list[Node], list[Node]]:
        """`count` victims, the leader first; the rest survive."""
        leader = self.cluster.leader()
        followers = [n for n in self.cluster.nodes if n is not leader]
        victims = [leader, *followers[: count - 1]]
        return [n for n in self.cluster.nodes if n not in victims], victims


def s3_prefix(url: str, name: str) -> str:
    """The S3 `--storage` value `url` with `/name` added to its prefix (before the query)."""
    base, sep, query = url.partition("?")
    return f"{base.rstrip('/')}/{name}{sep}{query}"


# -- the faults -------------------------------------------------------------------------------


def destroy_all(cluster: Cluster, nodes: list[Node]) -> list[Node]:
    """`moorage destroy` every node's data directory, side by side (each command is a process
    of its own); the nodes, in order, once all are gone."""
    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        list(pool.map(cluster.destroy, nodes))
    return nodes


def kill_minority(run: Run) -> None:
    _, victims = run.survivors_and_victims((run.opts.replicas - 1) // 2)
    run.result.fault = f"SIGKILL {len(victims)} of {run.opts.replicas} (the leader first)"
    run.phase("fault")
    for v in victims:
        run.cluster.kill(v)
        run.event(f"SIGKILL {v}")
    time.sleep(run.third)
    for v in victims:
        run.cluster.start(v)
        run.event(f"moorage start {v}")
    run.wait_healthy()


def sigstop(run: Run) -> None:
    leader = run.cluster.leader()
    run.result.fault = "SIGSTOP the leader, then SIGCONT"
    run.phase("fault")
    leader.signal(signal.SIGSTOP)
    run.event(f"SIGSTOP {leader}")
    try:
        time.sleep(run.third)
    finally:
        leader.signal(signal.SIGCONT)
        run.event(f"SIGCONT {leader}")
    run.wait_healthy()


def netcut(run: Run) -> None:
    lab = run.cluster.lab
    assert lab is not None
    leader = run.cluster.leader()
    assert leader.slot is not None
    run.result.fault = "cut the leader off the network, then heal"
    run.phase("fault")
    lab.cut(leader.slot)
    run.event(f"cut {leader}")
    try:
        time.sleep(run.third)
        others = [n for n in run.cluster.nodes if n is not leader]
        doc = run.cluster.status(others)
        bad = {r["id"]: r["error"] for r in doc["replicas"] if not r["healthy"]}
        run.event(f"status through the majority: {doc['scenario']}, unhealthy {bad}")
    finally:
        lab.heal(leader.slot)
        run.event(f"heal {leader}")
    run.wait_healthy()


def _wait_read_only(node: Node, patience: float = 60) -> None:
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            with node.client(timeout=5) as c:
                if c.get("/_ping").json().get("read_only") is True:
                    return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{node} never became read-only after the majority was lost")


def majority_loss(run: Run) -> None:
    n = run.opts.replicas
    survivors, victims = run.survivors_and_victims(n // 2 + 1)
    lab = run.cluster.lab
    run.result.fault = f"SIGKILL {len(victims)} of {n} and lose their data; emergency-repair; join"
    if lab is not None:
        run.result.fault = f"survivors cut off {SURVIVOR_LAG:g} s, then " + run.result.fault
    run.phase("fault")
    if lab is not None:
        # The survivors fall behind first (cut off, as by a flaky link, while clients are
        # routed to the others): the doomed majority keeps committing acknowledged pushes
        # that no survivor has, which is what the journal is for. Then the majority dies.
        run.targets(victims)
        for s in survivors:
            assert s.slot is not None
            lab.cut(s.slot)
            run.event(f"cut {s}")
    try:
        time.sleep(SURVIVOR_LAG if lab is not None else 0)
        for v in victims:
            run.cluster.kill(v)
            run.event(f"SIGKILL {v}")
    finally:
        if lab is not None:
            for s in survivors:
                assert s.slot is not None
                lab.heal(s.slot)
                run.event(f"heal {s}")
        run.targets([*survivors, *victims])
    # their disks are gone too: only the survivors remain
    for v in destroy_all(run.cluster, victims):
        run.event(f"destroyed the data directory of {v}")
    time.sleep(run.third)
    for s in survivors:
        _wait_read_only(s)
    # What each survivor's store has (nothing can commit any more): the acknowledged pushes
    # it lacks are what etcd alone would lose if the repair picks it.
    time.sleep(1)
    acks = list(run.load.acks)
    lacking = {s.replica_id: missing_tags(acks, s.url, s.verify()) for s in survivors}
    run.event(
        "survivors lack acknowledged pushes: "
        + ", ".join(f"{rid}: {len(m)}" for rid, m in lacking.items())
    )
    primary, others = survivors[0], survivors[1:]
    for o in others:  # an old member that still answers blocks the repair: stop it
        run.cluster.stop(o)
    args = ["emergency-repair", "--data-dir", str(primary.data_dir), "--yes", "--json"]
    if others:
        args += ["--candidate-dir", ",".join(str(o.data_dir) for o in others)]
    if not run.opts.replay:
        args.append("--no-replay")
    out = json.loads(run.cluster.cli(*args, node=primary).stdout)
    chosen = run.cluster.by_id(out["result"]["replica_id"])
    run.result.journal_replayed = int(out["result"]["journal_replayed"]["applied"])
    run.result.etcd_alone_lost = len(lacking[chosen.replica_id])
    run.result.etcd_alone_lost_refs = [a.ref for a in lacking[chosen.replica_id]]
    run.event(
        f"emergency-repair chose {chosen} (epoch {out['result']['epoch']}), replayed "
        f"{run.result.journal_replayed} journal entries"
    )
    run.phase("repaired")
    for o in survivors:
        if o is not chosen:
            run.cluster.destroy(o)  # fenced by the repair: destroy, then join anew
    run.cluster.nodes = [chosen]
    run.targets()
    new = run.cluster.join(via=chosen)
    run.event(f"joined {new}")
    run.targets()
    run.wait_healthy()


def total_loss(run: Run) -> None:
    backup = run.cluster.root / "backup.tar"
    backup_started = time.monotonic()
    out = json.loads(
        run.cluster.cli(
            "backup", "--existing", run.cluster.urls(), "--out", str(backup), "--json"
        ).stdout
    )
    backup_finished = time.monotonic()
    run.event(f"backup at revision {out['revision']}: {out['counts']}")
    run.result.fault = "backup; more pushes; SIGKILL all and destroy every data directory"
    run.phase("after-backup")
    time.sleep(run.third)
    run.phase("fault")
    for node in list(run.cluster.nodes):
        run.cluster.kill(node)
        run.event(f"SIGKILL {node}")
    for node in destroy_all(run.cluster, list(run.cluster.nodes)):
        run.event(f"destroyed the data directory of {node}")
    acks = list(run.load.acks)

    # What the backup alone brings back: restore it, without the journal, into scratch
    # storage (the real blob storage is not touched), and list the tags it has.
    scratch = run.cluster.new_node()
    scratch.ca_file = scratch.data_dir / "tls" / "ca.crt"  # a restore makes a CA of its own
    run.cluster.retired.append(scratch)
    run.cluster.cli(
        "restore", "--yes", "--in", str(backup), *scratch.flags(),
        "--storage", str(run.cluster.root / "scratch-blobs"), "--no-replay-journal", "--json",
    )  # fmt: skip
    try:
        lacking = missing_tags(acks, scratch.url, scratch.verify())
    finally:
        run.cluster.cli("destroy", "--yes", "--data-dir", str(scratch.data_dir), check=False)
    run.result.etcd_alone_lost = len(lacking)
    run.result.etcd_alone_lost_refs = [a.ref for a in lacking]
    run.event(f"the backup alone lacks {len(lacking)} acknowledged pushes")
    check_backup_window(run.result, acks, lacking, backup_started, backup_finished)

    node = run.cluster.new_node()
    args = [
        "restore",
        "--yes",
        "--in",
        str(backup),
        *node.flags(),
        "--storage",
        run.cluster.storage_arg,
    ]
    if not run.opts.replay:  # restore replays the journal by default
        args.append("--no-replay-journal")
    doc = json.loads(run.cluster.cli(*args, "--json").stdout)
    node.replica_id = doc["replica_id"]
    run.cluster.nodes = [node]
    fingerprint = run.cluster.trust(node)  # the restored cluster has a new CA
    run.event(f"trusting the restored cluster's CA {fingerprint}")
    run.result.journal_replayed = int(doc["journal_replayed"]["applied"])
    run.event(
        f"restored {node} as cluster {doc['cluster_id']}, replayed "
        f"{run.result.journal_replayed} journal entries, missing blobs {doc['missing_blobs']}"
    )
    run.phase("restored")
    run.targets()
    new = run.cluster.join(via=node)
    run.event(f"joined {new}")
    run.targets()
    run.wait_healthy()


def check_backup_window(
    result: Result, acks: list[Ack], lacking: list[Ack], started: float, finished: float
) -> None:
    """Without the journal, exactly the pushes made after the backup are missing."""
    gone = {a.ref for a in lacking}
    before = [a for a in acks if a.finished < started]
    after = [a for a in acks if a.started > finished]
    during = [a for a in acks if a.finished >= started and a.started <= finished]
    result.backup_window = {
        "before": len(before),
        "before_present": sum(a.ref not in gone for a in before),
        "after": len(after),
        "after_missing": sum(a.ref in gone for a in after),
        "during": len(during),
        "during_missing": sum(a.ref in gone for a in during),
    }
    result.backup_mismatch = [
        f"{a.ref}: answered before the backup began, yet not in it" for a in before if a.ref in gone
    ] + [f"{a.ref}: begun after the backup ended, yet in it" for a in after if a.ref not in gone]


def gc_kills(run: Run) -> None:
    """SIGKILL the replica running a collection (the etcd leader) mid-run, then a follower;
    `moorage start` each. Deletes and collections go on throughout."""
    assert run.churn is not None
    run.result.fault = (
        "SIGKILL the replica running a collection (the leader), then a follower, while "
        "images are deleted and collected"
    )
    run.phase("fault")
    rounds = max(1, int(run.opts.duration // 60))
    for _ in range(rounds):
        victim = run.cluster.leader()
        phase = gc.start_and_kill(victim.url, victim.verify())
        run.cluster.kill(victim)
        run.churn.counts.kills += 1
        run.churn.counts.killed_collections.append(phase)
        run.event(f"SIGKILL {victim}, its collection: {phase}")
        time.sleep(run.third / (2 * rounds))
        run.cluster.start(victim)
        run.event(f"moorage start {victim}")
        run.wait_healthy()
        follower = next(n for n in run.cluster.nodes if n is not run.cluster.leader())
        run.cluster.kill(follower)
        run.churn.counts.kills += 1
        run.event(f"SIGKILL {follower}")
        time.sleep(run.third / (2 * rounds))
        run.cluster.start(follower)
        run.event(f"moorage start {follower}")
        run.wait_healthy()


FAULTS: dict[str, Callable[[Run], None]] = {
    "kill-minority": kill_minority,
    "sigstop": sigstop,
    "netcut": netcut,
    "majority-loss": majority_loss,
    "total-loss": total_loss,
    "gc": gc_kills,
}


#: The scenarios after which the cluster is no longer the one built: no later scenario may
#: run on it (the others leave it healthy, with the same replicas).
CONSUMES_CLUSTER = ("majority-loss", "total-loss")


def shared_cluster(name: str, workdir: Path) -> Cluster:
    """An empty cluster in `workdir` for several scenarios to run on in turn (run_scenario's
    `cluster`), one after the other, the one of CONSUMES_CLUSTER last: in namespaces when
    `name` needs them (netcut; majority-loss with its lag) and they are available."""
    lab = NetLab() if name in ("netcut", "majority-loss") and netns_unavailable() is None else None
    return Cluster(workdir, lab, tls=True)


def run_scenario(name: str, opts: Options, workdir: Path, cluster: Cluster | None = None) -> Result:
    """Build a cluster in `workdir`, run scenario `name` against it, tear everything down.

    With `cluster` (from shared_cluster; not with `opts.s3`) it runs on that one instead,
    built first if it has no replica, and leaves it running for the caller to shut down."""
    started = time.monotonic()
    lab: NetLab | None = None
    reason = netns_unavailable()
    if name == "netcut" and reason is not None:
        return Result(name, opts.replicas, error=f"a network cut needs namespaces: {reason}")
    if opts.s3 and name in S3_UNSUPPORTED:
        return Result(name, opts.replicas, error=f"not run on S3: {S3_UNSUPPORTED[name]}")
    if cluster is not None:
        lab = cluster.lab
    elif name in ("netcut", "majority-loss") and reason is None and not opts.s3:
        lab = NetLab()  # majority-loss without namespaces runs on loopback, without the lag
    if name == "netcut" and lab is None:
        return Result(name, opts.replicas, error="a network cut needs a cluster in namespaces")
    run = Run(name, opts, workdir, lab, cluster)
    result = run.result
    try:
        run.build()
        run.targets()
        run.load.start()
        if run.churn is not None:
            run.churn.start()
        run.phase("before")
        time.sleep(run.third)
        FAULTS[name](run)
        run.phase("after")
        time.sleep(run.third)
        run.load.stop()
        run.event(f"load stopped: {len(run.load.acks)} acknowledged; verifying")
        nodes = run.cluster.nodes
        to_verify = run.load.acks
        if run.churn is not None:
            run.churn.stop()
            excluded = run.churn.excluded()
            to_verify = [a for a in to_verify if a.ref not in excluded]
            result.deleted = len(run.load.acks) - len(to_verify)
            run.event(f"churn stopped: {len(excluded)} deleted (or maybe); verifying the rest")
        result.lost = verify_all(to_verify, [n.url for n in nodes], nodes[0].verify())
        result.verified = len(to_verify) - len(result.lost)
        run.event(f"verified {result.verified}, lost {len(result.lost)}")
        if run.churn is not None:
            result.gc_last, result.gc_problems = gc.final_check(
                run.churn, run.load.acks, nodes[0].url, nodes[0].verify(), run.cluster.storage_arg
            )
            run.event(f"last collection {result.gc_last}; problems {len(result.gc_problems)}")
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        run.event("FAILED: " + traceback.format_exc())
    finally:
        run.load.stop()
        if run.churn is not None:
            run.churn.stop()
            result.gc = run.churn.counts.as_dict()
        if cluster is None:
            run.cluster.shutdown()
    acks: list[Ack] = run.load.acks
    result.acknowledged = len(acks)
    result.attempts = run.load.attempts
    result.failures = dict(run.load.failures)
    result.failure_samples = dict(run.load.samples)
    result.acknowledged_by_phase = run.load.by_phase()
    result.seconds = round(time.monotonic() - started, 1)
    return result
