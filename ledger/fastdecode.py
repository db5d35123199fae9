"""Per-record decoders generated once at first use: the codec's hot path.

The generic `codec.decode_map` walks a record's field specs one by one, and in CPython
the calls cost more than the checks. Here each record class gets a function whose body
inlines, field by field, a fast test that suffices for validity ("an int in [lo, hi]",
"bytes of length 32", "printable ASCII matching this pattern"). Only when a fast test
fails does the generated code call the field's own spec, which either accepts the value
(the fast test is sufficient, not necessary) or raises the precise, field-naming error.
Key order, duplicates and unknown keys are checked by comparing the tuple of keys
against the sequences already seen valid. So the fast path decides exactly what the
generic path decides; the property tests hold both to the same answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Decoder = Callable[..., Any]


def compile_decoder(cls: type, fields: tuple[Any, ...], helpers: dict[str, Any]) -> Decoder:
    """Generate `decode(value, path, wire=None) -> record` for a record class.

    `value` is a map as a dict (from `codec.unpack_canonical`) or as a list of pairs
    (from `codec.unpack`, which keeps duplicates for the error to name).

    `fields` are the codec's field infos (name, spec, optional); `helpers` supplies
    the names the generated body calls: _slow (the generic decoder), _rewrap,
    MissingFieldError, DecodeError and decoder_of (for nested records).
    """
    ns: dict[str, Any] = dict(helpers)
    ns["_cls"] = cls
    ns["_new"] = object.__new__
    ns["_set"] = object.__setattr__
    ns["_valid_keys"] = set()  # only schema-valid key tuples: at most 2^optional
    names = tuple(f.name for f in fields)
    ns["_names"] = names
    body = [
        "def decode(value, path, wire=None):",
        "    if type(value) is dict:",  # from canonical bytes: no duplicate keys possible
        "        present = value",
        "    elif type(value) is list and (not value or type(value[0]) is tuple):",
        "        present = dict(value)",
        "        if len(present) != len(value):",
        "            return _slow(_cls, value, path)",
        "    else:",
        "        return _slow(_cls, value, path)",
        "    keys = tuple(present)",
        "    if keys not in _valid_keys:",
        "        if keys != tuple(n for n in _names if n in present):",
        "            return _slow(_cls, value, path)",
        "        _valid_keys.add(keys)",
        "    rec = _new(_cls)",
    ]
    for i, f in enumerate(fields):
        ns[f"s{i}"] = f.spec
        fast = f.spec.fast_test("v", f"c{i}_", ns)
        # Only an error needs the field's path: built inline, no call on the good path.
        where = f"(path + {'.' + f.name!r} if path else {f.name!r})"
        body.append(f"    v = present.get({f.name!r}, _MISSING)")
        body.append("    if v is _MISSING:")
        if f.optional:
            body.append("        v = None")
        else:
            body.append(f"        raise MissingFieldError('is required', field={where})")
        nested = getattr(f.spec, "record", None)
        if nested is not None:  # a nested record: straight to its own compiled decoder
            ns[f"d{i}"] = helpers["decoder_of"](nested)
            call = f"d{i}(v, {where})"
        else:
            call = f"s{i}.decode(v, {where})"
        if fast is None:
            body.append(f"    else:\n        v = {call}")
        else:
            body.append(f"    elif not ({fast}):\n        v = {call}")
        body.append(f"    _set(rec, {f.name!r}, v)")
    if "encoded" in cls.__dict__:
        # A record that caches its own encoding is given the bytes it was decoded from,
        # which the caller has already proven canonical: no need to encode it again.
        body.append("    if wire is not None:\n        rec.__dict__['encoded'] = wire")
    body += [
        "    try:",
        "        rec.validate()",
        "    except DecodeError as exc:",
        "        raise _rewrap(exc, path) from None",
        "    return rec",
    ]
    exec("\n".join(body), ns)
    decode: Decoder = ns["decode"]
    decode.__qualname__ = f"decode_{cls.__name__}"
    return decode


def compile_to_wire(cls: type, fields: tuple[Any, ...], head: dict[str, Any]) -> Callable[
        [Any], dict[str, Any]]:
    """Generate `to_wire(record) -> dict` with the keys in schema order.

    `head` holds constant leading pairs (an event's "kind"). Optional fields that are
    None are left out; fields whose spec converts (nested records, lists) call it.
    """
    ns: dict[str, Any] = {"_head": head}
    body = ["def to_wire(self):", "    out = dict(_head)" if head else "    out = {}"]
    for i, f in enumerate(fields):
        value = f"self.{f.name}"
        if f.converts:
            ns[f"s{i}"] = f.spec
            value = f"s{i}.encode(v)"
        if f.optional or f.converts:
            body.append(f"    v = self.{f.name}")
            if f.optional:
                body.append("    if v is not None:")
                body.append(f"        out[{f.name!r}] = {value if f.converts else 'v'}")
            else:
                body.append(f"    out[{f.name!r}] = {value}")
        else:
            body.append(f"    out[{f.name!r}] = {value}")
    body.append("    return out")
    exec("\n".join(body), ns)
    to_wire: Callable[[Any], dict[str, Any]] = ns["to_wire"]
    return to_wire
