"""The audit log as a transparency log: writers never serialise, the sequencer orders what committed, and
a client that kept a signed head catches any rewrite of the events it covers, even by an attacker who
rewrites the database consistently (chain, leaves and tree recomputed) but has no signing key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.core import audit, proofs, transparency
from service.core.db.engine import session_scope
from service.core.db.tables import AuditEvent, AuditNode
from service.core.settings import Settings
from service.core.signing import load_or_create_key, public_key_b64
from tests.factories import make_model

TENANT = "default"
KEY = Ed25519PrivateKey.generate()


def log_with_events(url: str, n: int) -> None:
    """A model registration (3 events) plus `n` more events."""
    with session_scope(url) as s:
        make_model(s, name="toy")
        for i in range(n):
            audit.record(
                s, tenant=TENANT, actor="test", action="test.event", entity_type="t", entity_id=str(i)
            )


def export(s: Session) -> list[dict[str, Any]]:
    return [audit.export_dict(ev) for ev in audit.iter_events(s, TENANT)]


def rewrite(s: Session, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
    """What an attacker with write access to the database does: change the events, then rebuild every
    position, chain link, leaf and tree node from scratch, so the log is consistent with itself."""
    events = change(export(s))
    s.execute(delete(AuditEvent).where(AuditEvent.tenant == TENANT))
    s.execute(delete(AuditNode).where(AuditNode.tenant == TENANT))
    for e in events:
        s.add(AuditEvent(**{k: e[k] for k in proofs.BODY_KEYS if k != "seq"}))
    s.flush()
    audit.sequence_all(s, TENANT)


def caught(url: str, kept: dict[str, Any]) -> bool:
    """A client's check against the head it kept: the server's new head must extend it (consistency
    proof), and the server's export must reproduce it."""
    old = kept["tree_head"]
    with session_scope(url) as s:
        new = transparency.sign_head(s, KEY, TENANT)["tree_head"]
        if new["tree_size"] < old["tree_size"]:
            return True
        proof = transparency.consistency_proof(s, TENANT, old["tree_size"], new["tree_size"])
        consistent = proofs.verify_consistency_proof(old, new, proof)
        reproduces, _ = proofs.verify_export(export(s), old)
    return not (consistent and reproduces)


def test_writing_an_event_reads_and_locks_nothing_and_the_sequencer_orders_it(db_url: str) -> None:
    log_with_events(db_url, 3)
    with session_scope(db_url) as s:
        assert s.scalars(select(AuditEvent.seq)).all() == [None] * 6  # written, not yet sequenced
        assert audit.sequence(s, TENANT) == 6 and audit.sequence(s, TENANT) == 0
    with session_scope(db_url) as s:
        seqs = s.scalars(select(AuditEvent.seq).order_by(AuditEvent.id)).all()
        report = audit.verify_chain(s, TENANT)
    assert seqs == [1, 2, 3, 4, 5, 6] and report["ok"] and report["events"] == 6


def test_a_head_is_signed_over_the_whole_tree_and_verifies_offline(db_url: str) -> None:
    log_with_events(db_url, 10)
    with session_scope(db_url) as s:
        head = transparency.sign_head(s, KEY, TENANT)
        events = export(s)
    assert head["tree_head"]["tree_size"] == 13
    assert proofs.verify_head(head, public_key_b64(KEY)) == (True, "signature valid")
    assert proofs.verify_head(head, public_key_b64(Ed25519PrivateKey.generate()))[0] is False
    assert proofs.verify_export(events, head["tree_head"])[0]
    forged = {**head, "tree_head": {**head["tree_head"], "tree_size": 12}}
    assert proofs.verify_head(forged)[0] is False


def test_every_event_has_an_inclusion_proof_in_a_later_head(db_url: str) -> None:
    log_with_events(db_url, 20)
    with session_scope(db_url) as s:
        head = transparency.sign_head(s, KEY, TENANT)["tree_head"]
        events = export(s)
        for ev in events:
            proof = transparency.inclusion_proof(s, TENANT, ev["seq"], head["tree_size"])
            assert proofs.verify_inclusion_proof(ev, proof, head), ev["seq"]
        proof = transparency.inclusion_proof(s, TENANT, 5, head["tree_size"])
    assert not proofs.verify_inclusion_proof({**events[4], "actor": "mallory"}, proof, head)
    assert not proofs.verify_inclusion_proof(events[5], proof, head)  # another event's proof


def test_later_heads_are_consistent_with_earlier_ones(db_url: str) -> None:
    log_with_events(db_url, 4)
    with session_scope(db_url) as s:
        first = transparency.sign_head(s, KEY, TENANT)
    for n in (1, 9):
        with session_scope(db_url) as s:
            for i in range(n):
                audit.record(
                    s, tenant=TENANT, actor="t", action="test.more", entity_type="t", entity_id=str(i)
                )
        assert not caught(db_url, first)


KEPT_SIZE = 15  # the head the client keeps covers the first 15 events (3 registration + 12)


def _delete_last(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last event the kept head covers (later ones, if any, stay)."""
    return events[: KEPT_SIZE - 1] + events[KEPT_SIZE:]


def _delete_middle(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return events[:5] + events[6:]


def _edit_one(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**e, "actor": "mallory"} if i == 7 else e for i, e in enumerate(events)]


def _swap_two(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    events[3], events[4] = events[4], events[3]
    return events


@pytest.mark.parametrize("tamper", [_delete_last, _delete_middle, _edit_one, _swap_two])
@pytest.mark.parametrize("later_events", [0, 5])
def test_a_rewritten_log_is_caught_against_a_head_kept_earlier(
    db_url: str, tamper: Callable[[list[dict[str, Any]]], list[dict[str, Any]]], later_events: int
) -> None:
    log_with_events(db_url, 12)
    with session_scope(db_url) as s:
        kept = transparency.sign_head(s, KEY, TENANT)
    assert kept["tree_head"]["tree_size"] == KEPT_SIZE
    with session_scope(db_url) as s:  # the log goes on (or not) after the client kept its head
        for i in range(later_events):
            audit.record(s, tenant=TENANT, actor="t", action="test.later", entity_type="t", entity_id=str(i))
        audit.sequence_all(s, TENANT)
    assert not caught(db_url, kept)  # control: the honest log passes
    with session_scope(db_url) as s:
        rewrite(s, tamper)
        assert audit.verify_chain(s, TENANT)["ok"]  # consistent with itself: only the kept head tells
    assert caught(db_url, kept)


def test_the_server_check_compares_the_log_with_its_latest_signed_head(db_url: str) -> None:
    log_with_events(db_url, 6)
    with session_scope(db_url) as s:
        head = transparency.sign_head(s, KEY, TENANT)
        assert audit.verify_chain(s, TENANT, head)["ok"]
        rewrite(s, _edit_one)
        report = audit.verify_chain(s, TENANT, head)
    assert report["ok"] is False and "signed head of size 9" in report["detail"]


def test_events_chained_before_the_upgrade_get_their_leaves_in_order(db_url: str) -> None:
    """A deployment upgraded from the plain hash chain: its events have positions and links but no
    leaves. The sequencer builds their leaves and tree first, then goes on with new events."""
    log_with_events(db_url, 6)
    with session_scope(db_url) as s:
        audit.sequence_all(s, TENANT)
        before = export(s)
        s.execute(delete(AuditNode).where(AuditNode.tenant == TENANT))  # as the old release left them
        for ev in s.scalars(select(AuditEvent)):
            ev.leaf_hash = None
    with session_scope(db_url) as s:
        audit.record(s, tenant=TENANT, actor="t", action="test.after_upgrade", entity_type="t", entity_id="x")
    with session_scope(db_url) as s:
        head = transparency.sign_head(s, KEY, TENANT)["tree_head"]
        after = export(s)
        assert audit.verify_chain(s, TENANT)["ok"]
    assert after[: len(before)] == before and len(after) == len(before) + 1
    assert proofs.verify_export(after, head)[0]


def _unsequenced(url: str) -> int:
    with session_scope(url) as s:
        return len(s.scalars(select(AuditEvent.id).where(AuditEvent.seq.is_(None))).all())


def test_sequencing_in_batches_stops_when_asked_and_keeps_the_batches_it_committed(db_url: str) -> None:
    """A worker asked to shut down ends between batches; what it sequenced stays sequenced, and the next
    run finishes the backlog and signs a head that verifies."""
    log_with_events(db_url, 22)  # 25 unsequenced events
    assert _unsequenced(db_url) == 25
    assert transparency.sequence_and_sign(db_url, KEY, TENANT, stop=lambda: True, batch=10) is None
    assert _unsequenced(db_url) == 25  # asked before the first batch: nothing done

    asked = iter([False, True])  # one batch, then the shutdown
    assert transparency.sequence_and_sign(db_url, KEY, TENANT, stop=lambda: next(asked), batch=10) is None
    assert _unsequenced(db_url) == 15  # the committed batch stays
    with session_scope(db_url) as s:
        assert transparency.latest_head(s, TENANT) is None

    head = transparency.sequence_and_sign(db_url, KEY, TENANT, batch=10)
    assert head is not None and head["tree_head"]["tree_size"] == 25
    assert _unsequenced(db_url) == 0
    with session_scope(db_url) as s:
        assert audit.verify_chain(s, TENANT, head)["ok"]


def test_a_worker_signs_heads_with_the_apis_key_only_and_never_makes_one(db_url: str, tmp_path: Path) -> None:
    """A worker that found the key file gone made a key of its own and signed heads with it; every
    certificate the API signed then failed against its published key (a probe). No head is signed with a
    key that did not sign the latest one, a new tenant's first included (a review: the log then stood
    under two keys, and no key verified it again)."""
    from workers.tasks import sign_heads

    settings = Settings(UNLEARN_VAR_DIR=str(tmp_path / "var"), DATABASE_URL=db_url)  # type: ignore[call-arg]
    log_with_events(db_url, 2)
    assert sign_heads(settings) == 0 and not settings.signing_key_path.exists()  # none made, none signed
    key = load_or_create_key(settings.signing_key_path)  # as the API does at its start
    assert sign_heads(settings) == 1
    with session_scope(db_url) as s:
        audit.record(s, tenant=TENANT, actor="test", action="test.event", entity_type="t", entity_id="x")
        audit.record(s, tenant="other", actor="test", action="test.event", entity_type="t", entity_id="y")
    settings.signing_key_path.unlink()
    swapped = load_or_create_key(settings.signing_key_path)  # another key behind the service's back
    assert sign_heads(settings) == 0  # neither: a new tenant's first head would put the log under two keys
    with session_scope(db_url) as s:
        kept, other = (transparency.latest_head(s, t) for t in (TENANT, "other"))
        with pytest.raises(transparency.SignerMismatch, match="does not verify with this server's key"):
            transparency.sign_head(s, swapped, "other")  # nor through any other path
    assert kept is not None and kept["signature"]["public_key"] == public_key_b64(key)
    assert other is None
    from cryptography.hazmat.primitives import serialization

    settings.signing_key_path.write_bytes(  # the key restored: both are signed
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    assert sign_heads(settings) == 2
