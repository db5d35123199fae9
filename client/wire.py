"""Request bodies of POST /v1/events, both ways: JSON with base64 fields, and msgpack.

Both decoders are strict and name the field at fault (`[3].event.purposes[0]`), so the
node can turn any error into a problem document that says what to fix. Everything here
is I/O free: the node decodes requests with it, the client encodes them.

JSON form of one envelope (docs/api.md); optional members are absent, never null:

    {"event": "<b64>", "signer": "<b64>", "sig": "<b64>",
     "batch": {"size": 100, "index": 7, "path": ["<b64>", ...]}, "token": "<b64>"}
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any

import msgpack

from ledger.codec import decoder_of, pack, unpack, unpack_canonical
from ledger.commitment import TOKEN_SIZE
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
from ledger.events import HASH_SIZE, KEY_ID_SIZE, MAX_EVENT_SIZE
from ledger.signed import SIGNATURE_SIZE, BatchPath, SignedEvent

MAX_BATCH_ITEMS = 1000  # envelopes in one request body
_ENVELOPE_FIELDS = ("event", "signer", "sig", "batch", "token")
_BATCH_FIELDS = ("size", "index", "path")
_ARRAY_HEADER = 5  # the largest msgpack array header (array32)


# ---------------------------------------------------------------- JSON


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def to_json(signed: SignedEvent) -> dict[str, Any]:
    """The JSON object for one envelope, ready for json.dumps."""
    out: dict[str, Any] = {"event": _b64(signed.event)}
    if signed.signer is not None:
        out["signer"] = _b64(signed.signer)
    if signed.sig is not None:
        out["sig"] = _b64(signed.sig)
    if signed.batch is not None:
        b = signed.batch
        out["batch"] = {"size": b.size, "index": b.index, "path": [_b64(h) for h in b.path]}
    if signed.token is not None:
        out["token"] = _b64(signed.token)
    return out


def from_json(obj: Any, *, path: str = "") -> SignedEvent:
    """Decode one envelope from parsed JSON; `path` prefixes field names in errors."""
    fields = _object(obj, _ENVELOPE_FIELDS, path)
    if "event" not in fields:
        raise MissingFieldError("is required", field=_join(path, "event"))
    kwargs: dict[str, Any] = {
        "event": _unb64(fields["event"], _join(path, "event"), max_len=MAX_EVENT_SIZE)}
    for name, size in (("signer", KEY_ID_SIZE), ("sig", SIGNATURE_SIZE), ("token", TOKEN_SIZE)):
        if name in fields:
            kwargs[name] = _unb64(fields[name], _join(path, name), size=size)
    if "batch" in fields:
        kwargs["batch"] = _batch_from_json(fields["batch"], _join(path, "batch"))
    try:
        return SignedEvent(**kwargs)
    except DecodeError as exc:
        raise _attributed(exc, path) from None


def _batch_from_json(obj: Any, path: str) -> BatchPath:
    fields = _object(obj, _BATCH_FIELDS, path)
    for name in _BATCH_FIELDS:
        if name not in fields:
            raise MissingFieldError("is required", field=_join(path, name))
    for name in ("size", "index"):
        if type(fields[name]) is not int:
            raise FieldTypeError("expected an integer", field=_join(path, name))
    hashes = fields["path"]
    if type(hashes) is not list:
        raise FieldTypeError("expected an array", field=_join(path, "path"))
    if len(hashes) > 64:  # BatchPath allows 16; this only bounds the work before it says so
        raise OversizeError("too many hashes", field=_join(path, "path"))
    decoded = tuple(_unb64(h, f"{path}.path[{i}]", size=HASH_SIZE) for i, h in enumerate(hashes))
    try:
        return BatchPath(size=fields["size"], index=fields["index"], path=decoded)
    except DecodeError as exc:
        raise type(exc)(exc.reason, field=_join(path, exc.field or "")) from None


def _object(obj: Any, known: Sequence[str], path: str) -> dict[str, Any]:
    if type(obj) is not dict:
        raise FieldTypeError(f"expected an object, got {_json_kind(obj)}", field=path or None)
    for key in obj:
        if key not in known:
            raise UnknownFieldError("unknown field", field=_join(path, str(key)))
    return obj


def _unb64(value: Any, field: str, *, size: int | None = None, max_len: int = 64) -> bytes:
    if type(value) is not str:
        raise FieldTypeError(f"expected a base64 string, got {_json_kind(value)}", field=field)
    limit = size if size is not None else max_len
    if len(value) > 4 * (-(-limit // 3)):  # refuse before decoding: bounds memory and time
        raise OversizeError(f"longer than {limit} bytes", field=field)
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise FieldValueError("not valid standard base64", field=field) from None
    if _b64(raw) != value:
        # Stray bits in the last character or missing padding: two spellings of one value.
        raise NonCanonicalError("not canonical (padded, zero trailing bits) base64",
                                field=field)
    if size is not None and len(raw) != size:
        raise FieldValueError(f"expected {size} bytes, got {len(raw)}", field=field)
    return raw


def _json_kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _reject_constant(name: str) -> Any:
    raise MalformedError(f"{name} is not JSON")


def _pairs_unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # json.loads would keep the last silently; a signed request must mean one thing.
            raise DuplicateKeyError("duplicate key", field=key)
        out[key] = value
    return out


def decode_json_body(body: bytes, *, max_items: int = MAX_BATCH_ITEMS
                     ) -> list[SignedEvent] | SignedEvent:
    """Decode a JSON request body: one envelope, or an array of 1 to `max_items`."""
    try:
        value = json.loads(body, object_pairs_hook=_pairs_unique,
                           parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedError(f"not JSON: {exc}") from None
    except RecursionError:
        raise MalformedError("not JSON: nested too deeply") from None
    if type(value) is list:
        _check_count(len(value), max_items)
        return [from_json(v, path=f"[{i}]") for i, v in enumerate(value)]
    return from_json(value)


# ---------------------------------------------------------------- msgpack


def encode_batch(signed_events: Sequence[SignedEvent]) -> bytes:
    """A msgpack array of canonical envelopes: the body of a batch POST."""
    if not 1 <= len(signed_events) <= MAX_BATCH_ITEMS:
        raise ValueError(f"a request holds 1 to {MAX_BATCH_ITEMS} events")
    return pack([s.to_wire() for s in signed_events])


def decode_body(data: bytes, *, max_items: int = MAX_BATCH_ITEMS
                ) -> list[SignedEvent] | SignedEvent:
    """Decode a msgpack request body: one envelope (a map), or an array of 1 to `max_items`.

    The body must be exactly the canonical encoding of what it holds.
    """
    max_size = max_items * SignedEvent.MAX_SIZE + _ARRAY_HEADER
    plain = unpack_canonical(data, max_size=max_size)
    if type(plain) is dict and plain:
        return _envelope(plain, "", bytes(data))
    if type(plain) is list and plain and all(type(v) is dict for v in plain):
        _check_count(len(plain), max_items)
        # The body is canonical, so each envelope's bytes are its map packed again (in C):
        # the entry that will hold it splices them in (ledger/entry.py).
        return [_envelope(v, f"[{i}]", pack(v)) for i, v in enumerate(plain)]
    # Not canonical, or not envelopes: the slow path names what is wrong.
    value = unpack(data, max_size=max_size)
    if type(value) is not list:
        raise FieldTypeError("the body must be an envelope map or an array of them")
    if not value:
        # unpack gives [] for both an empty map and an empty array: neither holds an event.
        raise FieldValueError("the body holds no events")
    if type(value[0]) is tuple:
        signed = _envelope(value, "")
        if signed.encode() != bytes(data):
            raise NonCanonicalError("not the canonical encoding of the envelope")
        return signed
    _check_count(len(value), max_items)
    items = [_envelope(v, f"[{i}]") for i, v in enumerate(value)]
    wires = [s.to_wire() for s in items]
    if pack(wires) != bytes(data):
        raise NonCanonicalError("not the canonical encoding",
                                field=_first_noncanonical(bytes(data), wires))
    return items


def _envelope(value: Any, path: str, wire: bytes | None = None) -> SignedEvent:
    if type(value) is dict:
        keys = list(value)
    elif type(value) is list and all(type(p) is tuple for p in value):
        keys = [k for k, _ in value]
    else:
        keys = [None]
    if any(type(k) is not str for k in keys):
        raise FieldTypeError("expected an envelope map with string keys", field=path or None)
    for key in keys:
        # Checked here, not left to decode_map, so that every error naming a field
        # outside _ENVELOPE_FIELDS is known to come from inside the event.
        if key not in _ENVELOPE_FIELDS:
            raise UnknownFieldError("unknown field", field=_join(path, key))
    try:
        return decoder_of(SignedEvent)(value, "", wire)
    except DecodeError as exc:
        raise _attributed(exc, path) from None


def _first_noncanonical(data: bytes, wires: list[dict[str, Any]]) -> str | None:
    """The first item whose bytes differ from its canonical encoding, for the error."""
    unpacker = msgpack.Unpacker(max_buffer_size=len(data))
    unpacker.feed(data)
    unpacker.read_array_header()
    start = unpacker.tell()
    for i, wire in enumerate(wires):
        unpacker.skip()
        end = unpacker.tell()
        if data[start:end] != pack(wire):
            return f"[{i}]"
        start = end
    return None  # every item is canonical: the array header itself is too wide


# ---------------------------------------------------------------- shared


def _check_count(count: int, max_items: int) -> None:
    if count == 0:
        raise FieldValueError("the body holds no events")
    if count > max_items:
        raise OversizeError(f"{count} events in one body; at most {max_items} are accepted")


def _attributed(exc: DecodeError, path: str) -> DecodeError:
    """Name the field of an envelope error from the body's root (`[3].event.purposes`).

    Building a SignedEvent decodes its event, whose errors name the event's own fields
    (or none); no event field shares a name with an envelope field, so the first
    component tells which of the two an error is about.
    """
    field = exc.field
    head = field.split(".", 1)[0].split("[", 1)[0] if field else None
    if head not in _ENVELOPE_FIELDS:
        field = _join("event", field or "")
    return type(exc)(exc.reason, field=_join(path, field or ""))


def _join(path: str, key: str) -> str:
    if not key:
        return path
    if not path:
        return key
    return f"{path}{key}" if key.startswith("[") else f"{path}.{key}"
