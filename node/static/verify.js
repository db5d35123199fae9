// The verification page: take a receipt (dropped, chosen, pasted, or handed over in the
// URL fragment), check it in this browser against a key or policy the person gives,
// and say in plain words what it proves. Nothing here trusts the node that served the
// page unless the person asks for that, and the page says so when they do.
//
// Fragment hand-over (documented in the page, used by tests and links):
//   /verify#receipt=<base64url of the .tlog-proof file>[&trust=<base64url of a log key
//   or tlog-policy>][&node-key]
// The fragment never reaches the server; the page removes it from the address bar at
// once, since a grant's receipt holds the revocation token.

import { VerifyError, hex, parseTrust } from "./tlog.js";
import { readReceipt, verifyReceipt, verifyStatus } from "./receipt.js";

const $ = (id) => document.getElementById(id);
const bytesOf = (text) => new TextEncoder().encode(text);

function fromBase64Url(s) {
  if (!/^[A-Za-z0-9_-]*$/.test(s)) throw new VerifyError("format", "The receipt in the address is not base64url.");
  const b = atob(s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4));
  return Uint8Array.from(b, (c) => c.charCodeAt(0));
}

function when(ms) {
  const d = new Date(ms);
  const date = d.toLocaleDateString("en-GB", { day: "numeric", month: "long", year: "numeric", timeZone: "UTC" });
  return `${date}, ${d.toISOString().slice(11, 16)} UTC`;
}

function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
}

function fact(list, label, value) {
  const dt = document.createElement("dt");
  dt.textContent = label;
  const dd = document.createElement("dd");
  if (Array.isArray(value)) {
    const ul = document.createElement("ul");
    for (const v of value) {
      const li = document.createElement("li");
      li.textContent = v;
      ul.appendChild(li);
    }
    dd.appendChild(ul);
  } else {
    dd.textContent = value;
  }
  list.append(dt, dd);
  return dd;
}

function show(state, verdict, reason) {
  const result = $("result");
  result.hidden = false;
  result.dataset.state = state;
  $("verdict").textContent = verdict;
  $("reason").textContent = reason;
}

function reset() {
  for (const id of ["facts", "log-facts", "status"]) clear($(id));
  $("trust-note").hidden = true;
  $("status-section").hidden = true;
}

function describeLog(proof) {
  const list = $("log-facts");
  fact(list, "Log (origin)", proof.checkpoint.origin);
  fact(list, "Checkpoint", `${proof.checkpoint.size} entries; this is entry ${proof.index}`);
  fact(list, "Signed by (key name + key ID)", proof.note.signatures.map(
    (s) => `${s.name} + ${s.id.toString(16).padStart(8, "0")}`));
}

async function nodeTrust() {
  const resp = await fetch(apiUrl("v1/keys"), { cache: "no-store" });
  if (!resp.ok) throw new VerifyError("trust", "This node did not give its keys (GET /v1/keys failed).");
  const keys = await resp.json();
  const text = typeof keys.policy === "string" ? keys.policy : keys.log;
  if (typeof text !== "string") throw new VerifyError("trust", "This node's /v1/keys answer holds no log key.");
  return text;
}

function apiUrl(path) {
  // The page is served at <node>/verify; the API lives beside it.
  return new URL(path, new URL(".", location.href)).href;
}

async function checkStatus(verified, trust) {
  const { event, eventId, checkpoint } = verified;
  const section = $("status-section"), list = $("status");
  section.hidden = false;
  const now = Date.now();
  let inForce = 0;
  for (const purpose of event.purposes) {
    const q = new URLSearchParams({ controller: event.controller, subject: hex(event.subject), purpose });
    let line;
    try {
      const resp = await fetch(apiUrl(`v1/status?${q}`), { cache: "no-store" });
      if (!resp.ok) throw new VerifyError("status", `The node did not answer the status question (HTTP ${resp.status}).`);
      const { value } = await verifyStatus(await resp.json(), {
        controller: event.controller, subject: event.subject, purpose, trust, minSize: checkpoint.size,
      });
      if (value === null) line = "no record in the log (not verified as given)";
      else if (hex(value.grant) !== hex(eventId)) line = "now governed by a later grant, not this one";
      else if (value.withdrawn_by === "subject") line = "withdrawn by you";
      else if (value.withdrawn_by === "controller") line = "revoked by the controller";
      else if (now >= value.valid_until) line = `expired on ${when(value.valid_until)}`;
      else {
        line = "in force";
        inForce++;
      }
    } catch (err) {
      const li = document.createElement("li");
      li.dataset.state = "failed";
      li.textContent = `${purpose}: could not check the status now. ${err instanceof VerifyError ? err.message : "The node could not be reached."} ` +
        "This receipt shows the consent as given at its checkpoint; run `consent-ledger receipt refresh` on it to ask again.";
      list.appendChild(li);
      continue;
    }
    const li = document.createElement("li");
    li.dataset.state = line === "in force" ? "in-force" : "not-in-force";
    li.textContent = `${purpose}: ${line}`;
    list.appendChild(li);
  }
  $("status-summary").textContent = inForce === event.purposes.length
    ? `In force now for every purpose (checked against this node's latest signed checkpoint, under the same key${trust.quorum ? " and quorum" : ""}).`
    : `In force now for ${inForce} of ${event.purposes.length} purposes.`;
}

async function run(receiptBytes, trustText, useNodeKey) {
  reset();
  try {
    if (!window.crypto || !crypto.subtle) {
      throw new VerifyError("browser", "This page can only check signatures over HTTPS or on this computer (localhost); open it that way.");
    }
    const file = readReceipt(receiptBytes);
    describeLog(file.proof);
    if (useNodeKey) {
      trustText = await nodeTrust();
      $("trust-input").value = trustText;
      $("trust-note").hidden = false;
    }
    if (!trustText.trim()) {
      show("needs-key", "Not verified yet", "Paste the log's key or trust policy (from the controller, a witness, or anyone but this node), or choose to trust this node's key.");
      return;
    }
    const trust = await parseTrust(trustText);
    const verified = await verifyReceipt(file, trust);
    render(verified, file, trust);
    if (verified.event.kind === "grant") await checkStatus(verified, trust);
  } catch (err) {
    if (!(err instanceof VerifyError)) console.error(err);
    const message = err instanceof VerifyError ? err.message : `The page failed unexpectedly (${err}).`;
    show("failed", "Not verified", message);
    const failed = $("result");
    failed.dataset.part = err instanceof VerifyError ? err.part : "internal";
  }
}

function render(v, file, trust) {
  const { event, eventId, opened, checkpoint } = v;
  const list = $("facts");
  const key = opened.log;
  const cosigned = [...opened.cosigned.keys()];
  const by = `the log key ${key.name} (key ID ${key.idHex})` + (cosigned.length ? ` and cosigned by ${cosigned.join(", ")}` : "");
  if (event.kind === "grant") {
    show("verified", "Verified", `This consent is recorded in the log ${checkpoint.origin}, signed by ${by}.`);
    fact(list, "Who holds your consent", event.controller + (event.service ? ` (service: ${event.service})` : ""));
    fact(list, "For these purposes", event.purposes);
    fact(list, "Over these kinds of data", event.data_categories);
    if (event.recipients) fact(list, "Shared with", event.recipients);
    const n = event.notice;
    fact(list, "Under the notice", [`version ${n.version}`, n.url ? `at ${n.url}` : "no address given",
      `SHA-256 of its text: ${hex(n.sha256)}`]);
    fact(list, "Legal basis", event.legal_basis);
    fact(list, "Given on", `${when(event.consented_at)} (${event.collection_method}, ${event.jurisdiction}, language ${event.language})`);
    fact(list, "Valid until", when(event.valid_until));
    fact(list, "Data kept for", `${event.retention_days} days`);
    fact(list, "To withdraw", [event.withdrawal,
      `or with this receipt: consent-ledger revoke --log ${location.origin} --receipt <file>`]);
    fact(list, "You, to the controller", `reference ${file.extra.subject_ref} (the log holds only a salted commitment: ${hex(event.subject)})`);
  } else {
    const how = event.by === "subject" ? "withdrawn by the person" : "revoked by the controller";
    show("verified", "Verified", `This withdrawal is recorded in the log ${checkpoint.origin}, signed by ${by}.`);
    fact(list, "Consent", `${how} at ${event.controller}`);
    fact(list, "Of the grant", hex(event.grant));
    fact(list, "On", when(event.revoked_at));
    if (event.reason) fact(list, "Reason", event.reason);
  }
  fact(list, "Logged", `entry ${v.entry.index} on ${when(v.entry.time)}; event ID ${hex(eventId)}`);
  fact(list, "Trusted", trust.quorum ? `your policy (quorum ${trust.quorum})` : "the log key above");
}

function receiptFromFields() {
  let text = $("receipt-input").value;
  if (text && !text.endsWith("\n")) text += "\n"; // a copy from a terminal loses the last newline
  return bytesOf(text);
}

async function verifyFile(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  $("receipt-input").value = new TextDecoder().decode(bytes);
  await run(bytes, $("trust-input").value, false);
}

function wire() {
  $("verify").addEventListener("click", () => run(receiptFromFields(), $("trust-input").value, false));
  $("use-node-key").addEventListener("click", () => run(receiptFromFields(), "", true));
  $("file").addEventListener("change", (e) => e.target.files[0] && verifyFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) verifyFile(e.dataTransfer.files[0]);
  });
}

async function fromFragment() {
  if (!location.hash.startsWith("#")) return;
  const params = new Map(location.hash.slice(1).split("&").map((p) => {
    const at = p.indexOf("=");
    return at < 0 ? [p, ""] : [p.slice(0, at), p.slice(at + 1)];
  }));
  history.replaceState(null, "", location.pathname + location.search); // the token leaves the address bar
  if (!params.has("receipt")) return;
  let receipt;
  try {
    receipt = fromBase64Url(params.get("receipt"));
    const trust = params.has("trust") ? new TextDecoder().decode(fromBase64Url(params.get("trust"))) : "";
    $("receipt-input").value = new TextDecoder().decode(receipt);
    $("trust-input").value = trust;
  } catch (err) {
    show("failed", "Not verified", "The receipt or key in the address is not base64url.");
    return;
  }
  await run(receipt, $("trust-input").value, params.has("node-key"));
}

wire();
fromFragment();
