// A strict msgpack decoder for consent-ledger's canonical records (docs/formats.md,
// "Canonical msgpack"), and a schema check that names the field that breaks a rule.
//
// Only what canonical records use is accepted: non-negative integers, strings, bin,
// arrays and maps, each in its shortest form. nil, booleans, floats, negative
// integers and extension types never occur in a record, so they are refused. Maps
// decode to arrays of [key, value] pairs so the schema sees key order and duplicates.
// With shortest forms enforced, keys in schema order and no unknown keys, exactly one
// byte string decodes to a given record, as encode(decode(b)) == b does in Python.

export class DecodeError extends Error {}

const utf8 = new TextDecoder("utf-8", { fatal: true });
const encoder = new TextEncoder();
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
const MAX_DEPTH = 16;

export function unpack(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;

  function need(n) {
    if (at + n > bytes.length) throw new DecodeError(`the data ends early at byte ${at}`);
  }
  function uint(n) {
    need(n);
    let v = 0n;
    for (let i = 0; i < n; i++) v = (v << 8n) | BigInt(bytes[at + i]);
    at += n;
    return v;
  }
  function length(n, min, what) {
    const v = Number(uint(n));
    if (v < min) throw new DecodeError(`a ${what} length is not in its shortest form`);
    return v;
  }
  function take(n) {
    need(n);
    const out = bytes.subarray(at, at + n);
    at += n;
    return out;
  }
  function text(n) {
    let s;
    try {
      s = utf8.decode(take(n));
    } catch {
      throw new DecodeError("a string is not valid UTF-8");
    }
    return s;
  }
  function value(depth) {
    if (depth > MAX_DEPTH) throw new DecodeError("values are nested too deeply");
    need(1);
    const b = bytes[at++];
    if (b <= 0x7f) return b;
    if (b >= 0x80 && b <= 0x8f) return map(b & 0x0f, depth);
    if (b >= 0x90 && b <= 0x9f) return array(b & 0x0f, depth);
    if (b >= 0xa0 && b <= 0xbf) return text(b & 0x1f);
    switch (b) {
      case 0xc4: return take(length(1, 0, "bin"));
      case 0xc5: return take(length(2, 0x100, "bin"));
      case 0xc6: return take(length(4, 0x10000, "bin"));
      case 0xcc: return integer(1, 0x80n);
      case 0xcd: return integer(2, 0x100n);
      case 0xce: return integer(4, 0x10000n);
      case 0xcf: return integer(8, 0x100000000n);
      case 0xd9: return text(length(1, 32, "string"));
      case 0xda: return text(length(2, 0x100, "string"));
      case 0xdb: return text(length(4, 0x10000, "string"));
      case 0xdc: return array(length(2, 16, "array"), depth);
      case 0xdd: return array(length(4, 0x10000, "array"), depth);
      case 0xde: return map(length(2, 16, "map"), depth);
      case 0xdf: return map(length(4, 0x10000, "map"), depth);
      default:
        throw new DecodeError(`byte ${at - 1} starts a msgpack type no record uses (0x${b.toString(16)})`);
    }
  }
  function integer(n, min) {
    const v = uint(n);
    if (v < min) throw new DecodeError("an integer is not in its shortest form");
    if (v >= 1n << 63n) throw new DecodeError("an integer is 2^63 or more");
    return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  }
  function array(n, depth) {
    const out = [];
    for (let i = 0; i < n; i++) out.push(value(depth + 1));
    return out;
  }
  function map(n, depth) {
    const pairs = [];
    for (let i = 0; i < n; i++) {
      const key = value(depth + 1);
      pairs.push([key, value(depth + 1)]);
    }
    return new MsgMap(pairs);
  }

  const out = value(0);
  if (at !== bytes.length) throw new DecodeError(`${bytes.length - at} bytes follow the value`);
  return out;
}

export class MsgMap {
  constructor(pairs) {
    this.pairs = pairs;
  }
}

// ---- schemas: [name, type, optional?] in wire order -----------------------------

export const T = {
  int: (lo = 0, hi = Number.MAX_SAFE_INTEGER) => ({ kind: "int", lo, hi }),
  text: (max, choices = null) => ({ kind: "text", max, choices }),
  bin: (size = null, max = 256) => ({ kind: "bin", size, max }),
  set: (item, maxItems) => ({ kind: "set", item, maxItems }),
  seq: (item, maxItems) => ({ kind: "seq", item, maxItems }),
  record: (fields) => ({ kind: "record", fields }),
};

function fail(path, reason) {
  throw new DecodeError(path ? `${path}: ${reason}` : reason);
}

function typeName(v) {
  if (v instanceof MsgMap) return "a map";
  if (v instanceof Uint8Array) return "bytes";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "string") return "a string";
  return "an integer";
}

function compareUtf8(a, b) {
  // Python orders strings by code point, which is the order of their UTF-8 bytes.
  const x = encoder.encode(a), y = encoder.encode(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

export function check(spec, v, path) {
  switch (spec.kind) {
    case "int":
      if (typeof v !== "number" && typeof v !== "bigint") fail(path, `expected an integer, got ${typeName(v)}`);
      if (typeof v === "bigint" || v < spec.lo || v > spec.hi) fail(path, `${v} is out of range`);
      return v;
    case "text": {
      if (typeof v !== "string") fail(path, `expected a string, got ${typeName(v)}`);
      if (!v) fail(path, "must not be empty");
      if (encoder.encode(v).length > spec.max) fail(path, `longer than ${spec.max} bytes`);
      if (CONTROL.test(v)) fail(path, "contains a control character");
      if (v.normalize("NFC") !== v) fail(path, "is not NFC-normalised");
      if (spec.choices && !spec.choices.includes(v)) fail(path, `${JSON.stringify(v)} is not one of ${spec.choices.join(", ")}`);
      return v;
    }
    case "bin":
      if (!(v instanceof Uint8Array)) fail(path, `expected bytes, got ${typeName(v)}`);
      if (spec.size !== null && v.length !== spec.size) fail(path, `expected ${spec.size} bytes, got ${v.length}`);
      if (v.length > spec.max) fail(path, `longer than ${spec.max} bytes`);
      return v;
    case "set":
    case "seq": {
      if (!Array.isArray(v)) fail(path, `expected an array, got ${typeName(v)}`);
      if (v.length > spec.maxItems || (spec.kind === "set" && v.length < 1)) fail(path, `has ${v.length} items`);
      const items = v.map((item, i) => check(spec.item, item, `${path}[${i}]`));
      if (spec.kind === "set") {
        for (let i = 1; i < items.length; i++) {
          if (compareUtf8(items[i - 1], items[i]) >= 0) fail(path, "items must be unique and sorted ascending");
        }
      }
      return items;
    }
    case "record":
      return record(spec.fields, v, path);
    default:
      throw new Error(`unknown spec ${spec.kind}`);
  }
}

// A record: keys are strings, each known, once, in schema order; required ones present.
export function record(fields, v, path = "") {
  if (!(v instanceof MsgMap)) fail(path, `expected a map, got ${typeName(v)}`);
  const out = {};
  let next = 0;
  for (const [key, item] of v.pairs) {
    if (typeof key !== "string") fail(path, "map keys must be strings");
    const where = path ? `${path}.${key}` : key;
    const pos = fields.findIndex(([name]) => name === key);
    if (pos < 0) fail(where, "unknown field");
    if (key in out) fail(where, "duplicate key");
    if (pos < next) fail(where, "key out of order");
    for (let i = next; i < pos; i++) if (!fields[i][2]) fail(path ? `${path}.${fields[i][0]}` : fields[i][0], "is required");
    out[key] = check(fields[pos][1], item, where);
    next = pos + 1;
  }
  for (let i = next; i < fields.length; i++) if (!fields[i][2]) fail(path ? `${path}.${fields[i][0]}` : fields[i][0], "is required");
  return out;
}

export function decodeRecord(fields, bytes, what) {
  try {
    return record(fields, unpack(bytes));
  } catch (err) {
    if (err instanceof DecodeError) throw new DecodeError(`${what}: ${err.message}`);
    throw err;
  }
}
