"""Request bodies of POST /v1/events: JSON and msgpack round trips, and every strict refusal."""

from __future__ import annotations

import base64
import json
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import grant, revoke

from client.wire import (
    MAX_BATCH_ITEMS,
    decode_body,
    decode_json_body,
    encode_batch,
    from_json,
    to_json,
)
from ledger.codec import pack
from ledger.errors import (
    DecodeError,
    DuplicateKeyError,
    FieldTypeError,
    FieldValueError,
    MalformedError,
    MissingFieldError,
    NonCanonicalError,
    OversizeError,
    UnknownFieldError,
)
from ledger.signed import SignedEvent, sign_batch, sign_event, token_revocation

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def single() -> SignedEvent:
    return sign_event(grant(), KEY)


@pytest.fixture(scope="module")
def batch() -> list[SignedEvent]:
    return sign_batch([grant(retention_days=d) for d in range(1, 6)], KEY)


@pytest.fixture(scope="module")
def withdrawal() -> SignedEvent:
    return token_revocation(revoke(), b"t" * 32)


@pytest.fixture(scope="module")
def mixed(single: SignedEvent, batch: list[SignedEvent],
          withdrawal: SignedEvent) -> list[SignedEvent]:
    return [single, *batch, withdrawal]


def expect(exc: type[DecodeError], field: str | None, fn: Any, *args: Any, **kw: Any) -> None:
    with pytest.raises(exc) as info:
        fn(*args, **kw)
    assert info.value.field == field, str(info.value)


# ---------------------------------------------------------------- round trips


def test_json_round_trip_of_each_envelope_form(mixed: list[SignedEvent]) -> None:
    for signed in mixed:
        again = from_json(json.loads(json.dumps(to_json(signed))))
        assert again == signed
        assert again.encode() == signed.encode()


def test_json_leaves_absent_members_out(single: SignedEvent, withdrawal: SignedEvent) -> None:
    assert set(to_json(single)) == {"event", "signer", "sig"}
    assert set(to_json(withdrawal)) == {"event", "token"}


def test_json_batch_member_has_the_documented_shape(batch: list[SignedEvent]) -> None:
    obj = to_json(batch[3])
    assert obj["batch"]["size"] == 5 and obj["batch"]["index"] == 3
    assert all(len(base64.b64decode(h)) == 32 for h in obj["batch"]["path"])


def test_json_body_one_or_many(mixed: list[SignedEvent], single: SignedEvent) -> None:
    assert decode_json_body(json.dumps([to_json(s) for s in mixed]).encode()) == mixed
    assert decode_json_body(json.dumps(to_json(single)).encode()) == single


def test_msgpack_body_one_or_many(mixed: list[SignedEvent], single: SignedEvent) -> None:
    assert decode_body(encode_batch(mixed)) == mixed
    assert decode_body(single.encode()) == single


def test_msgpack_batch_is_an_array_of_canonical_envelopes(mixed: list[SignedEvent]) -> None:
    items = msgpack.unpackb(encode_batch(mixed))
    assert [pack(i) for i in items] == [s.encode() for s in mixed]


def test_encode_batch_refuses_empty_and_oversized(single: SignedEvent) -> None:
    with pytest.raises(ValueError):
        encode_batch([])
    with pytest.raises(ValueError):
        encode_batch([single] * (MAX_BATCH_ITEMS + 1))


# ---------------------------------------------------------------- JSON refusals


def _with(obj: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(obj))
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def test_json_refuses_unknown_and_missing_members(single: SignedEvent,
                                                  batch: list[SignedEvent]) -> None:
    obj = to_json(single)
    expect(UnknownFieldError, "extra", from_json, _with(obj, extra=1))
    expect(MissingFieldError, "event", from_json, _with(obj, event=None))
    expect(FieldValueError, "signer", from_json, _with(obj, signer=None))
    b = to_json(batch[0])
    expect(UnknownFieldError, "batch.root", from_json,
           _with(b, batch={**b["batch"], "root": b64(bytes(32))}))
    expect(MissingFieldError, "batch.path", from_json,
           _with(b, batch={"size": 5, "index": 0}))


@pytest.mark.parametrize("member, value, error", [
    ("event", 17, FieldTypeError),
    ("event", None, MissingFieldError),  # None removes the member
    ("signer", ["AAAA"], FieldTypeError),
    ("sig", b64(bytes(63)), FieldValueError),
    ("signer", b64(bytes(9)), FieldValueError),
    ("sig", "!!not base64!!", FieldValueError),
    ("signer", "AAAAAAAAAAA", FieldValueError),  # unpadded
    ("signer", "AAAAAAAAAAB=", NonCanonicalError),  # stray bits in the last character
    ("signer", "AAAA AAAAAA=", FieldValueError),
    ("signer", "ＡＡＡＡＡＡＡＡＡＡＡ=", FieldValueError),  # not ASCII
    ("event", "A" * 20_000, OversizeError),
])
def test_json_refuses_bad_member_values(single: SignedEvent, member: str, value: Any,
                                        error: type[DecodeError]) -> None:
    expect(error, member, from_json, _with(to_json(single), **{member: value}))


@pytest.mark.parametrize("change, field, error", [
    ({"size": "5"}, "batch.size", FieldTypeError),
    ({"size": True}, "batch.size", FieldTypeError),
    ({"index": 5.0}, "batch.index", FieldTypeError),
    ({"index": 5}, "batch.index", FieldValueError),  # not below size
    ({"path": "x"}, "batch.path", FieldTypeError),
    ({"path": [1]}, "batch.path[0]", FieldTypeError),
    ({"path": [b64(bytes(31))]}, "batch.path[0]", FieldValueError),
])
def test_json_refuses_bad_batch_paths(batch: list[SignedEvent], change: dict[str, Any],
                                      field: str, error: type[DecodeError]) -> None:
    b = to_json(batch[0])
    expect(error, field, from_json, _with(b, batch={**b["batch"], **change}))


def test_json_refuses_non_objects() -> None:
    expect(FieldTypeError, None, from_json, [])
    expect(FieldTypeError, "[4]", from_json, "x", path="[4]")
    expect(FieldTypeError, "batch", from_json, {"event": "", "batch": []})


def test_json_names_fields_inside_the_event(single: SignedEvent) -> None:
    wire = grant().to_wire()
    wire["purposes"] = ["marketing"]
    obj = _with(to_json(single), event=b64(pack(wire)))
    expect(FieldValueError, "event.purposes[0]", from_json, obj)
    expect(FieldValueError, "[2].event.purposes[0]", from_json, obj, path="[2]")
    expect(MalformedError, "event", from_json, _with(obj, event=b64(b"\xc1")))
    wide = _with(obj, event=b64(msgpack.packb({"kind": "nope"})))
    expect(FieldValueError, "event.kind", from_json, wide)


def test_json_refuses_token_with_signature(withdrawal: SignedEvent,
                                           single: SignedEvent) -> None:
    obj = {**to_json(withdrawal), "signer": to_json(single)["signer"]}
    expect(FieldValueError, "token", from_json, obj)
    expect(FieldValueError, "token", from_json, {**to_json(single), "token": b64(bytes(32))})


@pytest.mark.parametrize("body, error, field", [
    (b"{", MalformedError, None),
    (b"\xff", MalformedError, None),
    (b"[]", FieldValueError, None),
    (b'{"event": NaN}', MalformedError, None),
    (b'{"event": "", "event": ""}', DuplicateKeyError, "event"),
    (b"[" * 100_000, MalformedError, None),
])
def test_json_body_refusals(body: bytes, error: type[DecodeError], field: str | None) -> None:
    expect(error, field, decode_json_body, body)


def test_json_body_item_count(single: SignedEvent) -> None:
    body = json.dumps([to_json(single)] * 4).encode()
    expect(OversizeError, None, decode_json_body, body, max_items=3)
    bad = json.dumps([to_json(single), {"event": 1}]).encode()
    expect(FieldTypeError, "[1].event", decode_json_body, bad)


# ---------------------------------------------------------------- msgpack refusals


def test_msgpack_refuses_trailing_bytes_and_garbage(mixed: list[SignedEvent]) -> None:
    expect(MalformedError, None, decode_body, encode_batch(mixed) + b"\x00")
    expect(MalformedError, None, decode_body, b"\xc1")
    expect(FieldTypeError, None, decode_body, pack(7))
    expect(FieldTypeError, None, decode_body, pack("events"))


def test_msgpack_refuses_empty_bodies() -> None:
    expect(FieldValueError, None, decode_body, pack([]))
    expect(FieldValueError, None, decode_body, pack({}))


def test_msgpack_item_count(single: SignedEvent) -> None:
    expect(OversizeError, None, decode_body, encode_batch([single] * 4), max_items=3)
    body = pack([single.to_wire()] * (MAX_BATCH_ITEMS + 1))
    expect(OversizeError, None, decode_body, body)


def test_msgpack_names_the_item_and_field(mixed: list[SignedEvent]) -> None:
    wires = [s.to_wire() for s in mixed]
    expect(UnknownFieldError, "[1].extra", decode_body,
           pack([wires[0], {**wires[1], "extra": 1}]))
    expect(FieldTypeError, "[1]", decode_body, pack([wires[0], [1, 2]]))
    expect(MissingFieldError, "[0].event", decode_body,
           pack([{k: v for k, v in wires[0].items() if k != "event"}]))
    expect(FieldValueError, "[0].sig", decode_body, pack([{**wires[0], "sig": bytes(3)}]))
    bad_event = grant().to_wire()
    bad_event["purposes"] = ["marketing"]
    expect(FieldValueError, "[1].event.purposes[0]", decode_body,
           pack([wires[0], {**wires[0], "event": pack(bad_event)}]))
    expect(FieldValueError, "event.purposes[0]", decode_body,
           pack({**wires[0], "event": pack(bad_event)}))
    expect(FieldValueError, "[2].batch.index", decode_body,
           pack([wires[0], wires[1], {**wires[2], "batch": {**wires[2]["batch"], "index": 9}}]))


def test_msgpack_refuses_keys_out_of_order(single: SignedEvent) -> None:
    wire = single.to_wire()
    backwards = dict(reversed(list(wire.items())))
    expect(NonCanonicalError, "[0].signer", decode_body, pack([backwards]))


def test_msgpack_refuses_wide_encodings(mixed: list[SignedEvent]) -> None:
    canonical = encode_batch(mixed)
    # The same array with an array16 header instead of a fixarray one.
    wide_header = b"\xdc" + len(mixed).to_bytes(2, "big") + canonical[1:]
    expect(NonCanonicalError, None, decode_body, wide_header)
    # batch.size as a uint16 instead of a positive fixint, inside item 1.
    item = mixed[1].encode()
    wide_item = item.replace(b"\xa4size\x05", b"\xa4size\xcd\x00\x05", 1)
    assert wide_item != item
    body = canonical.replace(item, wide_item, 1)
    expect(NonCanonicalError, "[1]", decode_body, body)
    expect(NonCanonicalError, None, decode_body, wide_item)
