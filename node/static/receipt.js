// A consent-ledger receipt, checked in the browser as client/receipts.py checks it:
// the tlog-proof is parsed, its `extra` decoded (ReceiptExtra), the entry's leaf hash
// proven included in a checkpoint the person's trusted key or policy opens, and only
// then is the entry decoded and believed. A grant's salt and reference must make its
// subject commitment and its token its token hash (ledger/commitment.py).
//
// The current status is a node's answer to GET /v1/status, checked link by link as in
// client/status.py: the checkpoint under the same trust, its last entry (the status
// root) proven included, the status map proof from that root to the purpose's value.

import { DecodeError, MsgMap, T, decodeRecord, record, unpack } from "./msgpack.js";
import {
  VerifyError, concat, equal, fromBase64, hex, leafHash, openCheckpoint,
  parseCheckpoint, parseTlogProof, sha256, splitNote, utf8Bytes, verifyInclusion,
} from "./tlog.js";

const MAX_TIME = 253402300799999;
const hash32 = T.bin(32);
const time = T.int(0, MAX_TIME);
const strings = (max, items) => T.set(T.text(max), items);

const NOTICE = [["version", T.text(64)], ["sha256", hash32], ["url", T.text(2048), true]];
const GRANT = [
  ["kind", T.text(32, ["grant"])], ["controller", T.text(253)], ["subject", hash32],
  ["purposes", strings(128, 32)], ["data_categories", strings(128, 64)],
  ["legal_basis", T.text(64)], ["notice", T.record(NOTICE)],
  ["collection_method", T.text(32, ["web-form", "mobile-app", "paper-form", "verbal", "email", "api", "in-person", "other"])],
  ["jurisdiction", T.text(16)], ["language", T.text(35)], ["consented_at", time],
  ["valid_until", time], ["retention_days", T.int(1, 36600)], ["withdrawal", T.text(512)],
  ["token_hash", hash32], ["service", T.text(128), true], ["recipients", strings(256, 32), true],
];
const REVOKE = [
  ["kind", T.text(32, ["revoke"])], ["controller", T.text(253)],
  ["by", T.text(16, ["subject", "controller"])], ["revoked_at", time],
  ["grant", hash32, true], ["subject", hash32, true], ["purposes", strings(128, 32), true],
  ["reason", T.text(512), true],
];
const STATUS_ROOT = [["kind", T.text(32, ["status-root"])], ["size", T.int(1)], ["map_root", hash32]];
const BATCH = [["size", T.int(1, 65536)], ["index", T.int(0, 65535)], ["path", T.seq(hash32, 16)]];
const SIGNED = [
  ["event", T.bin(null, 8192)], ["signer", T.bin(8), true], ["sig", T.bin(64), true],
  ["batch", T.record(BATCH), true], ["token", T.bin(32), true],
];
const ENTRY = [["index", T.int()], ["time", time], ["prev", hash32], ["signed", T.record(SIGNED)]];
const EXTRA = [
  ["format", T.text(32, ["consent-ledger receipt v1"])], ["entry", T.bin(null, 65535)],
  ["log", T.text(2048), true], ["subject_ref", T.text(1024), true],
  ["salt", T.bin(32), true], ["token", T.bin(32), true],
];
const PURPOSE_STATUS = [
  ["index", T.int()], ["grant", hash32], ["valid_until", time],
  ["withdrawn_by", T.text(16, ["subject", "controller"]), true],
];
const MAP_PROOF = [
  ["depths", T.bin(null, 256)], ["siblings", T.seq(hash32, 256)],
  ["key", T.bin(32), true], ["value", T.bin(32), true],
];

const tag = (s) => utf8Bytes(`${s}\0`);
const lengthPrefixed = (b) => concat(Uint8Array.of(b.length >> 8, b.length & 0xff), b);

function decode(fields, bytes, what, part) {
  try {
    return decodeRecord(fields, bytes, what);
  } catch (err) {
    if (err instanceof DecodeError) throw new VerifyError(part, `The ${what} is malformed (${err.message}).`);
    throw err;
  }
}

function decodeEvent(bytes) {
  let value;
  try {
    value = unpack(bytes);
  } catch (err) {
    if (err instanceof DecodeError) throw new VerifyError("entry", `The logged event is malformed (${err.message}).`);
    throw err;
  }
  const first = value instanceof MsgMap ? value.pairs[0] : undefined;
  const kind = first && first[0] === "kind" ? first[1] : undefined;
  const fields = { grant: GRANT, revoke: REVOKE }[kind];
  if (!fields) throw new VerifyError("entry", "The logged event is neither a grant nor a revocation, so this is not a consent receipt.");
  try {
    return { kind, ...record(fields, value) };
  } catch (err) {
    if (err instanceof DecodeError) throw new VerifyError("entry", `The logged event is malformed (${err.message}).`);
    throw err;
  }
}

export async function subjectCommitment(controller, ref, salt) {
  return sha256(tag("consent-ledger subject commitment v1"), lengthPrefixed(utf8Bytes(controller)),
    lengthPrefixed(utf8Bytes(ref)), salt);
}

// Everything but trust: what can be read from the file before any key is known.
export function readReceipt(bytes) {
  const proof = parseTlogProof(bytes);
  if (!proof.extra) throw new VerifyError("format", "The receipt has no extra line, so it does not carry the log entry it proves.");
  const extra = decode(EXTRA, proof.extra, "receipt's extra data", "format");
  return { proof, extra };
}

export async function verifyReceipt({ proof, extra }, trust) {
  const leaf = await leafHash(extra.entry);
  const opened = await openCheckpoint(proof.note, proof.checkpoint, trust);
  await verifyInclusion(leaf, proof.index, proof.checkpoint.size, proof.hashes, proof.checkpoint.root);
  // From here on the entry is the log's: decoding errors are the log's, not a tamper.
  const entry = decode(ENTRY, extra.entry, "log entry", "entry");
  if (BigInt(entry.index) !== proof.index) throw new VerifyError("entry", `The log entry says it is entry ${entry.index}, but the proof is for entry ${proof.index}.`);
  const event = decodeEvent(entry.signed.event);
  const eventId = await sha256(entry.signed.event);
  const secrets = [extra.subject_ref, extra.salt, extra.token];
  if (event.kind === "grant") {
    if (secrets.some((s) => s === undefined)) throw new VerifyError("secrets", "The receipt lacks the subject reference, salt or revocation token of its grant.");
    if (!equal(await subjectCommitment(event.controller, extra.subject_ref, extra.salt), event.subject)) {
      throw new VerifyError("salt", "The salt and subject reference in the receipt do not make the grant's subject commitment, so this grant may not be about you.");
    }
    if (!equal(await sha256(tag("consent-ledger revocation token v1"), extra.token), event.token_hash)) {
      throw new VerifyError("token", "The revocation token in the receipt does not match the grant, so it could not withdraw it.");
    }
  } else {
    if (event.grant === undefined) throw new VerifyError("entry", "The revocation does not name one grant, so this is not a receipt of it.");
    if (secrets.some((s) => s !== undefined)) throw new VerifyError("secrets", "A revocation receipt must not hold secrets, and this one does.");
  }
  return { entry, event, eventId, leaf, checkpoint: proof.checkpoint, opened };
}

// ---- the status now --------------------------------------------------------------

async function mapKey(controller, subject, purpose) {
  return sha256(tag("consent-ledger map key v1"), lengthPrefixed(utf8Bytes(controller)),
    lengthPrefixed(subject), lengthPrefixed(utf8Bytes(purpose)));
}

const bit = (key, d) => (key[d >> 3] >> (7 - (d & 7))) & 1;

async function verifyMapProof(root, key, valueHash, proof) {
  const fail = (why) => new VerifyError("status", `The node's status answer does not verify: ${why}.`);
  const { depths, siblings } = proof;
  if (siblings.length !== depths.length) throw fail("its map proof has as many siblings as branchings");
  for (let i = 1; i < depths.length; i++) if (depths[i - 1] >= depths[i]) throw fail("its map proof's depths are not ascending");
  if ((proof.key === undefined) !== (proof.value === undefined)) throw fail("its map proof names half of another leaf");
  const LEAF = tag("consent-ledger map leaf v1");
  let h;
  if (valueHash !== null) {
    if (proof.key !== undefined) throw fail("a presence proof names another leaf");
    h = await sha256(LEAF, key, valueHash);
  } else if (proof.key === undefined) {
    if (depths.length) throw fail("an absence proof without another leaf has branchings");
    h = await sha256(tag("consent-ledger map empty v1"));
  } else {
    if (equal(proof.key, key)) throw fail("an absence proof ends at the key's own leaf");
    for (const d of depths) if (bit(key, d) !== bit(proof.key, d)) throw fail("the other leaf leaves the key's path");
    h = await sha256(LEAF, proof.key, proof.value);
  }
  const NODE = tag("consent-ledger map node v1");
  for (let i = depths.length - 1; i >= 0; i--) {
    const d = Uint8Array.of(depths[i]);
    h = bit(key, depths[i]) ? await sha256(NODE, d, siblings[i], h) : await sha256(NODE, d, h, siblings[i]);
  }
  if (!equal(h, root)) throw fail("its map proof does not lead to the status root the log committed to");
}

export async function verifyStatus(answer, { controller, subject, purpose, trust, minSize }) {
  const fail = (why) => new VerifyError("status", `The node's status answer does not verify: ${why}.`);
  if (typeof answer !== "object" || answer === null || typeof answer.checkpoint !== "string") throw fail("it has no checkpoint");
  const b64 = (v, what) => {
    if (typeof v !== "string") throw fail(`it lacks ${what}`);
    return fromBase64(v, `status answer's ${what}`, "status");
  };
  const noteBytes = utf8Bytes(answer.checkpoint);
  const note = splitNote(noteBytes);
  const checkpoint = parseCheckpoint(note.text);
  await openCheckpoint(note, checkpoint, trust);
  if (checkpoint.size < minSize) throw fail(`its checkpoint (${checkpoint.size} entries) is older than your receipt`);
  if (answer.root_index !== Number(checkpoint.size - 1n)) throw fail("its status root is not the checkpoint's last entry");
  const raw = b64(answer.root_entry, "root_entry");
  if (!Array.isArray(answer.inclusion_proof)) throw fail("it lacks its inclusion proof");
  const hashes = answer.inclusion_proof.map((h) => b64(h, "inclusion proof"));
  try {
    await verifyInclusion(await leafHash(raw), checkpoint.size - 1n, checkpoint.size, hashes, checkpoint.root);
  } catch (err) {
    if (err instanceof VerifyError) throw fail("the status root entry is not proven in its checkpoint");
    throw err;
  }
  const entry = decode(ENTRY, raw, "status root entry", "status");
  const signed = entry.signed;
  const root = decode(STATUS_ROOT, signed.event, "status root event", "status");
  if (signed.sig !== undefined || signed.token !== undefined || root.size !== answer.root_index) throw fail("the checkpoint's last entry is not the status root over the entries before it");
  const value = answer.value === null ? null : decode(PURPOSE_STATUS, b64(answer.value, "value"), "status value", "status");
  const valueHash = value === null ? null : await sha256(tag("consent-ledger status value v1"), b64(answer.value, "value"));
  const mapProof = decode(MAP_PROOF, b64(answer.map_proof, "map_proof"), "status map proof", "status");
  await verifyMapProof(root.map_root, await mapKey(controller, subject, purpose), valueHash, mapProof);
  return { value, checkpoint };
}

export { hex };
