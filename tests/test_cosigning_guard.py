"""CosignGuard: a member never cosigns two inconsistent checkpoints."""

import hashlib

import pytest

from ledger.raft.cosigning import CosignGuard, CosignRefused

ROOTS = [hashlib.sha256(b"%d" % i).digest() for i in range(10)]


def check(guard: CosignGuard, size: int, root: bytes, local_size: int = 9) -> None:
    guard.check(size, root, local_size=local_size, local_root_at=ROOTS.__getitem__)


def test_cosigns_its_own_prefix_and_records_it() -> None:
    guard = CosignGuard()
    check(guard, 3, ROOTS[3])
    check(guard, 3, ROOTS[3])  # the same checkpoint again is fine
    check(guard, 7, ROOTS[7])
    assert (guard.last_size, guard.last_root) == (7, ROOTS[7])


@pytest.mark.parametrize(("size", "root", "local_size", "reason"), [
    (8, ROOTS[8], 7, "beyond"),  # entries it does not hold
    (6, ROOTS[5], 9, "differs"),  # not its own root
    (4, ROOTS[4], 9, "below"),  # going back
    (5, b"\x01" * 32, 9, "another root"),  # same size, other root
])
def test_refuses_what_could_be_inconsistent(size: int, root: bytes, local_size: int,
                                            reason: str) -> None:
    guard = CosignGuard(5, ROOTS[5])
    with pytest.raises(CosignRefused, match=reason):
        check(guard, size, root, local_size)
    assert (guard.last_size, guard.last_root) == (5, ROOTS[5])  # nothing recorded


def test_restored_state_is_honoured() -> None:
    with pytest.raises(ValueError):
        CosignGuard(3, None)
    guard = CosignGuard(5, ROOTS[5])
    with pytest.raises(CosignRefused):
        check(guard, 2, ROOTS[2])


def test_a_log_agrees_if_it_holds_the_last_cosigned_head_or_does_not_reach_it() -> None:
    # What a member catching up from tiles checks before it takes the entries it fetched.
    other = [hashlib.sha256(b"other %d" % i).digest() for i in range(10)]
    assert CosignGuard().agrees_with(0, ROOTS.__getitem__)
    guard = CosignGuard(5, ROOTS[5])
    assert guard.agrees_with(9, ROOTS.__getitem__)
    assert guard.agrees_with(4, other.__getitem__)  # not that far yet
    assert not guard.agrees_with(9, other.__getitem__)  # another history at size 5
