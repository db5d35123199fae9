"""Entries a node wrote, read back without checks: the same records as the strict
decoder builds, and the same state when replayed."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from factories import T0, grant
from hypothesis import HealthCheck, given, settings
from state_script import KEYS, Script, genesis_state, ops

from ledger.codec import pack
from ledger.entry import LogEntry
from ledger.errors import MalformedError, RejectedError
from ledger.events import StatusRoot
from ledger.signed import log_authored, sign_batch
from ledger.state_snapshot import snapshot_bytes
from ledger.trusted_decode import decode_trusted_entry


def _same(trusted: LogEntry, strict: LogEntry) -> None:
    assert trusted == strict
    assert trusted.signed.body == strict.signed.body
    assert type(trusted.signed.body) is type(strict.signed.body)
    assert trusted.encoded == strict.encoded
    assert trusted.leaf_hash == strict.leaf_hash
    assert trusted.signed.id == strict.signed.id
    assert trusted.signed.encoded == strict.signed.encoded


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=ops)
def test_every_kind_of_entry_comes_back_as_the_strict_decoder_builds_it(
        drawn: list[tuple[int, int, int, int]]) -> None:
    state, script = genesis_state(), Script()
    written = [r for op in drawn for r in script.run(op, state) if isinstance(r, bytes)]
    # Batch-signed grants carry the batch's path (refused if the script retired the key).
    t = script.clock + 1
    for signed in sign_batch([grant(subject=bytes([i]) * 32, consented_at=t)
                              for i in range(3)], KEYS[0]):
        with contextlib.suppress(RejectedError):
            written.append(state.admit(signed, t, signature_verified=False).encoded)
    root = log_authored(StatusRoot(size=state.size, map_root=state.map_root()))
    written.append(state.admit(root, t, signature_verified=False).encoded)

    replayed = genesis_state()
    for data in written:
        entry = decode_trusted_entry(data)
        _same(entry, LogEntry.decode(data))
        replayed.replay(entry, verify_signatures=False)
    assert snapshot_bytes(replayed) == snapshot_bytes(state)


def test_a_batch_signed_grant_keeps_its_path_and_notice() -> None:
    state = genesis_state()
    batch = sign_batch([grant(subject=bytes([i]) * 32, consented_at=T0) for i in range(5)], KEYS[0])
    data = state.admit(batch[3], T0, signature_verified=False).encoded
    entry = decode_trusted_entry(data)
    assert entry.signed.batch is not None and entry.signed.batch.index == 3
    assert type(entry.signed.batch.path) is tuple and len(entry.signed.batch.path) == 3
    assert entry.signed.body.notice == batch[3].body.notice  # type: ignore[attr-defined]
    assert entry.signed.message == batch[3].message


@pytest.mark.parametrize("data", [
    b"",
    b"\xc1",  # never used in msgpack
    pack([1, 2, 3]),
    pack({"index": 0, "time": 0, "prev": bytes(32), "signed": "not a map"}),
    pack({"index": 0, "time": 0, "prev": bytes(32), "signed": {"event": pack({"x": 1})}}),
    pack({"index": 0, "time": 0, "prev": bytes(32),
          "signed": {"event": pack({"kind": "no-such-kind"})}}),
    pack({"index": 0, "time": 0, "prev": bytes(32), "signed": {"event": b"\x93\x01"}}),
    msgpack.packb({"index": 0, "signed": {"event": pack({"kind": "grant", "notice": 7})}}),
])
def test_what_has_no_entry_shape_is_refused_as_malformed(data: bytes) -> None:
    with pytest.raises(MalformedError, match="not an entry this log wrote"):
        decode_trusted_entry(data)
