"""Merkle trees as RFC 9162 (Certificate Transparency v2) defines them: tree hashes, inclusion proofs and
consistency proofs, and the verification of each. Pure functions over hashes; nothing here knows where
the leaves are stored, so a client can check a proof offline with only this module.

Hashes are raw 32-byte sha256 digests; `leaf_hash` and `node_hash` add the 0x00 / 0x01 prefixes that keep a
leaf from being passed off as an interior node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

Subtree = Callable[[int, int], bytes]  # (lo, hi) -> MTH(D[lo:hi])


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


EMPTY_ROOT = hashlib.sha256(b"").digest()


def split_point(n: int) -> int:
    """The largest power of two smaller than n (n > 1): where RFC 9162 splits a tree of n leaves."""
    return 1 << ((n - 1).bit_length() - 1)


def is_perfect(lo: int, hi: int) -> bool:
    """[lo, hi) is a complete subtree: its size is a power of two and it starts on a multiple of it."""
    size = hi - lo
    return size > 0 and size & (size - 1) == 0 and lo % size == 0


def perfect_parts(lo: int, hi: int) -> list[tuple[int, int]]:
    """The complete subtrees that RFC 9162's recursion reaches inside [lo, hi), left to right. Every range
    a proof asks for starts at a multiple of its split point, so this is a handful of stored nodes."""
    if is_perfect(lo, hi) or hi - lo == 1:
        return [(lo, hi)]
    k = split_point(hi - lo)
    return perfect_parts(lo, lo + k) + perfect_parts(lo + k, hi)


def subtree_from(parts: dict[tuple[int, int], bytes]) -> Subtree:
    """MTH(D[lo:hi]) computed from the hashes of its perfect parts (see `perfect_parts`)."""

    def subtree(lo: int, hi: int) -> bytes:
        if (lo, hi) in parts:
            return parts[(lo, hi)]
        k = split_point(hi - lo)
        return node_hash(subtree(lo, lo + k), subtree(lo + k, hi))

    return subtree


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes held in memory (a client recomputing a head from an export)."""
    if not leaves:
        return EMPTY_ROOT
    level = list(leaves)
    # Pairing left to right and carrying an odd last node up unchanged yields RFC 9162's tree.
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The subtrees whose hashes form the inclusion proof of leaf `index` in a tree of `size`, leaf first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    ranges, lo, hi = [], 0, size
    while hi - lo > 1:
        k = split_point(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
    return ranges[::-1]


def consistency_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """The subtrees whose hashes form RFC 9162's consistency proof between tree sizes `first` and
    `second`, in proof order."""
    if not 0 < first <= second:
        raise ValueError(f"no consistency proof from size {first} to {second}")
    ranges: list[tuple[int, int]] = []
    lo, hi, m, complete = 0, second, first, True
    while m != hi - lo:
        k = split_point(hi - lo)
        if m <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    if not complete:
        ranges.append((lo, hi))
    return ranges[::-1]


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 section 2.1.4.2 (a tree is trivially consistent with itself and with the empty tree)."""
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof
    if not 0 < first < second or not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:  # an exact power of two: the old root is itself a node of the new tree
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == first_root and sr == second_root and sn == 0
