"""The Merkle tree against RFC 9162's recursive definitions, written out naively here: roots, inclusion
and consistency proofs for every size up to 70, and that a changed, missing or reordered leaf fails."""

from __future__ import annotations

import hashlib

import pytest

from service.core import merkle


def mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 2.1.1, verbatim (leaves are already leaf hashes)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = merkle.split_point(len(leaves))
    return merkle.node_hash(mth(leaves[:k]), mth(leaves[k:]))


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 9162 2.1.3.1 PATH(m, D[n])."""
    if len(leaves) == 1:
        return []
    k = merkle.split_point(len(leaves))
    if m < k:
        return [*path(m, leaves[:k]), mth(leaves[k:])]
    return [*path(m - k, leaves[k:]), mth(leaves[:k])]


def subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    """RFC 9162 2.1.4.1 SUBPROOF(m, D[n], b)."""
    if m == len(leaves):
        return [] if complete else [mth(leaves)]
    k = merkle.split_point(len(leaves))
    if m <= k:
        return [*subproof(m, leaves[:k], complete), mth(leaves[k:])]
    return [*subproof(m - k, leaves[k:], False), mth(leaves[:k])]


LEAVES = [merkle.leaf_hash(f"event {i}".encode()) for i in range(70)]


def by_ranges(ranges: list[tuple[int, int]], leaves: list[bytes]) -> list[bytes]:
    return [mth(leaves[lo:hi]) for lo, hi in ranges]


@pytest.mark.parametrize("n", range(0, 71))
def test_root_of_matches_the_rfc_definition(n: int) -> None:
    assert merkle.root_of(LEAVES[:n]) == mth(LEAVES[:n])


def test_subtree_from_perfect_parts_matches_the_rfc_definition() -> None:
    for lo, hi in [(0, 70), (64, 70), (32, 63), (0, 1), (48, 53)]:
        parts = {(a, b): mth(LEAVES[a:b]) for a, b in merkle.perfect_parts(lo, hi)}
        assert all(merkle.is_perfect(a, b) for a, b in parts)
        assert merkle.subtree_from(parts)(lo, hi) == mth(LEAVES[lo:hi])


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 31, 64, 70])
def test_inclusion_proofs_are_the_rfc_paths_and_verify(n: int) -> None:
    leaves, root = LEAVES[:n], mth(LEAVES[:n])
    for m in range(n):
        proof = by_ranges(merkle.inclusion_ranges(m, n), leaves)
        assert proof == path(m, leaves)
        assert merkle.verify_inclusion(m, n, leaves[m], proof, root)
        assert not merkle.verify_inclusion(m, n, merkle.leaf_hash(b"forged"), proof, root)
        if n > 1:  # a real leaf at the wrong position
            assert not merkle.verify_inclusion(m, n, leaves[(m + 1) % n], proof, root)


@pytest.mark.parametrize("n", [2, 3, 5, 8, 9, 16, 33, 70])
def test_consistency_proofs_are_the_rfc_subproofs_and_verify(n: int) -> None:
    for m in range(1, n + 1):
        proof = by_ranges(merkle.consistency_ranges(m, n), LEAVES[:n])
        assert proof == subproof(m, LEAVES[:n], True)
        assert merkle.verify_consistency(m, n, mth(LEAVES[:m]), mth(LEAVES[:n]), proof)


def test_a_rewritten_history_is_not_consistent_with_an_earlier_head() -> None:
    head_size, head_root = 20, mth(LEAVES[:20])
    rewritten = list(LEAVES[:40])
    rewritten[7] = merkle.leaf_hash(b"edited event 7")  # then every later node recomputed
    proof = by_ranges(merkle.consistency_ranges(head_size, 40), rewritten)
    assert not merkle.verify_consistency(head_size, 40, head_root, mth(rewritten), proof)
    swapped = list(LEAVES[:40])
    swapped[3], swapped[4] = swapped[4], swapped[3]
    proof = by_ranges(merkle.consistency_ranges(head_size, 40), swapped)
    assert not merkle.verify_consistency(head_size, 40, head_root, mth(swapped), proof)
    shorter = LEAVES[:19]  # the last event of the head deleted: the tree shrank
    with pytest.raises(ValueError):
        merkle.consistency_ranges(head_size, len(shorter))


def test_proofs_refuse_sizes_that_do_not_exist() -> None:
    with pytest.raises(ValueError):
        merkle.inclusion_ranges(5, 5)
    assert not merkle.verify_inclusion(5, 5, LEAVES[0], [], mth(LEAVES[:5]))
    assert not merkle.verify_consistency(6, 5, mth(LEAVES[:6]), mth(LEAVES[:5]), [LEAVES[0]])
