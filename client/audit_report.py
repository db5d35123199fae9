"""What an audit found, as facts (JSON) and as a page a person reads (HTML).

`FactCollector` watches every entry the audit replays and counts what a regulator asks
about: kinds, purposes, controllers, grants and revocations over time, how long
revocations took to reach the log, the controllers' key history, and anomalies. The
JSON holds the facts; the HTML shows the same facts in one self-contained file (inline
SVG, no scripts, no external requests).

Anomalies are things worth a look, not failures (a failure stops the audit):
- `clock-skew`: an event's claimed time is more than 80 % of the allowed skew from the
  log's clock;
- `revoked-long-expired`: a revocation of a grant whose validity ended more than 30
  days before the revocation was logged;
- `gap`: more than a day of log time without any entry.
Events the log refused (e.g. signed with a retired key) never enter it, so they are
not visible to an audit; the report says so rather than showing zero.
"""

from __future__ import annotations

import datetime
import html
import json
from collections import Counter
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from ledger.entry import LogEntry
from ledger.events import (
    ControllerRegister,
    ControllerRetire,
    ControllerRotate,
    Genesis,
    Grant,
    Revoke,
    StatusRoot,
)
from ledger.signed import key_id
from ledger.state import LedgerState, claimed_time

if TYPE_CHECKING:
    from client.audit import AuditResult

REPORT_FORMAT = "consent-ledger audit report v1"
SKEW_WARN = 0.8
LONG_EXPIRED_MS = 30 * 86_400_000
GAP_MS = 86_400_000
MAX_LISTED = 200  # anomalies of one kind listed in full; the rest are counted
MINUTE_MS = 60_000
SHORT_SPAN_MS = 6 * 3_600_000  # per-minute counts only for logs this short

Facts = dict[str, Any]

# Upper bounds (ms) of the buckets of time from a revocation's claimed time to its log time.
DELAY_BUCKETS: tuple[tuple[str, int | None], ...] = (
    ("< 0 (claimed later)", 0), ("0–100 ms", 100), ("100 ms–1 s", 1_000),
    ("1–10 s", 10_000), ("10 s–1 min", 60_000), ("1–10 min", 600_000),
    ("10–60 min", 3_600_000), ("1 h–1 d", 86_400_000), ("> 1 d", None),
)


def _iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class FactCollector:
    """Fed each entry right after it replayed, with the state that admitted it."""

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()
        self.grants_by_purpose: Counter[str] = Counter()
        self.revocations_by_purpose: Counter[str] = Counter()
        self.by_controller: dict[str, Counter[str]] = {}
        self.jurisdictions: Counter[str] = Counter()
        self.withdrawn_by: Counter[str] = Counter()
        self.grants_per_minute: Counter[int] = Counter()
        self.revocations_per_minute: Counter[int] = Counter()
        self.delays: list[int] = []
        self.keys: list[dict[str, Any]] = []
        self.signed_by_key: Counter[str] = Counter()
        self.anomalies: dict[str, list[dict[str, Any]]] = {
            "clock-skew": [], "revoked-long-expired": [], "gap": []}
        self.anomaly_counts: Counter[str] = Counter()
        self.max_skew_seen = 0
        self.first_time: int | None = None
        self.last_time: int | None = None
        self.largest_gaps: list[tuple[int, int]] = []  # (ms, index of the entry after)

    def _anomaly(self, category: str, **fields: Any) -> None:
        self.anomaly_counts[category] += 1
        if len(self.anomalies[category]) < MAX_LISTED:
            self.anomalies[category].append(fields)

    def _controller(self, name: str) -> Counter[str]:
        return self.by_controller.setdefault(name, Counter())

    def observe(self, entry: LogEntry, state: LedgerState) -> None:
        signed, t, index = entry.signed, entry.time, entry.index
        body = signed.body
        self.kinds[body.KIND] += 1
        if self.last_time is not None and t - self.last_time > 0:
            gap = t - self.last_time
            if gap > GAP_MS:
                self._anomaly("gap", index=index, ms=gap, since=_iso(self.last_time))
            if len(self.largest_gaps) < 5 or gap > self.largest_gaps[-1][0]:
                self.largest_gaps = sorted([*self.largest_gaps, (gap, index)],
                                           reverse=True)[:5]
        if self.first_time is None:
            self.first_time = t
        self.last_time = t
        if isinstance(body, StatusRoot):
            return
        if signed.signer is not None:
            self.signed_by_key[signed.signer.hex()] += 1
        skew = abs(claimed_time(body) - t)
        self.max_skew_seen = max(self.max_skew_seen, skew)
        if state.max_skew_ms and skew > SKEW_WARN * state.max_skew_ms:
            self._anomaly("clock-skew", index=index, skew_ms=skew,
                          limit_ms=state.max_skew_ms, kind=body.KIND)
        match body:
            case Grant():
                self.grants_per_minute[t // MINUTE_MS] += 1
                self._controller(body.controller)["grants"] += 1
                self.jurisdictions[body.jurisdiction] += 1
                for p in body.purposes:
                    self.grants_by_purpose[p] += 1
            case Revoke():
                self._revoke(body, entry, state)
            case Genesis():
                self.keys.append({"index": index, "time": _iso(t), "event": "genesis",
                                  "controller": None,
                                  "key_id": key_id(body.operator_key).hex()})
            case ControllerRegister():
                self.keys.append({"index": index, "time": _iso(t), "event": "register",
                                  "controller": body.controller,
                                  "key_id": key_id(body.key).hex()})
            case ControllerRotate():
                self.keys.append({"index": index, "time": _iso(t), "event": "rotate",
                                  "controller": body.controller,
                                  "key_id": key_id(body.key).hex(),
                                  "old_key_id": body.old_key_id.hex()})
            case ControllerRetire():
                self.keys.append({"index": index, "time": _iso(t), "event": "retire",
                                  "controller": body.controller, "key_id": body.key_id.hex(),
                                  "reason": body.reason})

    def _revoke(self, body: Revoke, entry: LogEntry, state: LedgerState) -> None:
        t = entry.time
        self.revocations_per_minute[t // MINUTE_MS] += 1
        self._controller(body.controller)["revocations"] += 1
        self.withdrawn_by[body.by] += 1
        self.delays.append(t - body.revoked_at)
        if body.grant is not None:
            grant = state.grants[body.grant]
            purposes: tuple[str, ...] = grant.purposes
            if t - grant.valid_until > LONG_EXPIRED_MS:
                self._anomaly("revoked-long-expired", index=entry.index,
                              grant_index=grant.index,
                              expired_days=(t - grant.valid_until) // 86_400_000)
        else:
            purposes = body.purposes or ()
        for p in purposes:
            self.revocations_by_purpose[p] += 1

    def facts(self, state: LedgerState) -> Facts:
        per_hour: Counter[str] = Counter()
        per_day: Counter[str] = Counter()
        per_minute: Counter[str] = Counter()
        # Minutes are only worth listing for a log that spans hours, not years.
        short = self.first_time is not None and self.last_time is not None \
            and self.last_time - self.first_time <= SHORT_SPAN_MS
        series: dict[str, dict[str, dict[str, int]]] = {"per_day": {}, "per_hour": {},
                                                          "per_minute": {}}
        for what, counts in (("grants", self.grants_per_minute),
                             ("revocations", self.revocations_per_minute)):
            per_hour, per_day, per_minute = Counter(), Counter(), Counter()
            for minute, n in counts.items():
                stamp = _iso(minute * MINUTE_MS)
                per_minute[stamp[:16]] += n
                per_hour[stamp[:13]] += n
                per_day[stamp[:10]] += n
            if not short:
                per_minute.clear()
            for name, c in (("per_day", per_day), ("per_hour", per_hour),
                            ("per_minute", per_minute)):
                for bucket, n in c.items():
                    series[name].setdefault(bucket, {"grants": 0, "revocations": 0})[what] = n
        revoked = sum(1 for g in state.grants.values() if g.revoked_at is not None)
        return {
            "entries": state.size,
            "first_entry_time": _iso(self.first_time) if self.first_time is not None else None,
            "last_entry_time": _iso(self.last_time) if self.last_time is not None else None,
            "counts_by_kind": dict(sorted(self.kinds.items())),
            "grants": self.kinds["grant"], "revocations": self.kinds["revoke"],
            "grants_revoked": revoked, "withdrawn_by": dict(sorted(self.withdrawn_by.items())),
            "per_purpose": {p: {"grants": self.grants_by_purpose[p],
                                "revocations": self.revocations_by_purpose[p]}
                            for p in sorted(self.grants_by_purpose.keys()
                                            | self.revocations_by_purpose.keys())},
            "per_controller": {
                c: {"grants": n["grants"], "revocations": n["revocations"],
                    "keys": sum(1 for k in state.keys.values() if k.controller == c),
                    "name": state.controllers[c].name if c in state.controllers else None}
                for c, n in sorted(self.by_controller.items())},
            "per_jurisdiction": dict(sorted(self.jurisdictions.items())),
            "per_day": dict(sorted(series["per_day"].items())),
            "per_hour": dict(sorted(series["per_hour"].items())),
            "per_minute": dict(sorted(series["per_minute"].items())),
            "revocation_delay_ms": _distribution(self.delays),
            "key_history": self.keys,
            "signed_by_key": dict(sorted(self.signed_by_key.items())),
            "max_clock_skew_ms": {"seen": self.max_skew_seen, "allowed": state.max_skew_ms},
            "largest_gaps": [{"ms": ms, "before_entry": i} for ms, i in self.largest_gaps],
            "anomalies": {k: {"count": self.anomaly_counts[k], "listed": v}
                          for k, v in self.anomalies.items()},
            "refused_events": "Refused events (e.g. signed with a retired key) are not "
                              "visible: a log holds only the events it admitted",
        }


def _distribution(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "buckets": {name: 0 for name, _ in DELAY_BUCKETS}}
    s = sorted(values)

    def pct(p: float) -> int:
        return s[min(len(s) - 1, int(p / 100 * len(s)))]

    buckets = {name: 0 for name, _ in DELAY_BUCKETS}
    for v in s:
        for name, upper in DELAY_BUCKETS:
            if upper is None or v < upper:
                buckets[name] += 1
                break
    return {"count": len(s), "min": s[0], "p50": pct(50), "p90": pct(90), "p99": pct(99),
            "max": s[-1], "buckets": buckets}


# ---------------------------------------------------------------- JSON


def report_json(result: AuditResult, *, audited_at: int) -> dict[str, Any]:
    f = result.failure
    return {
        "format": REPORT_FORMAT,
        "origin": result.origin,
        "audited_at": _iso(audited_at),
        "verdict": "verified" if f is None else "failed",
        "failure": None if f is None else {"code": f.code, "entry": f.index,
                                           "reason": f.reason, "message": str(f),
                                           "evidence": f.evidence},
        "checkpoint": {"size": result.size, "root": result.root,
                       "note": result.checkpoint_note},
        "previous_audit_size": result.previous_audit_size,
        "verification": {
            "entries_verified": result.entries_verified,
            "signatures_checked": result.signatures_checked,
            "hash_tiles_checked": result.hash_tiles_checked,
            "requests": result.requests, "bytes_fetched": result.bytes_fetched,
            "tiles_reused": result.tiles_reused, "seconds": round(result.seconds, 3),
            "verify_seconds": round(result.verify_seconds, 3),
            "entries_per_second": round(result.entries_verified / result.verify_seconds)
            if result.verify_seconds > 0 else None,
        },
        "sources": [{"url": s.url, "role": s.role, "size": s.size, "root": s.root,
                     "verdict": s.verdict, "requests": s.requests, "checkpoint": s.note}
                    for s in result.sources],
        "facts": result.facts,
    }


def write_json(report: dict[str, Any], path: str) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump(report, out, indent=1, ensure_ascii=False)
        out.write("\n")


# ---------------------------------------------------------------- HTML

GRANT_COLOUR = "#2b6cb0"
REVOKE_COLOUR = "#c05621"
_E = html.escape


def _num(n: int | float | None) -> str:
    if n is None:
        return "–"
    return f"{n:,}" if isinstance(n, int) else f"{n:,.1f}"


def _hbars(rows: list[tuple[str, list[int]]], series: list[tuple[str, str]],
           title: str) -> str:
    """Horizontal grouped bars, one row per label; labels in a column left of the bars."""
    if not rows:
        return f"<p class=empty>{_E(title)}: nothing to show.</p>"
    label_w, bar_w, row_h, bar_h = 260, 420, 14 + 10 * len(series), 10
    top = 28
    height = top + row_h * len(rows) + 8
    peak = max(max(v) for _, v in rows) or 1
    parts = [f'<svg class="chart" viewBox="0 0 {label_w + bar_w + 90} {height}" role="img" '
             f'aria-label="{_E(title)}">', _legend(series, label_w)]
    for r, (label, values) in enumerate(rows):
        y = top + r * row_h
        short = label if len(label) <= 38 else label[:37] + "…"
        parts.append(f'<text x="{label_w - 8}" y="{y + row_h / 2 + 4}" text-anchor="end">'
                     f'<title>{_E(label)}</title>{_E(short)}</text>')
        for s, (value, (_, colour)) in enumerate(zip(values, series, strict=True)):
            w = max(1.0, bar_w * value / peak) if value else 0
            by = y + 4 + s * bar_h
            parts.append(f'<rect x="{label_w}" y="{by}" width="{w:.1f}" height="{bar_h - 2}" '
                         f'fill="{colour}"/><text x="{label_w + w + 4:.1f}" y="{by + 8}" '
                         f'class="val">{value:,}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _legend(series: list[tuple[str, str]], x: float) -> str:
    out = []
    for name, colour in series:
        out.append(f'<rect x="{x}" y="6" width="12" height="12" fill="{colour}"/>'
                   f'<text x="{x + 16}" y="16">{_E(name)}</text>')
        x += 24 + 8 * len(name)
    return "".join(out)


def _columns(buckets: list[tuple[str, list[int]]], series: list[tuple[str, str]],
             title: str) -> str:
    """Vertical grouped columns over an ordered axis (time, or delay buckets)."""
    if not buckets:
        return f"<p class=empty>{_E(title)}: nothing to show.</p>"
    width, height, left, bottom, top = 760, 290, 56, 96, 30
    plot_w, plot_h = width - left - 10, height - top - bottom
    step = -(-max(max(v) for _, v in buckets) // 4) or 1  # whole-number grid lines
    peak = 4 * step
    slot = plot_w / len(buckets)
    bar = max(1.0, min(28.0, slot * 0.8 / len(series)))
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{_E(title)}">', _legend(series, left)]
    for k in range(5):  # horizontal grid with values
        v = step * k
        y = top + plot_h - plot_h * k / 4
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'class="grid"/><text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" '
                     f'class="val">{v:,.0f}</text>')
    every = max(1, len(buckets) // 12)  # at most ~12 axis labels
    for b, (label, values) in enumerate(buckets):
        x0 = left + b * slot + (slot - bar * len(series)) / 2
        for s, (value, (name, colour)) in enumerate(zip(values, series, strict=True)):
            h = plot_h * value / peak
            parts.append(f'<rect x="{x0 + s * bar:.1f}" y="{top + plot_h - h:.1f}" '
                         f'width="{bar - 1:.1f}" height="{h:.1f}" fill="{colour}">'
                         f'<title>{_E(label)}: {value:,} {_E(name)}</title></rect>')
        if b % every == 0:
            cx = left + b * slot + slot / 2
            parts.append(f'<text x="{cx:.1f}" y="{top + plot_h + 14}" text-anchor="end" '
                         f'transform="rotate(-35 {cx:.1f} {top + plot_h + 14})" '
                         f'class="axis">{_E(label)}</text>')
    parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{top + plot_h}" '
                 f'y2="{top + plot_h}" class="axisline"/></svg>')
    return "".join(parts)


def _timeline(facts: Facts) -> tuple[str, list[tuple[str, list[int]]]]:
    days = facts["per_day"]
    if len(days) >= 3:
        return "per day (UTC)", [(d, [v["grants"], v["revocations"]]) for d, v in days.items()]
    if len(facts["per_hour"]) < 3 and facts["per_minute"]:
        unit, buckets = "minute", facts["per_minute"]
    else:
        unit, buckets = "hour", {h + ":00": v for h, v in facts["per_hour"].items()}
    if len(days) == 1:  # one day: the axis shows times, the heading the date
        return f"per {unit}, {next(iter(days))} (UTC)", [
            (b[11:], [v["grants"], v["revocations"]]) for b, v in buckets.items()]
    return f"per {unit} (UTC)", [(b.replace("T", " "), [v["grants"], v["revocations"]])
                                 for b, v in buckets.items()]


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _num(value)
    return str(value)


def _table(head: list[str], rows: list[list[Any]], *,
           numeric: Collection[int] = ()) -> str:
    if not rows:
        return "<p class=empty>None.</p>"
    th = "".join(f"<th{' class=n' if i in numeric else ''}>{_E(h)}</th>"
                 for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(
        f"<td{' class=n' if i in numeric else ''}>{_E(_cell(c))}</td>"
        for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:#1a202c;background:#f7f7f5;margin:0}
main{max-width:960px;margin:0 auto;padding:32px 28px 64px;background:#fff;min-height:100vh}
h1{font-size:1.7rem;margin:0 0 4px}h2{font-size:1.2rem;margin:36px 0 10px;
border-bottom:1px solid #e2e8f0;padding-bottom:4px}
.sub{color:#4a5568;margin:0 0 18px}
.verdict{display:inline-block;padding:6px 14px;border-radius:4px;font-weight:600;
letter-spacing:.02em;color:#fff}
.ok{background:#2f855a}.bad{background:#c53030}
.failure{border-left:5px solid #c53030;background:#fff5f5;padding:12px 16px;margin:16px 0}
.kpis{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px;
margin:18px 0}
.kpi{border:1px solid #e2e8f0;border-radius:6px;padding:10px 12px}
.kpi b{display:block;font-size:1.35rem;font-variant-numeric:tabular-nums}
.kpi span{color:#4a5568;font-size:.85rem}
table{border-collapse:collapse;width:100%;font-size:.9rem;margin:6px 0}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #edf2f7;vertical-align:top}
th{background:#f7fafc;font-weight:600}td.n,th.n{text-align:right;
font-variant-numeric:tabular-nums}
code,pre{font:.82rem/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{background:#f7fafc;border:1px solid #e2e8f0;padding:8px;overflow-x:auto;
white-space:pre-wrap;word-break:break-all}
.chart{width:100%;height:auto;font-size:12px;fill:#2d3748}
.chart .val,.chart .axis{font-size:11px;fill:#4a5568}
.chart .grid{stroke:#edf2f7}.chart .axisline{stroke:#a0aec0}
.empty{color:#718096;font-style:italic}
.note{color:#4a5568;font-size:.9rem}
"""


def report_html(report: dict[str, Any]) -> str:
    facts: Facts = report["facts"]
    v = report["verification"]
    failure = report["failure"]
    ok = failure is None
    cp = report["checkpoint"]
    out = ["<!doctype html><html lang=en><head><meta charset=utf-8>",
           "<meta name=viewport content='width=device-width,initial-scale=1'>",
           f"<title>Audit of {_E(report['origin'])}</title><style>{_CSS}</style></head>"
           "<body><main>",
           f"<h1>Audit of {_E(report['origin'])}</h1>",
           f"<p class=sub>Audited {_E(report['audited_at'])} · checkpoint size "
           f"{_num(cp['size'])} · root <code>{_E(cp['root'] or '–')}</code></p>",
           f"<span class='verdict {'ok' if ok else 'bad'}'>"
           f"{'VERIFIED FROM GENESIS' if ok else 'FAILED'}</span>"]
    if failure is not None:
        where = f" at entry {failure['entry']}" if failure["entry"] is not None else ""
        out.append(f"<div class=failure><p><b>{_E(failure['code'])}</b>{_E(where)}: "
                   f"{_E(failure['reason'])}</p>")
        for name, text in failure["evidence"].items():
            out.append(f"<p class=note>{_E(name.replace('_', ' '))}</p><pre>{_E(text)}</pre>")
        out.append("</div>")
    kpis = [("entries verified", v["entries_verified"]),
            ("signatures checked", v["signatures_checked"]),
            ("hash tiles checked", v["hash_tiles_checked"]),
            ("grants", facts["grants"]), ("revocations", facts["revocations"]),
            ("grants revoked", facts["grants_revoked"]),
            ("entries / s verified", v["entries_per_second"]),
            ("requests", v["requests"])]
    out.append("<div class=kpis>" + "".join(
        f"<div class=kpi><b>{_num(n)}</b><span>{_E(label)}</span></div>" for label, n in kpis)
        + "</div>")
    if not ok:
        out.append(f"<p class=note>The audit stopped at this failure; the figures below "
                   f"cover the {_num(v['entries_verified'])} entries that verified before "
                   f"it.</p>")
    out.append(f"<p class=note>What an audit checks: each entry decoded strictly and "
               f"replayed (its index, its link in the hash chain, its admission with the "
               f"keys in force at that entry, its signature, every status root "
               f"recomputed); the tree rebuilt from the entries against every hash tile "
               f"served and the signed checkpoint; each mirror's checkpoint against that "
               f"tree. Took {v['seconds']:.1f} s; {_num(v['tiles_reused'])} "
               f"tiles came from an earlier run's local copy"
               + (f" (previous audit: size {_num(report['previous_audit_size'])})"
                  if report["previous_audit_size"] is not None else "") + ".</p>")

    out.append("<h2>Log and mirrors</h2>")
    out.append(_table(["role", "url", "size", "verdict", "requests"],
                      [[s["role"], s["url"], s["size"], s["verdict"], s["requests"]]
                       for s in report["sources"]], numeric={2, 4}))

    series = [("grants", GRANT_COLOUR), ("revocations", REVOKE_COLOUR)]
    label, buckets = _timeline(facts)
    out.append(f"<h2>Grants and revocations {label}</h2>")
    out.append(_columns(buckets, series, f"grants and revocations {label}"))
    out.append(f"<p class=note>From {_E(facts['first_entry_time'] or '–')} to "
               f"{_E(facts['last_entry_time'] or '–')}, by the log's clock.</p>")

    out.append("<h2>Per purpose</h2>")
    out.append(_hbars([(p, [c["grants"], c["revocations"]])
                       for p, c in sorted(facts["per_purpose"].items(),
                                          key=lambda kv: -kv[1]["grants"])], series,
                      "grants and revocations per purpose"))
    out.append("<h2>Per controller</h2>")
    out.append(_hbars([(f"{c} ({n['name']})" if n["name"] else c,
                        [n["grants"], n["revocations"]])
                       for c, n in facts["per_controller"].items()], series,
                      "grants and revocations per controller"))

    d = facts["revocation_delay_ms"]
    out.append("<h2>From revocation to record</h2>")
    out.append("<p class=note>Time from the moment a revocation says it was made to the "
               "moment the log recorded it" + (
                   f": median {_num(d['p50'])} ms, 90th percentile {_num(d['p90'])} ms, "
                   f"99th {_num(d['p99'])} ms, longest {_num(d['max'])} ms."
                   if d["count"] else ".") + "</p>")
    out.append(_columns([(name, [n]) for name, n in d["buckets"].items()],
                        [("revocations", REVOKE_COLOUR)], "revocation delay")
               if d["count"] else "<p class=empty>No revocations.</p>")

    out.append("<h2>Anomalies</h2>")
    skew = facts["max_clock_skew_ms"]
    out.append(f"<p class=note>Largest clock skew seen {_num(skew['seen'])} ms of "
               f"{_num(skew['allowed'])} ms allowed. {_E(facts['refused_events'])}.</p>")
    rows = []
    for kind, a in facts["anomalies"].items():
        for item in a["listed"]:
            rows.append([kind, item.get("index"), ", ".join(
                f"{k.replace('_', ' ')} {_num(x) if isinstance(x, int) else x}"
                for k, x in item.items() if k != "index")])
    counts = ", ".join(f"{k}: {a['count']:,}" for k, a in facts["anomalies"].items())
    out.append(f"<p class=note>{_E(counts)}</p>")
    out.append(_table(["anomaly", "entry", "details"], rows, numeric={1}))

    out.append("<h2>Key history</h2>")
    signed = facts["signed_by_key"]
    out.append(_table(["entry", "time", "event", "controller", "key id", "events signed"],
                      [[k["index"], k["time"], k["event"], k["controller"] or "(operator)",
                        k["key_id"], signed.get(k["key_id"], 0)]
                       for k in facts["key_history"]], numeric={0, 5}))

    out.append("<h2>Entries by kind</h2>")
    out.append(_table(["kind", "entries"], [[k, n] for k, n in
                                            facts["counts_by_kind"].items()], numeric={1}))
    out.append("<h2>Signed checkpoint audited</h2>")
    out.append(f"<pre>{_E(cp['note'] or '–')}</pre>")
    out.append("</main></body></html>\n")
    return "".join(out)


def write_html(report: dict[str, Any], path: str) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write(report_html(report))
