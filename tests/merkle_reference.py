"""RFC 6962 §2.1 written out literally: slow, recursive, for tests only.

MTH, PATH and SUBPROOF follow the RFC's definitions line by line and use hashlib
directly, so that they share no code with ledger.merkle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def _k(n: int) -> int:
    """The largest power of two strictly below n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over the entries d (not their leaf hashes)."""
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(n)
    return hashlib.sha256(b"\x01" + mth(d[:k]) + mth(d[k:])).digest()


def path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]): the audit path of entry m."""
    n = len(d)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*path(m, d[:k]), mth(d[k:])]
    return [*path(m - k, d[k:]), mth(d[:k])]


def proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]): the consistency proof from the first m entries to all of d."""
    return subproof(m, d, True)


def subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b)."""
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = _k(n)
    if m <= k:
        return [*subproof(m, d[:k], b), mth(d[k:])]
    return [*subproof(m - k, d[k:], False), mth(d[:k])]


def node(d: Sequence[bytes], level: int, index: int) -> bytes:
    """The hash of the perfect subtree (level, index) over the entries d."""
    return mth(d[index << level:(index + 1) << level])
