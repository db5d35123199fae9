"""Canonical msgpack: one byte string per record, and a strict decoder.

A record is a frozen dataclass whose fields carry a `Spec` in their metadata. It is
encoded as a msgpack map whose keys are the field names in declaration order; an
optional field that is None is absent (never nil). The decoder accepts exactly the
bytes the encoder would produce: it checks types, bounds, key order, duplicates and
unknown keys field by field, so that an error can name the field, and finally
re-encodes and compares, which rules out every non-minimal msgpack form (an integer
in a wider format than needed, a str8 where a fixstr fits, ...).
"""

from __future__ import annotations

import dataclasses
import re
import threading
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import msgpack

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
from ledger.fastdecode import compile_decoder, compile_to_wire

R = TypeVar("R", bound="Record")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def pack(obj: Any) -> bytes:
    """Encode plain msgpack values; maps keep their insertion order."""
    packer = getattr(_packers, "packer", None)
    if packer is None:
        # One packer per thread, reused: making one per call costs a third of packing
        # an event.
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack(obj)


_packers = threading.local()


def _pairs(pairs: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    return pairs


def _no_ext(code: int, data: bytes) -> Any:
    raise FieldTypeError(f"msgpack extension type {code} is not allowed")


def unpack(data: bytes, *, max_size: int) -> Any:
    """Decode msgpack strictly into plain values; maps become lists of (key, value) pairs.

    Keeping maps as pairs lets the schema layer see key order and duplicates.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FieldTypeError("expected bytes")
    if len(data) > max_size:
        raise OversizeError(f"{len(data)} bytes exceeds the limit of {max_size}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            object_pairs_hook=_pairs,
            ext_hook=_no_ext,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=max_size,
            max_map_len=max_size,
        )
    except DecodeError:
        raise
    except msgpack.ExtraData as exc:
        raise MalformedError(f"{len(exc.extra)} trailing bytes after the value") from None
    except UnicodeDecodeError:
        raise FieldValueError("a string is not valid UTF-8") from None
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise MalformedError(f"not valid msgpack: {exc}") from None


def unpack_canonical(data: bytes, *, max_size: int) -> Any:
    """Plain values with maps as dicts, if `data` is exactly their canonical encoding.

    None otherwise: the caller then decodes with `unpack`, whose pairs let the error name
    what is wrong (a duplicate key, a field out of order, the first differing byte).
    The canonical encoding of a value is the one msgpack's packer makes: smallest
    formats, keys in the order given. A dict keeps the order of the input and drops a
    repeated key, so re-packing it gives back `data` only if `data` had neither a wider
    format than needed nor a repeated key: one C-level pack decides what re-encoding
    the decoded record would, at a fraction of the cost.
    """
    if len(data) > max_size:
        return None
    try:
        value = msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=True, ext_hook=_no_ext,
            max_str_len=max_size, max_bin_len=max_size, max_array_len=max_size,
            max_map_len=max_size)
        if pack(value) != data:
            return None
    except Exception:  # whatever it is, `unpack` names it
        return None
    return value


# ---------------------------------------------------------------- field specs


class Spec:
    """How one field is checked, decoded from plain values and encoded to them."""

    def check(self, value: Any, path: str) -> None:
        raise NotImplementedError

    def decode(self, value: Any, path: str) -> Any:
        self.check(value, path)
        return value

    def encode(self, value: Any) -> Any:
        return value

    def fast_test(self, var: str, prefix: str, ns: dict[str, Any]) -> str | None:
        """A Python expression over `var` that is True only for valid values (or None).

        Used by the compiled decoders (fastdecode.py); constants go into `ns` under
        names starting with `prefix`.
        """
        return None


@dataclasses.dataclass(frozen=True)
class Int(Spec):
    lo: int = 0
    hi: int = 2**63 - 1

    def fast_test(self, var: str, prefix: str, ns: dict[str, Any]) -> str | None:
        return f"type({var}) is int and {self.lo} <= {var} <= {self.hi}"

    def check(self, value: Any, path: str) -> None:
        if type(value) is not int:
            raise FieldTypeError(f"expected an integer, got {_kind(value)}", field=path)
        if not self.lo <= value <= self.hi:
            raise FieldValueError(f"{value} is outside [{self.lo}, {self.hi}]", field=path)


@dataclasses.dataclass(frozen=True)
class Bool(Spec):
    def fast_test(self, var: str, prefix: str, ns: dict[str, Any]) -> str | None:
        return f"type({var}) is bool"

    def check(self, value: Any, path: str) -> None:
        if type(value) is not bool:
            raise FieldTypeError(f"expected a boolean, got {_kind(value)}", field=path)


@dataclasses.dataclass(frozen=True)
class Text(Spec):
    max_len: int = 256
    pattern: str | None = None
    choices: frozenset[str] | None = None
    _regex: re.Pattern[str] | None = dataclasses.field(default=None, init=False, repr=False,
                                                       compare=False)
    # Strings this spec has accepted: controllers, purposes, categories, URLs repeat in
    # nearly every event, and a set lookup costs a fraction of the checks. Bounded, so
    # that a flood of distinct strings only falls back to checking.
    _known: set[str] = dataclasses.field(default_factory=set, init=False, repr=False,
                                         compare=False)

    def fast_test(self, var: str, prefix: str, ns: dict[str, Any]) -> str | None:
        if self.choices is not None:
            ns[prefix + "choices"] = self.choices
            return f"type({var}) is str and {var} in {prefix}choices"
        ns[prefix + "known"] = self._known
        return f"type({var}) is str and {var} in {prefix}known"

    def decode(self, value: Any, path: str) -> Any:
        self.check(value, path)
        if len(self._known) < KNOWN_LIMIT:
            self._known.add(value)
        return value

    def __post_init__(self) -> None:
        if self.pattern is not None:
            # The fast path in check() relies on every pattern admitting printable
            # ASCII only (character classes like [a-z] or [!-~], never . or [^...]).
            object.__setattr__(self, "_regex", re.compile(self.pattern))

    def check(self, value: Any, path: str) -> None:
        if type(value) is not str:
            raise FieldTypeError(f"expected a string, got {_kind(value)}", field=path)
        # Fast paths: a closed set, or a pattern over printable ASCII (which excludes
        # control characters and is trivially NFC) decide in one C-level call.
        if self.choices is not None:
            if value not in self.choices:
                allowed = ", ".join(sorted(self.choices))
                raise FieldValueError(f"{value!r} is not one of: {allowed}", field=path)
            return
        if self._regex is not None and len(value) <= self.max_len \
                and self._regex.fullmatch(value):
            return
        if not value:
            raise FieldValueError("must not be empty", field=path)
        ascii_only = value.isascii()  # ASCII is NFC and one byte a character
        if (len(value) if ascii_only else len(value.encode())) > self.max_len:
            raise OversizeError(f"longer than {self.max_len} bytes", field=path)
        if _CONTROL.search(value):
            raise FieldValueError("contains a control character", field=path)
        if not ascii_only and not unicodedata.is_normalized("NFC", value):
            raise FieldValueError("is not NFC-normalised", field=path)
        if self._regex is not None:
            raise FieldValueError(f"{value!r} does not match {self.pattern}", field=path)


@dataclasses.dataclass(frozen=True)
class Bin(Spec):
    size: int | None = None
    max_len: int = 256

    def fast_test(self, var: str, prefix: str, ns: dict[str, Any]) -> str | None:
        if self.size is not None:
            return f"type({var}) is bytes and len({var}) == {self.size}"
        return f"type({var}) is bytes and len({var}) <= {self.max_len}"

    def check(self, value: Any, path: str) -> None:
        if type(value) is not bytes:
            raise FieldTypeError(f"expected bytes, got {_kind(value)}", field=path)
        if self.size is not None and len(value) != self.size:
            raise FieldValueError(f"expected {self.size} bytes, got {len(value)}", field=path)
        if len(value) > self.max_len:
            raise OversizeError(f"longer than {self.max_len} bytes", field=path)


KNOWN_LIMIT = 4096  # values a spec remembers as valid


def _check_each(item: Spec, values: Sequence[Any], path: str) -> None:
    """Check list items against one spec; only a failure pays for naming its index."""
    all_valid = _all_valid(item)
    if all_valid is not None and all_valid(values):
        return
    decode = item.decode
    for i, value in enumerate(values):
        try:
            decode(value, path)
        except DecodeError as exc:
            raise type(exc)(exc.reason, field=f"{path}[{i}]") from None


def _all_valid(item: Spec) -> Callable[[Sequence[Any]], bool] | None:
    """A compiled `all(fast_test(v) for v in values)` for the item spec, if it has one."""
    try:
        return item.__dict__["_all_valid"]
    except KeyError:
        pass
    ns: dict[str, Any] = {}
    fast = item.fast_test("v", "c_", ns)
    fn = None if fast is None else eval(f"lambda values: all(({fast}) for v in values)", ns)
    object.__setattr__(item, "_all_valid", fn)  # specs are frozen: cached on the side
    return fn


@dataclasses.dataclass(frozen=True)
class SortedSet(Spec):
    """A list standing for a set: canonical only when strictly ascending."""

    item: Spec
    max_items: int = 32
    min_items: int = 1

    def check(self, value: Any, path: str) -> None:
        if type(value) is not tuple:
            raise FieldTypeError(f"expected a tuple, got {_kind(value)}", field=path)
        self._check_items(value, path)

    def _check_items(self, items: Sequence[Any], path: str) -> None:
        if not self.min_items <= len(items) <= self.max_items:
            raise FieldValueError(
                f"needs {self.min_items} to {self.max_items} items, got {len(items)}", field=path
            )
        for i, item in enumerate(items):
            self.item.check(item, f"{path}[{i}]")
        for i in range(1, len(items)):
            if not items[i - 1] < items[i]:
                raise NonCanonicalError("items must be unique and sorted ascending", field=path)

    def decode(self, value: Any, path: str) -> Any:
        if type(value) is not list:
            raise FieldTypeError(f"expected an array, got {_kind(value)}", field=path)
        items = tuple(value)
        if not self.min_items <= len(items) <= self.max_items:
            raise FieldValueError(
                f"needs {self.min_items} to {self.max_items} items, got {len(items)}", field=path
            )
        _check_each(self.item, items, path)
        for i in range(1, len(items)):
            if not items[i - 1] < items[i]:
                raise NonCanonicalError("items must be unique and sorted ascending", field=path)
        return items

    def encode(self, value: Any) -> Any:
        return [self.item.encode(v) for v in value]


@dataclasses.dataclass(frozen=True)
class Seq(Spec):
    """An ordered list of items."""

    item: Spec
    max_items: int = 64

    def check(self, value: Any, path: str) -> None:
        if type(value) is not tuple:
            raise FieldTypeError(f"expected a tuple, got {_kind(value)}", field=path)
        if len(value) > self.max_items:
            raise OversizeError(f"more than {self.max_items} items", field=path)
        for i, item in enumerate(value):
            self.item.check(item, f"{path}[{i}]")

    def decode(self, value: Any, path: str) -> Any:
        if type(value) is not list:
            raise FieldTypeError(f"expected an array, got {_kind(value)}", field=path)
        if len(value) > self.max_items:
            raise OversizeError(f"more than {self.max_items} items", field=path)
        _check_each(self.item, value, path)
        return tuple(value)

    def encode(self, value: Any) -> Any:
        return [self.item.encode(v) for v in value]


@dataclasses.dataclass(frozen=True)
class Nested(Spec):
    record: type[Record]

    def check(self, value: Any, path: str) -> None:
        if type(value) is not self.record:
            raise FieldTypeError(f"expected {self.record.__name__}", field=path)

    def decode(self, value: Any, path: str) -> Any:
        return decoder_of(self.record)(value, path)

    def encode(self, value: Any) -> Any:
        return value.to_wire()


def spec(s: Spec, **kwargs: Any) -> Any:
    """A dataclass field carrying its wire spec."""
    return dataclasses.field(metadata={"spec": s}, **kwargs)


def optional(s: Spec) -> Any:
    return dataclasses.field(default=None, metadata={"spec": s, "optional": True})


# ---------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class _FieldInfo:
    name: str
    spec: Spec
    optional: bool
    converts: bool  # False where the wire form is the value itself


class Record:
    """Base of every canonically encoded record: a frozen dataclass of specced fields.

    Subclasses may define `validate()` for rules across fields; it runs on construction,
    so a record that exists is a valid record, whether built in code or decoded.
    """

    # No per-instance dict of its own: a subclass declared with slots=True (a status,
    # kept twice per grant for the life of the process) then has none at all.
    __slots__ = ()

    MAX_SIZE: ClassVar[int] = 16 * 1024
    _fields: ClassVar[tuple[_FieldInfo, ...]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._fields = ()

    def __post_init__(self) -> None:
        for f in _fields_of(type(self)):
            value = getattr(self, f.name)
            if value is None:
                if not f.optional:
                    raise MissingFieldError("is required", field=f.name)
                continue
            f.spec.check(value, f.name)
        self.validate()

    def validate(self) -> None:
        """Cross-field rules; raise FieldValueError naming the field."""

    WIRE_HEAD: ClassVar[dict[str, Any]] = {}  # constant leading pairs, e.g. an event's kind

    def to_wire(self) -> dict[str, Any]:
        cls = type(self)
        encoder = cls.__dict__.get("_to_wire")
        if encoder is None:
            encoder = compile_to_wire(cls, _fields_of(cls), cls.WIRE_HEAD)
            cls._to_wire = encoder  # type: ignore[attr-defined]
        return encoder(self)

    def encode(self) -> bytes:
        return pack(self.to_wire())

    @classmethod
    def decode(cls: type[R], data: bytes) -> R:
        plain = unpack_canonical(data, max_size=cls.MAX_SIZE)
        if type(plain) is dict:
            return decoder_of(cls)(plain, "", bytes(data))
        record = decoder_of(cls)(unpack(data, max_size=cls.MAX_SIZE), "")
        again = record.encode()
        if again != bytes(data):
            at = next((i for i, (a, b) in enumerate(zip(again, data, strict=False)) if a != b),
                      min(len(again), len(data)))
            raise NonCanonicalError(f"not the canonical encoding (first difference at byte {at})")
        return record


def _fields_of(cls: type[Record]) -> tuple[_FieldInfo, ...]:
    cached = cls.__dict__.get("_fields")
    if cached:
        return cached
    infos = tuple(
        _FieldInfo(f.name, f.metadata["spec"], bool(f.metadata.get("optional")),
                   type(f.metadata["spec"]).encode is not Spec.encode)
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if "spec" in f.metadata
    )
    cls._fields = infos
    return infos


_MISSING = object()


def decode_map(cls: type[R], value: Any, path: str) -> R:
    """Build a record from decoded pairs, checking keys in schema order."""
    if type(value) is dict:
        value = list(value.items())
    if type(value) is not list or (value and type(value[0]) is not tuple):
        raise FieldTypeError(f"expected a map, got {_kind(value)}", field=path or None)
    fields = _fields_of(cls)
    present = dict(value)
    if len(present) != len(value) or list(present) != [
            f.name for f in fields if f.name in present]:
        _diagnose_keys(fields, value, path)
    kwargs: dict[str, Any] = {}
    for f in fields:
        item = present.get(f.name, _MISSING)
        if item is _MISSING:
            if not f.optional:
                raise MissingFieldError("is required", field=_join(path, f.name))
            continue
        kwargs[f.name] = f.spec.decode(item, f"{path}.{f.name}" if path else f.name)
    try:
        return _build(cls, kwargs)
    except DecodeError as exc:
        raise _rewrap(exc, path) from None


def _diagnose_keys(fields: tuple[_FieldInfo, ...], pairs: list[tuple[Any, Any]],
                   path: str) -> None:
    """Name the first key that is not a string, repeated, unknown or out of order."""
    seen: dict[str, int] = {}
    for pos, (key, _) in enumerate(pairs):
        if type(key) is not str:
            raise FieldTypeError("map keys must be strings", field=path or None)
        if key in seen:
            raise DuplicateKeyError("duplicate key", field=_join(path, key))
        seen[key] = pos
    known = {f.name for f in fields}
    for key in seen:
        if key not in known:
            raise UnknownFieldError("unknown field", field=_join(path, key))
    last = -1
    for f in fields:
        found = seen.get(f.name)
        if found is not None:
            pos = found
            if pos < last:
                raise NonCanonicalError("key out of order", field=_join(path, f.name))
            last = pos


def build_checked(cls: type[R], **fields: Any) -> R:
    """Construct a record whose fields the caller vouches for (its own values, or values
    already checked); only the cross-field rules run. For hot paths inside the core."""
    return _build(cls, fields)


def _build(cls: type[R], checked: dict[str, Any]) -> R:
    """Construct a record from fields the decoder has already checked one by one.

    Skips the per-field checks of __post_init__ (decoding would otherwise run every
    check twice) but still runs the cross-field rules.
    """
    record = cls.__new__(cls)
    for f in _fields_of(cls):
        object.__setattr__(record, f.name, checked.get(f.name))
    record.validate()
    return record


def _rewrap(exc: DecodeError, path: str) -> DecodeError:
    """The same error, its field prefixed by where the record sits."""
    if path and exc.field is not None:
        return type(exc)(exc.reason, field=_join(path, exc.field))
    return exc


def decoder_of(cls: type[R]) -> Callable[..., R]:
    """The compiled decoder of a record class (built on first use)."""
    decoder = cls.__dict__.get("_decoder")
    if decoder is None:
        decoder = compile_decoder(cls, _fields_of(cls), {
            "_slow": decode_map, "_rewrap": _rewrap, "_MISSING": _MISSING,
            "MissingFieldError": MissingFieldError, "DecodeError": DecodeError,
            "decoder_of": decoder_of})
        cls._decoder = decoder  # type: ignore[attr-defined]
    return decoder


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    if type(value) is dict or (isinstance(value, list) and value
                               and isinstance(value[0], tuple)):
        return "map"
    return {
        bool: "boolean", int: "integer", float: "float", str: "string", bytes: "bytes",
        list: "array", tuple: "array", type(None): "nil",
    }.get(type(value), type(value).__name__)
