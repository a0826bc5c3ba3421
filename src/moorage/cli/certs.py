"""`moorage certs status` / `certs rotate`: the cluster's certificates (DESIGN.md §7)."""

from __future__ import annotations

import sys
from typing import Any

import click

from moorage.cli.base import Failed, Group, emit
from moorage.cli.confirm import confirm, confirm_options
from moorage.cli.options import (
    admin_client,
    admin_options,
    ca_file_option,
    ca_fingerprint_option,
    json_option,
    password_option,
    trusting_data_dirs,
    username_option,
)
from moorage.config import DataDir


@click.group(cls=Group)
def certs() -> None:
    """The cluster's certificates: expiry, renewal."""


@certs.command("status")
@click.option("--existing", default=None, help="URL of a replica (comma-separated list).")
@username_option()
@password_option()
@ca_file_option
@ca_fingerprint_option
@click.option(
    "--data-dir",
    "data_dirs",
    default=None,
    callback=trusting_data_dirs,
    help="Without --existing: the certificates in these data directories' D/tls/ (no "
    "network; comma-separated).",
)
@json_option
def status(
    existing: str | None,
    username: str,
    password: str | None,
    data_dirs: str | None,
    as_json: bool,
) -> None:
    """Every replica's certificate and the CA: names, expiry, days left, fingerprint, and
    ok / expiring (under 30 days) / expired. Exit 1 if a replica did not answer."""
    from moorage.cluster.certs import local_report
    from moorage.recovery.certs import gather, rows, rows_text

    rotation: dict[str, Any] | None = None
    if existing is not None:
        client = admin_client(existing, username, password)
        reports = gather(client)
        rotation = _rotation_or_none(client)
    elif data_dirs:
        reports = [local_report(DataDir(p).load()) for p in data_dirs.split(",") if p.strip()]
    else:
        raise click.UsageError("give --existing URL (the whole cluster) or --data-dir D")
    table = rows(reports)
    bad = [r for r in table if r["state"] != "ok"]
    head = "certificates: all ok" if not bad else f"certificates: {len(bad)} need attention"
    doc: dict[str, Any] = {"certificates": table}
    lines = [head, *rows_text(table)]
    if rotation is not None:
        doc["ca_rotation"] = {k: v for k, v in rotation.items() if k != "new_ca_pem"}
        lines += _rotation_lines(rotation)
    emit(as_json, doc, "\n".join(lines))
    if any(r["state"] == "unreachable" for r in table):
        sys.exit(1)


_PHASE_MEANS = {
    "trust": "the new CA exists; the old one still signs; replicas are being made to trust "
    "both (etcd members restart one at a time)",
    "reissue": "every replica trusts both; the new CA signs; replica certificates are being "
    "re-issued by it",
    "drop": "every certificate is the new CA's; replicas are being made to trust only it",
}


def _rotation_or_none(client: Any) -> dict[str, Any] | None:
    """The CA rotation in progress, None when there is none (or the replica cannot say)."""
    from moorage.errors import MoorageError
    from moorage.recovery.certs import rotation_state

    try:
        state = rotation_state(client)
    except MoorageError:
        return None
    return state if state.get("phase") else None


def _rotation_lines(rot: dict[str, Any]) -> list[str]:
    return [
        f"CA ROTATION IN PROGRESS since {rot['started_at']}: {rot['old_ca']} -> "
        f"{rot['new_ca']}, phase {rot['phase']}: {_PHASE_MEANS.get(rot['phase'], '?')}",
        "  both CAs are trusted meanwhile and joins are refused; finish it with "
        "'moorage certs rotate --ca --existing URL' (it resumes where it stopped)",
    ]


@certs.command("rotate")
@admin_options
@click.option(
    "--ca",
    "new_ca",
    is_flag=True,
    help="Roll the cluster to a new CA (both trusted meanwhile; etcd members restart one "
    "at a time, twice); resumes a rotation that was interrupted.",
)
@confirm_options
@json_option
def rotate(
    existing: str,
    username: str,
    password: str | None,
    new_ca: bool,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Renew every replica's certificate, one replica at a time, without downtime: each makes
    a new key and CSR, the cluster CA signs it, its etcd member and HTTPS listener serve the
    new certificate on new connections (open ones finish), then the next replica.

    With --ca: roll the cluster to a new CA through a period where both are trusted (the plan
    lists the steps); an interrupted run is finished by running it again."""
    from moorage.recovery.certs import gather, renew_one, rotation_state

    client = admin_client(existing, username, password)
    reports = gather(client)
    missing = [r for r in reports if "replica" not in r]
    if missing:
        raise Failed(
            "not every replica answered, and each must renew its own certificate: "
            + "; ".join(f"{r['replica_id']} ({r['url']}): {r['error']}" for r in missing)
            + ". Bring it back (moorage status says how) or remove it, then run this again"
        )
    state = rotation_state(client)
    if new_ca:
        _rotate_ca(client, reports, state, yes=yes, dry_run=dry_run, as_json=as_json)
        return
    if state.get("phase"):
        raise Failed(
            f"a CA rotation is in progress (phase {state['phase']}, new CA {state['new_ca']}); "
            "finish it with 'moorage certs rotate --ca' (it re-issues every replica "
            "certificate too)"
        )
    plan: dict[str, Any] = {
        "replicas": [
            {
                "replica_id": r["replica_id"],
                "url": r["url"],
                "fingerprint": r["replica"].get("fingerprint"),
                "not_after": r["replica"].get("not_after"),
            }
            for r in reports
        ]
    }
    text = "\n".join(
        [f"certs rotate will renew {len(reports)} replica certificate(s), one at a time:"]
        + [
            f"  {p['replica_id']}  {p['url']}  now {p['fingerprint']} (until {p['not_after']})"
            for p in plan["replicas"]
        ]
        + ["kept: the cluster CA; pushes and pulls keep working throughout"]
    )
    confirm("certs rotate", text, plan, yes=yes, dry_run=dry_run, as_json=as_json)
    done = []
    for p in plan["replicas"]:
        if not as_json:
            click.echo(f"renewing {p['replica_id']} ...")
        try:
            done.append(renew_one(client, p["replica_id"], p["url"]))
        except Exception as exc:
            finished = ", ".join(d["replica_id"] for d in done) or "none"
            raise Failed(
                f"{exc}. Renewed so far: {finished}; the others keep their valid "
                "certificates. Fix the cause and run 'moorage certs rotate' again"
            ) from None
        if not as_json:
            click.echo(f"  {done[-1]['old']} -> {done[-1]['new']}")
    emit(as_json, {"renewed": done}, f"renewed {len(done)} replica certificate(s)")


_STEPS = {
    "begin": "make a new CA (ECDSA P-256) and store its key in etcd, sealed with the cluster "
    "secret, beside the current one",
    "trust": "each replica in turn trusts both CAs (D/tls/ca.crt becomes a bundle) and "
    "restarts its etcd member, which must be healthy and caught up before the next",
    "reissue": "the new CA becomes the cluster CA (joins and renewals sign with it); each "
    "replica's certificate is re-issued by it, one replica at a time",
    "drop": "each replica in turn trusts only the new CA and restarts its etcd member again; "
    "then the old CA (certificate and sealed key) is deleted from etcd",
}


def _rotate_ca(
    client: Any,
    reports: list[dict[str, Any]],
    state: dict[str, Any],
    *,
    yes: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """`certs rotate --ca`: plan, confirmation, then the phases of moorage.cluster.ca_rotation
    from wherever an earlier run stopped."""
    from moorage.pki.trust import trust_ca_pem
    from moorage.recovery.certs import (
        gather,
        issued_by_subject,
        renew_one,
        rotation_step,
        trust_one,
    )

    phase = state.get("phase")
    order = ["begin", "trust", "reissue", "drop"]
    first = order.index(phase) if phase else 0
    current = next((r["ca"].get("fingerprint") for r in reports if r.get("ca")), None)
    targets = [(str(r["replica_id"]), str(r["url"])) for r in reports]
    plan: dict[str, Any] = {
        "ca_rotation": {
            "resuming": phase,
            "started_at": state.get("started_at"),
            "old_ca": state.get("old_ca", current),
            "new_ca": state.get("new_ca"),
        },
        "replicas": [{"replica_id": rid, "url": url} for rid, url in targets],
        "steps": [
            {"step": k, "does": v, "done": i < first} for i, (k, v) in enumerate(_STEPS.items())
        ],
    }
    lines = [
        f"certs rotate --ca will move the cluster ({len(targets)} replica(s): "
        + ", ".join(rid for rid, _ in targets)
        + f") from CA {plan['ca_rotation']['old_ca']} to a new CA, both trusted meanwhile:"
    ]
    if phase:
        lines.append(
            f"  resuming the rotation begun {state.get('started_at')} (new CA "
            f"{state.get('new_ca')}), in phase {phase}"
        )
    for i, does in enumerate(_STEPS.values()):
        lines.append(f"  {i + 1}. {'(done) ' if i < first else ''}{does}")
    lines += [
        "pushes and pulls keep working throughout; joins are refused until it finishes",
        "afterwards the cluster CA fingerprint changes: clients that trust the old CA "
        "(docker/podman certs.d, --ca-file) need the new one ('moorage ca export'); until "
        "step 4 both work",
    ]
    confirm("certs rotate --ca", "\n".join(lines), plan, yes=yes, dry_run=dry_run,
            as_json=as_json)  # fmt: skip

    def say(text: str) -> None:
        if not as_json:
            click.echo(text)

    done: list[dict[str, Any]] = []
    renewed: list[dict[str, Any]] = []
    stage = "begin"
    try:
        rot = rotation_step(client, "begin")
        trust_ca_pem(str(rot["new_ca_pem"]).encode())  # replicas re-issued by it: verified
        say(f"1. new CA {rot['new_ca']} stored (sealed) in etcd")
        for stage, step_no in (("trust", 2), ("reissue", 3), ("drop", 4)):
            if order.index(rot["phase"]) > order.index(stage):
                continue
            if rot["phase"] != stage:
                rot = rotation_step(client, stage)
            say(f"{step_no}. {stage}:")
            for rid, url in targets:
                result = trust_one(client, rid, url, stage)
                done.append(result)
                restarted = (
                    "etcd restarted" if result["etcd_restarted"] else "etcd already trusted them"
                )
                say(f"  {rid}: trusts {', '.join(result['trusted'])} ({restarted})")
                if stage != "reissue":
                    continue
                mine = gather(client, [(rid, url)])[0]
                if issued_by_subject(mine, str(rot["new_ca_subject"])):
                    say(f"  {rid}: certificate already issued by the new CA")
                    continue
                renewed.append(renew_one(client, rid, url))
                say(f"  {rid}: certificate {renewed[-1]['old']} -> {renewed[-1]['new']}")
        stage = "finish"
        final = rotation_step(client, "finish")
    except Exception as exc:
        raise Failed(
            f"{exc} (step: {stage}). The CA rotation is left where it stopped, which is safe: "
            "'moorage certs status' shows it, and running 'moorage certs rotate --ca' again "
            "finishes it"
        ) from None
    fp = final["ca_fingerprint"]
    url = client.urls[0]
    emit(
        as_json,
        {"ca_fingerprint": fp, "old_ca": rot["old_ca"], "trusted": done, "renewed": renewed},
        f"the cluster CA is now {fp} (was {rot['old_ca']}); the old CA is trusted nowhere.\n"
        "Give clients the new CA: moorage ca export --existing "
        f"{url} --ca-fingerprint {fp} --out ca.crt (docker: /etc/docker/certs.d/HOST:PORT/"
        "ca.crt, podman/skopeo: /etc/containers/certs.d/HOST:PORT/ca.crt); joins pin "
        f"--ca-fingerprint {fp}",
    )


COMMANDS = [certs]
