// Transparency-log checks in the browser: canonical base64, signed notes (C2SP
// signed-note), checkpoints (tlog-checkpoint), tlog-proof files, RFC 6962 inclusion,
// verifier keys, tlog-policy and tlog-cosignature/v1, with Ed25519 from WebCrypto.
// The same rules as ledger/note.py, ledger/checkpoint.py, ledger/tlog_proof.py,
// ledger/merkle.py and client/policy.py; every error is a VerifyError whose message is
// one sentence a person can read, and `part` names the check that failed.

export class VerifyError extends Error {
  constructor(part, message) {
    super(message);
    this.part = part;
  }
}

const enc = new TextEncoder();
const utf8 = new TextDecoder("utf-8", { fatal: true });
const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const SPACES = /[\s\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/u;
const ALG_ED25519 = 0x01;
const ALG_COSIGNATURE = 0x04;
const MAX_SIGNATURES = 100;
const MAX_HASHES = 63;
const HEADER = "c2sp.org/tlog-proof@v1";

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function equal(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
export const utf8Bytes = (s) => enc.encode(s);

export function toBase64(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

// Standard padded base64, refusing any other spelling of the same bytes.
export function fromBase64(text, what, part = "format") {
  if (!B64.test(text)) throw new VerifyError(part, `The ${what} is not valid base64.`);
  const raw = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  if (toBase64(raw) !== text) throw new VerifyError(part, `The ${what} is not canonical base64.`);
  return raw;
}

export async function sha256(...parts) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", concat(...parts)));
}

// ---- signed notes and checkpoints ------------------------------------------------

function validName(name) {
  return name.length > 0 && !name.includes("+") && !SPACES.test(name) && !/[\u0000-\u001f]/.test(name);
}

export function splitNote(bytes) {
  let text;
  try {
    text = utf8.decode(bytes);
  } catch {
    throw new VerifyError("format", "The checkpoint is not valid UTF-8 text.");
  }
  if (/[\u0000-\u0009\u000b-\u001f]/.test(text)) throw new VerifyError("format", "The checkpoint holds a control character.");
  const split = text.lastIndexOf("\n\n");
  if (split < 0) throw new VerifyError("format", "The checkpoint has no empty line before its signatures.");
  const body = text.slice(0, split + 1), block = text.slice(split + 2);
  if (!block.endsWith("\n")) throw new VerifyError("format", "The checkpoint has no signatures, or does not end in a newline.");
  const lines = block.slice(0, -1).split("\n");
  if (lines.length > MAX_SIGNATURES) throw new VerifyError("format", `The checkpoint has more than ${MAX_SIGNATURES} signatures.`);
  const signatures = lines.map((line) => {
    if (!line.startsWith("\u2014 ")) throw new VerifyError("format", "A checkpoint signature line does not start with '\u2014 '.");
    const rest = line.slice(2), space = rest.indexOf(" ");
    const name = space < 0 ? "" : rest.slice(0, space);
    if (!validName(name)) throw new VerifyError("format", "A checkpoint signature line has no valid key name.");
    const raw = fromBase64(rest.slice(space + 1), "checkpoint signature");
    if (raw.length < 5) throw new VerifyError("format", "A checkpoint signature is too short.");
    const id = ((raw[0] << 24) | (raw[1] << 16) | (raw[2] << 8) | raw[3]) >>> 0;
    return { name, id, sig: raw.subarray(4) };
  });
  return { text: body, signatures };
}

const SIZE = /^(?:0|[1-9][0-9]{0,18})$/;

export function parseCheckpoint(text) {
  const bad = (why) => new VerifyError("format", `The checkpoint is malformed: ${why}.`);
  if (!text.endsWith("\n")) throw bad("its text does not end in a newline");
  const lines = text.slice(0, -1).split("\n");
  if (lines.length < 3) throw bad("it has fewer than three lines");
  const [origin, size, root, ...extensions] = lines;
  if (!origin || origin !== origin.trim()) throw bad("the origin line is empty or has spaces around it");
  if (!SIZE.test(size) || BigInt(size) >= 1n << 63n) throw bad("the size is not a canonical decimal below 2^63");
  const rootHash = fromBase64(root, "checkpoint root hash");
  if (rootHash.length !== 32) throw bad("the root hash is not 32 bytes");
  if (extensions.length > 64 || extensions.some((e) => !e)) throw bad("an extension line is empty, or there are too many");
  return { origin, size: BigInt(size), root: rootHash, extensions };
}

// ---- tlog-proof -------------------------------------------------------------------

export function parseTlogProof(bytes) {
  const bad = (line, why) => new VerifyError("format", `The receipt is not a well-formed tlog-proof: line ${line} ${why}.`);
  let split = -1;
  for (let i = 0; i + 1 < bytes.length; i++) {
    if (bytes[i] === 10 && bytes[i + 1] === 10) {
      split = i;
      break;
    }
  }
  if (split < 0) throw new VerifyError("format", "The receipt is not a tlog-proof: it has no empty line before its checkpoint.");
  const head = bytes.subarray(0, split);
  if (head.some((b) => (b < 0x20 || b > 0x7e) && b !== 10)) throw new VerifyError("format", "The receipt is not a tlog-proof: a line before the checkpoint is not printable ASCII.");
  const lines = String.fromCharCode(...head).split("\n");
  if (lines[0] !== HEADER) throw bad(1, `is not '${HEADER}'`);
  let n = 1, extra = null;
  if (n < lines.length && lines[n].startsWith("extra ")) {
    extra = fromBase64(lines[n].slice(6), `extra data on line ${n + 1}`);
    if (!extra.length) throw bad(n + 1, "holds empty extra data");
    n++;
  }
  if (n >= lines.length || !lines[n].startsWith("index ")) throw bad(n + 1, "is not 'index <n>'");
  const digits = lines[n].slice(6);
  if (!SIZE.test(digits) || BigInt(digits) >= 1n << 63n) throw bad(n + 1, "does not hold a canonical decimal index below 2^63");
  const index = BigInt(digits);
  const hashLines = lines.slice(n + 1);
  if (hashLines.length > MAX_HASHES) throw bad(n + 2 + MAX_HASHES, `is one proof hash more than the ${MAX_HASHES} allowed`);
  const hashes = hashLines.map((line, i) => {
    if (!line) throw bad(n + 2 + i, "is empty");
    const h = fromBase64(line, `proof hash on line ${n + 2 + i}`);
    if (h.length !== 32) throw bad(n + 2 + i, `holds a ${h.length}-byte hash, not 32`);
    return h;
  });
  const checkpoint = bytes.subarray(split + 2);
  const note = splitNote(checkpoint);
  return { index, hashes, extra, note, checkpoint: parseCheckpoint(note.text) };
}

// ---- RFC 6962 inclusion (RFC 9162 section 2.1.3.2), as ledger/merkle.py -----------

export async function leafHash(entry) {
  return sha256(Uint8Array.of(0), entry);
}

export async function rootFromInclusion(leaf, index, size, proof) {
  if (index >= size) throw new VerifyError("inclusion", `The inclusion proof is for entry ${index}, which is outside the checkpoint's ${size} entries.`);
  let fn = index, sn = size - 1n, r = leaf;
  for (const p of proof) {
    if (sn === 0n) throw new VerifyError("inclusion", "The inclusion proof has more hashes than the tree needs.");
    if ((fn & 1n) === 1n || fn === sn) {
      r = await sha256(Uint8Array.of(1), p, r);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      r = await sha256(Uint8Array.of(1), r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new VerifyError("inclusion", "The inclusion proof has fewer hashes than the tree needs.");
  return r;
}

export async function verifyInclusion(leaf, index, size, proof, root) {
  const got = await rootFromInclusion(leaf, index, size, proof);
  if (!equal(got, root)) throw new VerifyError("inclusion", "The inclusion proof does not lead from the log entry to the checkpoint's root hash.");
}

// ---- keys, policies, signatures ------------------------------------------------------

export async function keyId(name, type, pub) {
  const d = await sha256(utf8Bytes(name), Uint8Array.of(10, type), pub);
  return ((d[0] << 24) | (d[1] << 16) | (d[2] << 8) | d[3]) >>> 0;
}

export async function parseVerifierKey(vkey, what = "key") {
  const bad = (why) => new VerifyError("trust", `The ${what} you gave is not a verifier key (name+id+key): ${why}.`);
  const first = vkey.indexOf("+"), second = vkey.indexOf("+", first + 1);
  if (first < 0 || second < 0) throw bad("it does not have three parts");
  const name = vkey.slice(0, first), hexId = vkey.slice(first + 1, second);
  if (!validName(name)) throw bad("its name is not valid");
  if (!/^[0-9a-f]{8}$/.test(hexId)) throw bad("its ID is not 8 lowercase hex digits");
  const raw = fromBase64(vkey.slice(second + 1), what, "trust");
  if (raw.length !== 33 || (raw[0] !== ALG_ED25519 && raw[0] !== ALG_COSIGNATURE)) throw bad("it is not a 32-byte Ed25519 key");
  const type = raw[0], pub = raw.subarray(1), id = parseInt(hexId, 16);
  if ((await keyId(name, type, pub)) !== id) throw bad("its ID does not match the key");
  return { name, id, type, pub, idHex: hexId };
}

export async function ed25519Verify(pub, sig, msg) {
  if (sig.length !== 64) return false;
  try {
    const key = await crypto.subtle.importKey("raw", pub, { name: "Ed25519" }, false, ["verify"]);
    return await crypto.subtle.verify({ name: "Ed25519" }, key, sig, msg);
  } catch (err) {
    if (err && err.name === "NotSupportedError") throw new VerifyError("browser", "This browser cannot check Ed25519 signatures; use a current Chromium, Firefox or Safari.");
    return false;
  }
}

// A trust configuration: a single log key, or a tlog-policy (client/policy.py).
export async function parseTrust(text) {
  const lines = text.split("\n").map((l) => l.replace(/\r$/, ""));
  const isPolicy = lines.some((l) => /^(log|witness|group|quorum)[ \t]/.test(l));
  if (!isPolicy) {
    const key = await parseVerifierKey(text.trim(), "log key");
    if (key.type !== ALG_ED25519) throw new VerifyError("trust", "The key you gave is a cosigner key, not a log key.");
    return { logs: [key], witnesses: new Map(), groups: new Map(), quorum: null };
  }
  const trust = { logs: [], witnesses: new Map(), groups: new Map(), quorum: undefined };
  const member = new Set();
  for (const [i, line] of lines.entries()) {
    if (!line.trim() || line.startsWith("#")) continue;
    const f = line.trim().split(/[ \t]+/);
    const bad = (why) => new VerifyError("trust", `The policy you gave is not valid: line ${i + 1} ${why}.`);
    if (f[0] === "log" && (f.length === 2 || f.length === 3)) {
      const key = await parseVerifierKey(f[1], "policy's log key");
      if (key.type !== ALG_ED25519) throw bad("names a key that is not an Ed25519 log key");
      trust.logs.push(key);
    } else if (f[0] === "witness" && (f.length === 3 || f.length === 4)) {
      const key = await parseVerifierKey(f[2], "policy's witness key");
      if (key.type !== ALG_COSIGNATURE) throw bad("names a key that is not a tlog-cosignature/v1 key");
      if (trust.witnesses.has(f[1]) || trust.groups.has(f[1])) throw bad(`defines ${f[1]} twice`);
      trust.witnesses.set(f[1], key);
    } else if (f[0] === "group" && f.length >= 4) {
      const [, name, k, ...members] = f;
      if (trust.witnesses.has(name) || trust.groups.has(name)) throw bad(`defines ${name} twice`);
      for (const m of members) {
        if (!trust.witnesses.has(m) && !trust.groups.has(m)) throw bad(`names ${m}, which is not defined above it`);
        if (member.has(m)) throw bad(`makes ${m} a member twice`);
        member.add(m);
      }
      let threshold;
      if (k === "all") threshold = members.length;
      else if (k === "any") threshold = 1;
      else if (/^[1-9][0-9]{0,5}$/.test(k) && Number(k) <= members.length) threshold = Number(k);
      else throw bad("has a threshold that is not all, any, or a number of its members");
      trust.groups.set(name, { threshold, members });
    } else if (f[0] === "quorum" && f.length === 2) {
      if (trust.quorum !== undefined) throw bad("is a second quorum line");
      if (f[1] !== "none" && !trust.witnesses.has(f[1]) && !trust.groups.has(f[1])) throw bad(`names ${f[1]}, which is not defined above it`);
      trust.quorum = f[1] === "none" ? null : f[1];
    } else {
      throw bad("is not a log, witness, group or quorum line");
    }
  }
  if (!trust.logs.length) throw new VerifyError("trust", "The policy you gave lists no log.");
  if (trust.quorum === undefined) throw new VerifyError("trust", "The policy you gave has no quorum line.");
  return trust;
}

function satisfied(trust, name, cosigned) {
  if (trust.witnesses.has(name)) return cosigned.has(name);
  const g = trust.groups.get(name);
  return g.members.filter((m) => satisfied(trust, m, cosigned)).length >= g.threshold;
}

// Open a signed checkpoint under `trust`: the log key named by its origin must have
// signed it, every signature by a known key must verify (a bad one rejects the note,
// as in Go), and the verified cosignatures must meet the quorum.
export async function openCheckpoint(note, checkpoint, trust) {
  const log = trust.logs.find((k) => k.name === checkpoint.origin);
  if (!log) {
    const names = trust.logs.map((k) => k.name).join(", ");
    throw new VerifyError("checkpoint", `The receipt comes from the log ${checkpoint.origin}, but the key you trust is for ${names}.`);
  }
  const signed = utf8Bytes(note.text);
  const seen = new Set(), cosigned = new Map();
  let logSigned = false;
  for (const s of note.signatures) {
    const tag = `${s.name}+${s.id}`;
    if (seen.has(tag)) continue;
    if (s.name === log.name && s.id === log.id) {
      seen.add(tag);
      if (!(await ed25519Verify(log.pub, s.sig, signed))) {
        throw new VerifyError("checkpoint", `The checkpoint's signature by the log key ${log.name} (key ID ${log.idHex}) does not verify.`);
      }
      logSigned = true;
      continue;
    }
    for (const [wname, w] of trust.witnesses) {
      if (s.name !== w.name || s.id !== w.id) continue;
      seen.add(tag);
      if (s.sig.length !== 72) throw new VerifyError("checkpoint", `The cosignature by ${wname} is not 72 bytes.`);
      const time = new DataView(s.sig.buffer, s.sig.byteOffset, 8).getBigUint64(0);
      if (time >= 1n << 63n) throw new VerifyError("checkpoint", `The cosignature by ${wname} has a timestamp of 2^63 or more.`);
      const msg = concat(utf8Bytes(`cosignature/v1\ntime ${time}\n`), signed);
      if (!(await ed25519Verify(w.pub, s.sig.subarray(8), msg))) {
        throw new VerifyError("checkpoint", `The checkpoint's cosignature by ${wname} does not verify.`);
      }
      cosigned.set(wname, Number(time));
    }
  }
  if (!logSigned) throw new VerifyError("checkpoint", `The checkpoint carries no signature by the log key you trust (${log.name}, key ID ${log.idHex}).`);
  if (trust.quorum !== null && !satisfied(trust, trust.quorum, cosigned)) {
    const got = [...cosigned.keys()].join(", ") || "no witness you trust";
    throw new VerifyError("checkpoint", `The checkpoint's cosignatures do not meet your policy's quorum ${trust.quorum}: it is cosigned by ${got}.`);
  }
  return { log, cosigned };
}
