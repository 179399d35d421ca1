"""The audit trail as a transparency log, in the manner of RFC 9162: signed tree heads over each tenant's
Merkle tree of events, inclusion proofs (this event is in that head) and consistency proofs (this head
extends that earlier one). A client that kept any head detects a deleted, reordered or rewritten event,
the last one included, without trusting the server: `service.core.proofs` checks heads and proofs
offline with only the service's public key.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core import audit, merkle
from service.core.canonical import canonical_json
from service.core.db.clock import utcnow
from service.core.db.engine import session_scope
from service.core.db.tables import AuditHead
from service.core.errors import ProblemError, Unprocessable
from service.core.signing import public_key_b64

HEAD_TYPE = "unlearning-audit-tree-head/v1"


def _root(session: Session, tenant: str, size: int) -> bytes:
    if size == 0:
        return merkle.EMPTY_ROOT
    parts = merkle.perfect_parts(0, size)
    return merkle.subtree_from(audit.nodes(session, tenant, parts))(0, size)


def stored_tree_problem(
    session: Session, tenant: str, size: int, root_hex: str, key: Ed25519PrivateKey, after_head: int = 0
) -> str | None:
    """What is wrong with what proofs and heads are built from, where the events themselves verify: the
    stored subtree hashes must give the root the events give, and every head must carry this key's
    signature. A probe zeroed a stored node and inserted a head signed "AAAA": the check said ok, and
    certificates issued then failed their proofs; a forged head under a later one went unseen (a review).
    ``after_head``: only heads of later rows are checked (those a caller checked already are not)."""
    try:
        stored = _root(session, tenant, size).hex()
    except (KeyError, ValueError) as exc:  # a node missing: the tree cannot be rebuilt
        return f"the stored Merkle tree cannot be rebuilt over {size} events ({exc})"
    if stored != root_hex:
        return f"the stored Merkle tree's root over {size} events is not the one the events give"
    from service.core.proofs import verify_head  # proofs imports nothing of the database

    trusted = public_key_b64(key)
    newer = select(AuditHead).where(AuditHead.tenant == tenant, AuditHead.id > after_head)
    for row in session.scalars(newer.order_by(AuditHead.id)):
        ok, why = verify_head(_signed(row), trusted)
        if not ok:
            return f"the signed tree head of {row.tree_size} events (row {row.id}) does not verify: {why}"
    return None


def latest_head_id(session: Session, tenant: str) -> int:
    return session.scalar(select(func.max(AuditHead.id)).where(AuditHead.tenant == tenant)) or 0


class SignerMismatch(ProblemError):
    """The key at hand did not sign the log's latest head: signing with it would put the log under two
    keys, and every certificate checked against the published key would fail."""

    status, title = 503, "Signing key mismatch"


def _check_signer(session: Session, key: Ed25519PrivateKey, tenant: str) -> None:
    """SignerMismatch unless ``key`` signed the tenant's latest head (or, for a tenant with none yet, the
    latest head of any tenant): a server that made a key of its own where the file had gone signed over
    the old heads (probes), whatever path it signed through."""
    from service.core.proofs import verify_head

    row = session.scalar(
        select(AuditHead).where(AuditHead.tenant == tenant).order_by(AuditHead.id.desc()).limit(1)
    ) or session.scalar(select(AuditHead).order_by(AuditHead.id.desc()).limit(1))
    if row is None:
        return
    ok, why = verify_head(_signed(row), public_key_b64(key))
    if not ok:
        raise SignerMismatch(
            f"no tree head signed: the log's latest head ({row.public_key[:12]}...) does not verify with "
            f"this server's key ({public_key_b64(key)[:12]}...): {why}; UNLEARN_SIGNING_KEY_FILE must hold "
            "the key that signed it"
        )


def _signed(row: AuditHead) -> dict[str, Any]:
    head = {
        "type": HEAD_TYPE,
        "tenant": row.tenant,
        "tree_size": row.tree_size,
        "root_hash": row.root_hash,
        "timestamp": row.ts,
    }
    return {"tree_head": head, "signature": {"algorithm": "Ed25519", "public_key": row.public_key,
                                             "value": row.signature}}  # fmt: skip


def sign_head(session: Session, key: Ed25519PrivateKey, tenant: str) -> dict[str, Any]:
    """Sequence what is committed, then sign and store a head over the whole tree. The caller commits.
    SignerMismatch where ``key`` did not sign the latest head."""
    _check_signer(session, key, tenant)
    audit.sequence_all(session, tenant)
    size = audit.tree_size(session, tenant)
    ts = utcnow().isoformat(timespec="microseconds")
    head = {"type": HEAD_TYPE, "tenant": tenant, "tree_size": size,
            "root_hash": _root(session, tenant, size).hex(), "timestamp": ts}  # fmt: skip
    row = AuditHead(
        tenant=tenant,
        tree_size=size,
        root_hash=head["root_hash"],
        ts=ts,
        signature=base64.b64encode(key.sign(canonical_json(head).encode())).decode(),
        public_key=public_key_b64(key),
    )
    session.add(row)
    return _signed(row)


def sequence_and_sign(
    url: str,
    key: Ed25519PrivateKey,
    tenant: str,
    stop: Callable[[], bool] = lambda: False,
    batch: int = audit.SEQUENCE_BATCH,
) -> dict[str, Any] | None:
    """Sequence the tenant's backlog one committed batch at a time, then sign a head over it. ``stop`` is
    asked between batches; when it says so, return None without a head, keeping the batches committed
    (the next run goes on). After a burst the backlog takes minutes to sequence, and a worker asked to
    shut down waited for all of it in one transaction, which a kill then threw away."""
    with session_scope(url) as s:
        _check_signer(s, key, tenant)  # before any is sequenced: they wait for a head the right key signs
    while True:
        if stop():
            return None
        with session_scope(url) as s:
            if not audit.sequence(s, tenant, batch):
                break
    with session_scope(url) as s:
        return sign_head(s, key, tenant)


def latest_head(session: Session, tenant: str) -> dict[str, Any] | None:
    row = session.scalar(
        select(AuditHead).where(AuditHead.tenant == tenant).order_by(AuditHead.id.desc()).limit(1)
    )
    return None if row is None else _signed(row)


def _hashes(session: Session, tenant: str, ranges: list[tuple[int, int]]) -> list[str]:
    """MTH of each range, from the stored complete subtrees inside them."""
    parts = [part for r in ranges for part in merkle.perfect_parts(*r)]
    subtree = merkle.subtree_from(audit.nodes(session, tenant, parts))
    return [subtree(*r).hex() for r in ranges]


def inclusion_proof(session: Session, tenant: str, seq: int, tree_size: int) -> dict[str, Any]:
    """Event `seq` (1-based) is leaf `seq - 1` of the tree of `tree_size` events."""
    size = audit.tree_size(session, tenant)
    if not 1 <= seq <= tree_size <= size:
        raise Unprocessable(
            f"need 1 <= seq <= tree_size <= {size} (sequenced events); got {seq}, {tree_size}"
        )
    leaf, *path = _hashes(session, tenant, [(seq - 1, seq), *merkle.inclusion_ranges(seq - 1, tree_size)])
    return {"seq": seq, "leaf_index": seq - 1, "tree_size": tree_size, "leaf_hash": leaf, "audit_path": path}


def consistency_proof(session: Session, tenant: str, first: int, second: int) -> dict[str, Any]:
    size = audit.tree_size(session, tenant)
    if not 0 < first <= second <= size:
        raise Unprocessable(f"need 0 < first <= second <= {size} (sequenced events); got {first}, {second}")
    path = _hashes(session, tenant, merkle.consistency_ranges(first, second))
    return {"first": first, "second": second, "consistency_path": path}
