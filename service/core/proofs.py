"""Checking the audit log's evidence offline, as a client does: a signed tree head, an event's inclusion
in it, one head's consistency with an earlier one, an export against a head. Only hashes, Ed25519 and
JSON: no database, no server, so `unlearn verify-certificate` and `unlearn audit verify` stay light.
"""

from __future__ import annotations

import hashlib
from typing import Any

from service.core import merkle
from service.core.canonical import canonical_json
from service.core.signing import verify_signed

# The fields of an event that its chain hash and its Merkle leaf cover.
BODY_KEYS = ("tenant", "seq", "ts", "actor", "action", "entity_type", "entity_id", "model_id", "data")


GENESIS = "0" * 64  # the chain link before a tenant's first event
LINK_KEYS = ("prev_hash", "hash", "leaf_hash")  # what an exported event carries beside its body


def chain_hash(prev_hash: str, body: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical_json(body)).encode()).hexdigest()


def leaf_of(body: dict[str, Any]) -> bytes:
    """The Merkle leaf hash of an event body."""
    return merkle.leaf_hash(canonical_json(body).encode())


def verify_head(signed: dict[str, Any], trusted_public_key_b64: str | None = None) -> tuple[bool, str]:
    """The head's Ed25519 signature (and, with a trusted key, who made it)."""
    return verify_signed(signed, "tree_head", trusted_public_key_b64, noun="tree head")


def verify_inclusion_proof(event: dict[str, Any], proof: dict[str, Any], head: dict[str, Any]) -> bool:
    """`event` (as exported) is leaf `seq - 1` of the tree that `head` (the unsigned part) describes."""
    body = {k: event.get(k) for k in BODY_KEYS}
    try:
        return proof["tree_size"] == head["tree_size"] and merkle.verify_inclusion(
            int(event["seq"]) - 1,
            int(head["tree_size"]),
            leaf_of(body),
            [bytes.fromhex(h) for h in proof["audit_path"]],
            bytes.fromhex(head["root_hash"]),
        )
    except (KeyError, TypeError, ValueError):
        return False


# What a certificate states that its proved completion event records too (events written since requests
# could name subjects carry both digests; older events carry neither, and then there is nothing to match).
BOUND_DIGESTS = ("sample_ids_sha256", "subject_ids_sha256")


def verify_certificate_binding(certificate: dict[str, Any], event: dict[str, Any]) -> tuple[bool, str]:
    """The certificate's tenant, job, version and sample and subject digests are those its completion
    event put in the log. An event that records no digests (written before events carried them) binds
    only the job and the version: (True, why)."""
    data = event.get("data") or {}
    if not isinstance(data, dict):
        return False, "the proved event's data is not an object"
    after = certificate.get("version_after") or {}
    stated = {
        "tenant": (certificate.get("tenant"), event.get("tenant")),
        "job": (certificate.get("job_id"), data.get("job_id", certificate.get("job_id"))),
        "version": (after.get("version"), data.get("model_version", after.get("version"))),
    }
    for noun, (said, logged) in stated.items():
        if said != logged:
            return False, f"the certificate's {noun} ({said}) is not the one the audit log records ({logged})"
    bound = [k for k in BOUND_DIGESTS if k in data]
    if not bound:
        return True, "the event predates digest binding: the samples are bound by the signature only"
    for k in bound:
        if certificate.get(k) != data[k]:
            noun = "sample" if k.startswith("sample") else "subject"
            return False, f"the certificate's {noun} digest ({k}) differs from the one in the audit log"
    return True, "its sample and subject digests are those in the log"


# What a certificate states of the version it names, and where the event that recorded that version holds
# it: every version's checkpoint; the publication's method, params and metrics where the request's own job
# published it (a request whose samples earlier jobs forgot completes on a version another job made).
CERTIFICATE_V3 = "unlearning-deletion-certificate/v3"  # carries its version's event, which it must hold
VERSION_FIELDS = {
    "model.registered": ("checkpoint_sha256",),
    "model_version.published": ("checkpoint_sha256", "method", "params", "metrics"),
}


def verify_version_binding(
    certificate: dict[str, Any], evidence: dict[str, Any], head: dict[str, Any], completed: dict[str, Any]
) -> tuple[bool, str]:
    """The certificate's ``version_after`` (and, where its job published it, its method, params and
    metrics) is what the event that recorded that version put in the log: its publication, or the model's
    registration for v1, proved included in ``head`` (the unsigned part) beside the completion event
    ``completed``, and of the same model. Whether its job published it is read from the publication's
    ``job_id`` (events since this check), else from its ``parent`` being the certificate's version before:
    a review edited a job's base version to skip the method's check."""
    event, after = evidence.get("event") or {}, certificate.get("version_after") or {}
    data: dict[str, Any] = event["data"] if isinstance(event.get("data"), dict) else {}
    fields = VERSION_FIELDS.get(str(event.get("action")))
    if fields is None or data.get("version") != after.get("version"):
        return False, f"the proved version event does not record {after.get('version')}"
    if event.get("tenant") != certificate.get("tenant") or event.get("model_id") != completed.get("model_id"):
        return False, "the proved version event is another model's"
    if not verify_inclusion_proof(event, evidence.get("inclusion_proof") or {}, head):
        return False, "the version event's inclusion proof does not lead to the signed head's root"
    before = (certificate.get("version_before") or {}).get("version")
    if "job_id" in data:
        published = data["job_id"] == certificate.get("job_id")
    else:  # a publication from before events named their job
        published = before != after.get("version")
    if published and fields is VERSION_FIELDS["model_version.published"] and data.get("parent") != before:
        return False, f"the certificate's version before ({before}) is not the parent the log recorded"
    stated = {
        "checkpoint_sha256": after.get("checkpoint_sha256"),
        "method": certificate.get("method"),
        "params": certificate.get("params"),
        "metrics": certificate.get("metrics"),
    }
    for k in fields if published else fields[:1]:
        logged = data.get(k)
        said = stated[k]
        if k == "metrics" and isinstance(logged, dict) and isinstance(said, dict):
            logged = {m: logged.get(m) for m in said}  # the version's record keeps a few more
        if said != logged:
            return False, f"the certificate's {k} is not what the log recorded for {after.get('version')}"
    return True, f"{after.get('version')}'s checkpoint{', method and metrics' if published else ''} as logged"


def ids_sha256(ids: list[str]) -> str:
    """The digest certificates and events keep of a list of IDs (as `events.ids_digest`), for a client
    that holds the list: sha256 of the sorted IDs as a canonical JSON array."""
    return hashlib.sha256(canonical_json(sorted(ids)).encode()).hexdigest()


def verify_consistency_proof(old: dict[str, Any], new: dict[str, Any], proof: dict[str, Any]) -> bool:
    """The tree of head `new` extends the tree of head `old` (unsigned parts) without changing it."""
    try:
        return merkle.verify_consistency(
            int(old["tree_size"]),
            int(new["tree_size"]),
            bytes.fromhex(old["root_hash"]),
            bytes.fromhex(new["root_hash"]),
            [bytes.fromhex(h) for h in proof.get("consistency_path", [])],
        )
    except (KeyError, TypeError, ValueError):
        return False


def verify_links(events: list[dict[str, Any]]) -> tuple[bool, str]:
    """Every exported event carries exactly its body and its links, and each link is what its body and
    the event before give: the chain (`prev_hash`, `hash`) and the leaf (`leaf_hash`). The root alone
    covers the bodies: a forged hash or an invented field still reproduced it (a probe's finding)."""
    prev = GENESIS
    for i, ev in enumerate(events, start=1):
        extra = sorted(set(ev) - {*BODY_KEYS, *LINK_KEYS})
        if extra:
            return False, f"event {i} holds fields no event has: {extra}"
        body = {k: ev.get(k) for k in BODY_KEYS}
        if ev.get("prev_hash") != prev or ev.get("hash") != chain_hash(prev, body):
            return (
                False,
                f"event {i}'s chain link (prev_hash, hash) is not what its body and event {i - 1} give",
            )
        if ev.get("leaf_hash") != leaf_of(body).hex():
            return False, f"event {i}'s leaf_hash is not its body's"
        prev = ev["hash"]
    return True, f"the {len(events)} events' links hold"


def verify_export(events: list[dict[str, Any]], head: dict[str, Any]) -> tuple[bool, str]:
    """An export (in order) reproduces `head`: its first `tree_size` events hash to the head's root."""
    size = int(head["tree_size"])
    if len(events) < size:
        return False, f"the export holds {len(events)} events but the head covers {size}: events are missing"
    leaves = [leaf_of({k: ev.get(k) for k in BODY_KEYS}) for ev in events[:size]]
    if merkle.root_of(leaves).hex() != head["root_hash"]:
        return False, f"the first {size} exported events do not hash to the head's root: the log was changed"
    return True, f"the first {size} events reproduce the head's root"
