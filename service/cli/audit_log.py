"""The audit log verbs that check evidence against the transparency log: keep a signed tree head
(`unlearn audit head -o head.json`), and later prove that the server's log still extends it
(`unlearn audit verify --head head.json`). The checks run here, on the client, with `service.core.proofs`:
the server is not trusted to say its own log is intact.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.cli.errors import UsageError, text_lines
from service.cli.render import say

if TYPE_CHECKING:
    from service.cli.client import Client


def trusted_key(path: str | None) -> str | None:
    """The service's public key (raw, base64) from a PEM file, or None when none was given."""
    if not path:
        return None
    from service.core.signing import public_key_b64_from_pem

    try:
        return public_key_b64_from_pem(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not an Ed25519 public key in PEM: {exc}") from None


def cmd_audit_head(client: Client, args: argparse.Namespace) -> int:
    head = client.get("/v1/audit/head", fresh="true")
    text = json.dumps(head, indent=2) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    try:
        Path(args.output).write_text(text)
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    th = head["tree_head"]
    say(f"wrote the signed head of {th['tree_size']} event(s), root {th['root_hash']}, to {args.output}")
    return 0


def _kept_head(path: str) -> dict[str, Any]:
    try:
        head = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from None
    if not isinstance(head, dict) or "tree_head" not in head:
        raise UsageError(f"{path} is not a signed tree head (save one with `unlearn audit head -o FILE`)")
    return head


def against_kept_head(client: Client, kept: dict[str, Any], trusted: str | None) -> tuple[bool, str]:
    """Does the server's log still extend the head the client kept? Signatures, consistency, export.
    A head of another tenant than the key's is a UsageError: it says nothing about this log."""
    from service.core import proofs

    ok, why = proofs.verify_head(kept, trusted)
    if not ok:
        return False, f"the kept head: {why}"
    current = client.get("/v1/audit/head", fresh="true")
    ok, why = proofs.verify_head(current, trusted or kept["signature"]["public_key"])
    if not ok:
        return False, f"the server's head: {why}"
    old, new = kept["tree_head"], current["tree_head"]
    if old.get("tenant") and new.get("tenant") and old["tenant"] != new["tenant"]:
        # Each tenant's log is a tree of its own: comparing them would call an intact log tampered.
        raise UsageError(
            f"the kept head belongs to tenant {old['tenant']!r}, while this key's log is tenant "
            f"{new['tenant']!r}: verify it with a key of tenant {old['tenant']!r}"
        )
    if new["tree_size"] < old["tree_size"]:
        return False, f"the log shrank from {old['tree_size']} to {new['tree_size']} events"
    if old["tree_size"]:
        proof = client.get("/v1/audit/proof/consistency", first=old["tree_size"], second=new["tree_size"])
        if not proofs.verify_consistency_proof(old, new, proof):
            changed = "events it covers were changed, removed or reordered"
            return False, f"the log of {new['tree_size']} events does not extend the kept head: {changed}"
    buf = io.BytesIO()
    client.audit_export("jsonl", buf)
    events = [json.loads(line) for line in text_lines(buf.getvalue().decode()) if line.strip()]
    for head, name in ((old, "kept"), (new, "current")):
        ok, why = proofs.verify_export(events, head)
        if not ok:
            return False, f"export vs the {name} head: {why}"
    return True, (
        f"the log of {new['tree_size']} event(s) (root {new['root_hash'][:16]}...) extends the kept head "
        f"of {old['tree_size']} (root {old['root_hash'][:16]}...)"
    )


def cmd_audit_verify(client: Client, args: argparse.Namespace) -> int:
    # the local files first: one that is not there had followed the server's "audit chain OK"
    kept = _kept_head(args.head) if args.head else None
    trusted = trusted_key(args.public_key) if args.head else None
    result = client.audit_verify()
    if not result["ok"]:
        where = f" at event seq {result['first_broken_seq']}" if result.get("first_broken_seq") else ""
        say(f"audit log BROKEN{where}: {result.get('detail', '')}".rstrip(": "), file=sys.stderr)
        return 1
    say(f"audit chain OK: {result['events']} event(s), head {result['head']}")
    if kept is not None:
        ok, why = against_kept_head(client, kept, trusted)
        say(f"audit log {'OK' if ok else 'TAMPERED'}: {why}", file=sys.stdout if ok else sys.stderr)
        if ok and trusted is None:  # as verify-certificate says it (a probe read exit 0 as verified)
            say(
                "kept head NOT VERIFIED: only against the key embedded in it, which anyone can make; pass "
                "--public-key with the service's PEM (`unlearn public-key -o key.pem`)",
                file=sys.stderr,
            )
            return 1
        return 0 if ok else 1
    return 0


def cmd_audit_verify_export(args: argparse.Namespace) -> int:
    """Offline: an exported JSONL file against a kept signed head, with the service's public key. What a
    compliance team holding only the files can check: the head was signed by the service, and the
    export's first `tree_size` events hash to its root (an event edited, dropped, added or reordered
    among them changes the root). No server, no key."""
    from service.core import proofs

    kept = _kept_head(args.head)
    ok, why = proofs.verify_head(kept, trusted_key(args.public_key))
    if not ok:
        say(f"audit export NOT VERIFIED: the kept head: {why}", file=sys.stderr)
        return 1
    events = _exported_events(args.file)
    tenant = kept["tree_head"].get("tenant")
    tenants = sorted({str(e.get("tenant")) for e in events})
    if tenant and events and tenant not in tenants:  # another tenant's log: a tree of its own
        raise UsageError(f"the head belongs to tenant {tenant}; the export holds only tenant(s) {tenants}")
    seqs = [e.get("seq") for e in events[: int(kept["tree_head"]["tree_size"])]]
    if seqs != list(range(1, len(seqs) + 1)):
        say(
            "audit export TAMPERED or partial: its events are not seq 1, 2, 3, ... in order (events removed "
            "or reordered, or an export filtered by --since, --until or --model: export the whole log)",
            file=sys.stderr,
        )
        return 1
    ok, why = proofs.verify_links(events)  # a forged link or an invented field, which the root misses
    if ok:
        ok, why = proofs.verify_export(events, kept["tree_head"])
    newer = len(events) - int(kept["tree_head"]["tree_size"])
    if ok and newer > 0:
        why += f"; the {newer} later event(s) are not covered by this head"
    say(f"audit export {'OK' if ok else 'TAMPERED'}: {why}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _exported_events(path: str) -> list[dict[str, Any]]:
    if path.endswith(".csv"):
        raise UsageError(
            f"{path}: verify a JSONL export (`unlearn audit export --format jsonl`): a CSV's cells flatten "
            "the event bodies its hashes cover"
        )
    try:
        # exports are UTF-8, whatever the locale; an editor's byte-order mark was refused (a probe)
        lines = text_lines(Path(path).read_bytes().decode("utf-8-sig"))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not a UTF-8 JSONL export ({exc.reason} at byte {exc.start})") from None
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except ValueError as exc:
            raise UsageError(f"{path} is not a JSONL audit export: line {number}: {exc}") from None
    if not all(isinstance(e, dict) for e in events):
        raise UsageError(f"{path} is not a JSONL audit export: each line must be one event object")
    return events


def certificate_evidence(signed: dict[str, Any], trusted: str | None) -> tuple[bool, str]:
    """The certificate's completion event is in the log: its inclusion proof against its signed head."""
    from service.core import proofs

    cert = signed["certificate"]
    evidence = cert.get("audit") or {}
    if "inclusion_proof" not in evidence:
        return False, "the certificate carries no inclusion proof (issued before the log was a Merkle tree)"
    event, head = evidence["event"], evidence["tree_head"]
    ok, why = proofs.verify_head(head, trusted or signed["signature"]["public_key"])
    if not ok:
        return False, why
    if event.get("action") != "deletion_request.completed" or event.get("entity_id") != cert.get(
        "request_id"
    ):
        return False, "the proved event is not this request's completion"
    if not proofs.verify_inclusion_proof(event, evidence["inclusion_proof"], head["tree_head"]):
        return False, "the inclusion proof does not lead to the signed head's root"
    bound, why = proofs.verify_certificate_binding(cert, event)
    if not bound:
        return False, why
    if "version_event" in evidence:
        bound, version_why = proofs.verify_version_binding(
            cert, evidence["version_event"], head["tree_head"], event
        )
        if not bound:
            return False, version_why
        why += f"; {version_why}"
    elif cert.get("type") == proofs.CERTIFICATE_V3:  # earlier types bind their version by the signature only
        return False, "the certificate carries no event recording its version, which its type requires"
    return True, (
        f"event {event['seq']} is in the signed head of {head['tree_head']['tree_size']} event(s); {why}"
    )
