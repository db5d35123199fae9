"""Canonical encoding of events: round trips, and one rejection per kind of bad input."""

from __future__ import annotations

import hashlib
import unicodedata

import msgpack
import pytest
from factories import CONTROLLER, T0, grant, revoke
from hypothesis import given
from hypothesis import strategies as st

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
from ledger.events import (
    ControllerRegister,
    ControllerRetire,
    ControllerRotate,
    Genesis,
    Grant,
    Notice,
    decode_event,
)


def wire(event: object) -> dict:
    return msgpack.unpackb(event.encode())  # type: ignore[attr-defined]


def every_kind() -> list:
    key = bytes(range(32))
    return [
        Genesis(origin="log.example/consent", operator_key=key, created_at=T0,
                max_skew_ms=600_000),
        ControllerRegister(controller=CONTROLLER, name="Example Shop GmbH",
                           contact="privacy@shop.example", key=key, registered_at=T0,
                           policy_url="https://shop.example/privacy"),
        ControllerRotate(controller=CONTROLLER, old_key_id=bytes(8), key=key, rotated_at=T0),
        ControllerRetire(controller=CONTROLLER, key_id=bytes(8), retired_at=T0, reason="left"),
        grant(),
        grant(service="newsletter", recipients=("mailer.example",)),
        revoke(),
        revoke(grant=None, subject=bytes(32), purposes=("dpv:Marketing",), by="controller",
               reason="account closed"),
    ]


@pytest.mark.parametrize("event", every_kind(), ids=lambda e: e.KIND)
def test_every_kind_round_trips(event: object) -> None:
    data = event.encode()  # type: ignore[attr-defined]
    decoded = decode_event(data)
    assert decoded == event
    assert decoded.encode() == data
    assert type(event).decode(data) == event  # type: ignore[attr-defined]


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
terms = st.from_regex(r"[A-Z][a-z]{1,12}", fullmatch=True)


@st.composite
def grants(draw: st.DrawFn) -> Grant:
    own = draw(st.lists(names.filter(lambda n: n[0] != "-"), max_size=3, unique=True))
    purposes = sorted({f"dpv:{t}" for t in draw(st.lists(terms, max_size=4))}
                      | {f"{CONTROLLER}:{n}" for n in own}) or ["dpv:Marketing"]
    data = sorted({f"pd:{t}" for t in draw(st.lists(terms, min_size=1, max_size=5))})
    consented = draw(st.integers(0, 2**40))
    return grant(
        subject=draw(st.binary(min_size=32, max_size=32)),
        purposes=tuple(purposes),
        data_categories=tuple(data),
        notice=Notice(version=unicodedata.normalize("NFC", draw(st.text(
            st.characters(codec="utf-8", categories=("L", "N")), min_size=1, max_size=10)
        )), sha256=draw(st.binary(min_size=32, max_size=32))),
        consented_at=consented,
        valid_until=consented + draw(st.integers(1, 2**40)),
        retention_days=draw(st.integers(1, 36_600)),
        withdrawal=unicodedata.normalize("NFC", draw(st.text(
            st.characters(codec="utf-8", categories=("L", "N", "Zs")), min_size=1,
            max_size=40)).strip() or "x"),
    )


@given(grants())
def test_grant_round_trip_property(g: Grant) -> None:
    data = g.encode()
    assert decode_event(data) == g
    assert decode_event(data).encode() == data


@given(st.data())
def test_any_mutation_is_rejected_cleanly_or_still_canonical(data: st.DataObject) -> None:
    """encode(decode(b)) == b for every accepted b; anything else is a DecodeError."""
    original = bytearray(data.draw(st.sampled_from(every_kind())).encode())
    pos = data.draw(st.integers(0, len(original) - 1))
    original[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(original)))
    mutated = bytes(original[:cut]) if data.draw(st.booleans()) else bytes(original)
    try:
        event = decode_event(mutated)
    except DecodeError:
        return
    assert event.encode() == mutated


def test_keys_out_of_order() -> None:
    w = wire(grant())
    items = list(w.items())
    items[1], items[2] = items[2], items[1]
    with pytest.raises(NonCanonicalError) as err:
        decode_event(pack(dict(items)))
    assert err.value.field == "subject"  # found before controller, which schema puts first


def test_kind_must_come_first() -> None:
    w = wire(grant())
    kind = w.pop("kind")
    w["kind"] = kind
    with pytest.raises(MalformedError):
        decode_event(pack(w))


def test_integer_not_minimally_encoded() -> None:
    good = grant(retention_days=5).encode()
    # 0x05 is the positive fixint for 5; 0xcf 00..05 is the same number as uint64.
    marker = msgpack.packb("retention_days") + b"\x05"
    assert marker in good
    bad = good.replace(marker, msgpack.packb("retention_days") + b"\xcf" + (5).to_bytes(8, "big"))
    with pytest.raises(NonCanonicalError):
        decode_event(bad)


def test_string_not_minimally_encoded() -> None:
    good = grant().encode()
    short = msgpack.packb("DE")
    bad = good.replace(short, b"\xd9\x02DE")  # str8 where a fixstr fits
    with pytest.raises(NonCanonicalError):
        decode_event(bad)


def test_set_not_sorted() -> None:
    w = wire(grant())
    w["purposes"] = list(reversed(w["purposes"]))
    with pytest.raises(NonCanonicalError) as err:
        decode_event(pack(w))
    assert err.value.field == "purposes"


def test_set_with_duplicates() -> None:
    w = wire(grant())
    w["data_categories"] = ["pd:Name", "pd:Name"]
    with pytest.raises(NonCanonicalError):
        decode_event(pack(w))


def test_duplicate_key() -> None:
    good = revoke().encode()
    # Append a second "by" pair by hand and bump the fixmap header's count.
    header, rest = good[0], good[1:]
    assert 0x80 <= header <= 0x8E
    bad = bytes([header + 1]) + rest + msgpack.packb("by") + msgpack.packb("controller")
    with pytest.raises(DuplicateKeyError) as err:
        decode_event(bad)
    assert err.value.field == "by"


def test_unknown_field() -> None:
    w = wire(revoke())
    w["colour"] = "blue"
    with pytest.raises(UnknownFieldError) as err:
        decode_event(pack(w))
    assert err.value.field == "colour"


def test_missing_field() -> None:
    w = wire(grant())
    del w["jurisdiction"]
    with pytest.raises(MissingFieldError) as err:
        decode_event(pack(w))
    assert err.value.field == "jurisdiction"


def test_float_is_rejected() -> None:
    w = wire(grant())
    w["retention_days"] = 30.0
    with pytest.raises(FieldTypeError) as err:
        decode_event(pack(w))
    assert err.value.field == "retention_days"


def test_bool_is_not_an_integer() -> None:
    w = wire(grant())
    w["retention_days"] = True
    with pytest.raises(FieldTypeError):
        decode_event(pack(w))


def test_nil_for_optional_field_is_rejected() -> None:
    w = wire(grant())
    w["service"] = None
    with pytest.raises(FieldTypeError) as err:
        decode_event(pack(w))
    assert err.value.field == "service"


def test_extension_type_is_rejected() -> None:
    w = wire(grant())
    w["language"] = msgpack.ExtType(1, b"x")
    with pytest.raises(FieldTypeError):
        decode_event(pack(w))


def test_nested_error_names_the_path() -> None:
    w = wire(grant())
    w["notice"]["sha256"] = b"short"
    with pytest.raises(FieldValueError) as err:
        decode_event(pack(w))
    assert err.value.field == "notice.sha256"


def test_not_nfc() -> None:
    decomposed = unicodedata.normalize("NFD", "Zurückziehen")
    assert not unicodedata.is_normalized("NFC", decomposed)
    w = wire(grant())
    w["withdrawal"] = decomposed
    with pytest.raises(FieldValueError) as err:
        decode_event(pack(w))
    assert "NFC" in str(err.value)


def test_invalid_utf8() -> None:
    good = grant().encode()
    bad = good.replace(msgpack.packb("de"), b"\xa2\xff\xfe")
    with pytest.raises(FieldValueError):
        decode_event(bad)


def test_control_character() -> None:
    w = wire(grant())
    w["withdrawal"] = "call\nus"
    with pytest.raises(FieldValueError):
        decode_event(pack(w))


def test_oversized_field() -> None:
    with pytest.raises(OversizeError) as err:
        grant(withdrawal="x" * 513)
    assert err.value.field == "withdrawal"


def test_oversized_input() -> None:
    with pytest.raises(OversizeError):
        decode_event(b"\x80" * (9 * 1024))


def test_trailing_bytes() -> None:
    with pytest.raises(MalformedError):
        decode_event(grant().encode() + b"\x00")


def test_truncated() -> None:
    with pytest.raises(MalformedError):
        decode_event(grant().encode()[:-3])


def test_not_a_map() -> None:
    with pytest.raises(FieldTypeError):
        decode_event(msgpack.packb([1, 2, 3]))


def test_unknown_kind() -> None:
    with pytest.raises(FieldValueError) as err:
        decode_event(pack({"kind": "delete-everything"}))
    assert err.value.field == "kind"


def test_decode_as_wrong_class() -> None:
    with pytest.raises(FieldValueError):
        Grant.decode(revoke().encode())


def test_purpose_outside_dpv_and_own_namespace() -> None:
    with pytest.raises(FieldValueError) as err:
        grant(purposes=("other.example:tracking",))
    assert err.value.field == "purposes[0]"


def test_validity_must_follow_consent() -> None:
    with pytest.raises(FieldValueError):
        grant(valid_until=T0)


def test_revoke_names_exactly_one_target() -> None:
    with pytest.raises(FieldValueError):
        revoke(subject=bytes(32), purposes=("dpv:Marketing",))
    with pytest.raises(FieldValueError):
        revoke(grant=None)


def test_event_hash_is_sha256_of_bytes() -> None:
    g = grant()
    assert g.hash() == hashlib.sha256(g.encode()).digest()


def _decode_both(data: bytes) -> tuple[object, object]:
    """The compiled decoder's verdict and the generic one's, as (value or error type)."""
    from ledger.codec import decode_map, decoder_of, unpack
    from ledger.events import EVENT_KINDS

    def run(decode: object) -> object:
        try:
            value = unpack(data, max_size=1 << 16)
            if type(value) is not list or not value or type(value[0]) is not tuple \
                    or value[0][1] not in EVENT_KINDS:
                return "not an event"
            cls = EVENT_KINDS[value[0][1]]
            return decode(cls, value[1:], "")  # type: ignore[operator]
        except DecodeError as exc:
            return (type(exc), exc.field)

    return run(lambda c, v, p: decoder_of(c)(v, p)), run(decode_map)


@given(st.data())
def test_compiled_decoder_agrees_with_the_generic_one(data: st.DataObject) -> None:
    original = bytearray(data.draw(st.sampled_from(every_kind())).encode())
    for _ in range(data.draw(st.integers(0, 3))):
        pos = data.draw(st.integers(0, len(original) - 1))
        original[pos] = data.draw(st.integers(0, 255))
    fast, generic = _decode_both(bytes(original))
    assert fast == generic


def _slow_verdict(data: bytes) -> object:
    """What decoding from pairs says (the path that can name a duplicate key), with the
    canonical check done by re-encoding the record, as before the fast path existed."""
    from ledger.codec import decoder_of, unpack
    from ledger.events import EVENT_KINDS, MAX_EVENT_SIZE

    try:
        value = unpack(data, max_size=MAX_EVENT_SIZE)  # the bound decode_event applies
        if type(value) is not list or not value or type(value[0]) is not tuple \
                or value[0][0] != "kind" or type(value[0][1]) is not str \
                or value[0][1] not in EVENT_KINDS:
            return "not an event"
        event = decoder_of(EVENT_KINDS[value[0][1]])(value[1:], "")
        return event if event.encode() == data else NonCanonicalError
    except DecodeError as exc:
        return type(exc)


def _verdict(data: bytes) -> object:
    try:
        return decode_event(data)
    except DecodeError as exc:
        return type(exc)


@given(st.data())
def test_the_canonical_fast_path_decides_as_re_encoding_does(data: st.DataObject) -> None:
    """decode_event first re-packs the plain msgpack value (one C call) and decodes from
    dicts; only bytes that are not canonical take the pairs path. Both must agree."""
    original = bytearray(data.draw(st.sampled_from(every_kind())).encode())
    for _ in range(data.draw(st.integers(0, 3))):
        pos = data.draw(st.integers(0, len(original) - 1))
        original[pos] = data.draw(st.integers(0, 255))
    mutated = bytes(original)
    slow, fast = _slow_verdict(mutated), _verdict(mutated)
    if slow == "not an event":
        assert isinstance(fast, type) and issubclass(fast, DecodeError)
    else:
        assert fast == slow


def test_a_repeated_key_is_named_although_a_dict_would_hide_it() -> None:
    g = grant()
    pairs = list(msgpack.unpackb(g.encode(), object_pairs_hook=list))
    doubled = [*pairs[:2], pairs[1], *pairs[2:]]
    packer = msgpack.Packer(use_bin_type=True)
    data = packer.pack_map_header(len(doubled)) + b"".join(
        packer.pack(k) + packer.pack(v) for k, v in doubled)
    with pytest.raises(DuplicateKeyError):
        decode_event(data)
