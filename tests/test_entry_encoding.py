"""A log entry's bytes are spliced from its envelope's; they must be exactly what the
generic canonical encoder makes, for every kind of envelope and every field size."""

import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import grant, revoke
from hypothesis import given, settings
from hypothesis import strategies as st

from client.wire import decode_body, encode_batch
from ledger.codec import pack
from ledger.commitment import token_hash
from ledger.entry import MAX_ENTRY_SIZE, LogEntry
from ledger.events import MAX_TIME_MS, StatusRoot
from ledger.signed import SignedEvent, log_authored, sign_batch, sign_event, token_revocation

KEY = Ed25519PrivateKey.generate()
TOKEN = os.urandom(32)


def _envelopes() -> list[SignedEvent]:
    granted = sign_event(grant(token_hash=token_hash(TOKEN)), KEY)
    return [
        granted,  # one signature
        *sign_batch([grant(subject=bytes([i]) * 32) for i in range(5)], KEY),  # a batch's
        sign_event(revoke(), KEY),
        token_revocation(revoke(grant=granted.id, by="subject"), TOKEN),  # a person's
        log_authored(StatusRoot(size=12, map_root=os.urandom(32))),  # the log's own
    ]


ENVELOPES = _envelopes()


@settings(max_examples=200, deadline=None)
@given(signed=st.sampled_from(ENVELOPES), index=st.integers(0, 2**63 - 1),
       time=st.integers(0, MAX_TIME_MS), prev=st.binary(min_size=32, max_size=32))
def test_spliced_bytes_are_the_canonical_encoding(signed: SignedEvent, index: int,
                                                  time: int, prev: bytes) -> None:
    entry = LogEntry(index=index, time=time, prev=prev, signed=signed)
    assert entry.encoded == pack(entry.to_wire()) == entry.encode()
    assert LogEntry.decode(entry.encoded) == entry


def test_envelopes_from_a_request_carry_their_own_bytes_into_the_entry() -> None:
    batch = sign_batch([grant(subject=bytes([i]) * 32) for i in range(3)], KEY)
    decoded = decode_body(encode_batch(batch))
    assert isinstance(decoded, list)
    for mine, theirs in zip(batch, decoded, strict=True):
        assert theirs.__dict__["encoded"] == mine.encode()  # given by the decoder
        entry = LogEntry(index=7, time=1, prev=bytes(32), signed=theirs)
        assert entry.encoded == entry.encode()
    one = decode_body(batch[0].encode())  # a body of one envelope: those bytes
    assert isinstance(one, SignedEvent) and one.__dict__["encoded"] == batch[0].encode()
    assert len(LogEntry(index=0, time=0, prev=bytes(32), signed=one).encoded) < MAX_ENTRY_SIZE
