"""`consent-ledger audit` against real nodes, through an honest or a dishonest proxy.

The proxy is a small aiohttp app on loopback, in a thread of the test process, so the
audit (a real `consent-ledger` process) sees exactly what a network attacker or a
lying mirror would show it, and the test sees every request the audit makes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cliutil import ROOT, cli, one_line_error
from nodeproc import NodeProcess

import client.audit as audit_engine
from client.audit import Auditor, AuditStore
from ledger.checkpoint import Checkpoint, open_checkpoint
from ledger.entry import LogEntry
from ledger.events import StatusRoot
from ledger.note import new_verifier
from ledger.tiles import encode_entry_bundle, parse_entry_bundle

ORIGIN = "audit.test/log"
Rewrite = Callable[[bytes], bytes]


class Proxy:
    """Forwards GETs to `upstream`; may rewrite answers, or hold every request after
    the first `hold_after` tile requests until the proxy stops (a stalled network)."""

    def __init__(self, upstream: str, *, rewrite: dict[str, Rewrite] | None = None,
                 hold_after: int | None = None) -> None:
        self.upstream = upstream
        self.rewrite = rewrite or {}
        self.hold_after = hold_after
        self.paths: list[str] = []  # every path answered, in order
        self.held = 0
        self._tiles_asked = 0
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop: asyncio.Event | None = None

    def __enter__(self) -> Proxy:
        self._thread.start()
        assert self._ready.wait(10), "the proxy did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_get("/{path:.*}", self._handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as self._session:
            self._ready.set()
            await self._stop.wait()
        await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        if path.startswith("tile/"):
            self._tiles_asked += 1
        if self.hold_after is not None and path.startswith("tile/") \
                and self._tiles_asked > self.hold_after:
            self.held += 1
            assert self._stop is not None
            await self._stop.wait()
            raise web.HTTPServiceUnavailable()
        async with self._session.get(f"{self.upstream}/{path}") as resp:
            body = await resp.read()
            status = resp.status
        if path in self.rewrite:
            body = self.rewrite[path](body)
        self.paths.append(path)
        return web.Response(body=body, status=status)


def _demo_counts(stdout: str) -> tuple[int, int]:
    m = re.search(r"(\d+) grants, (\d+) withdrawn by token, (\d+) revoked by the controller",
                  stdout)
    assert m, stdout
    return int(m[1]), int(m[2]) + int(m[3])


def _demo(node: NodeProcess, events: int) -> tuple[int, int]:
    result = cli("demo", "--log", node.url, "--operator-key",
                 str(node.data_dir / "operator.key"), "--events", str(events), timeout=120)
    assert result.returncode == 0, result.stderr
    return _demo_counts(result.stdout)


class Log:
    def __init__(self, node: NodeProcess, grants: int, revocations: int,
                 old_checkpoint: bytes) -> None:
        self.node = node
        self.grants = grants
        self.revocations = revocations
        self.old_checkpoint = old_checkpoint

    @property
    def url(self) -> str:
        return self.node.url

    def checkpoint(self) -> bytes:
        return subprocess.run(  # plain stdlib: the test must not share the audit's code
            [sys.executable, "-c", "import sys,urllib.request;sys.stdout.buffer.write("
             f"urllib.request.urlopen('{self.url}/checkpoint').read())"],
            capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Log]:
    node = NodeProcess(tmp_path_factory.mktemp("audit") / "data", "--origin", ORIGIN)
    node.start()
    g1, r1 = _demo(node, 500)
    old = Log(node, 0, 0, b"").checkpoint()
    g2, r2 = _demo(node, 120)
    yield Log(node, g1 + g2, r1 + r2, old)
    assert node.stop() == 0, node.stderr()


def audit(url: str, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli("audit", "--log", url, "--state", str(state), "--json",
               str(state / "out.json"), "--report", str(state / "out.html"), "--quiet", *extra,
               timeout=120)


def report(state: Path) -> dict[str, object]:
    data = json.loads((state / "out.json").read_text())
    assert isinstance(data, dict)
    return data


def stored_tiles(state: Path) -> set[str]:
    out = set()
    for p in state.rglob("*"):
        if p.is_file() and "tile" in p.relative_to(state).parts:
            parts = p.relative_to(state).parts
            out.add("/".join(parts[parts.index("tile"):]))
    return out


# ---------------------------------------------------------------- a clean log


def test_a_clean_log_audits_with_the_expected_counts(log: Log, tmp_path: Path) -> None:
    result = audit(log.url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    r = report(tmp_path)
    size = int(log.checkpoint().split(b"\n")[1])
    assert r["verdict"] == "verified" and r["failure"] is None
    facts = r["facts"]
    assert isinstance(facts, dict)
    assert facts["entries"] == size
    assert facts["grants"] == log.grants
    assert facts["revocations"] == log.revocations
    kinds = facts["counts_by_kind"]
    assert kinds["genesis"] == 1 and kinds["controller-register"] == 1
    assert sum(kinds.values()) == size
    assert sum(p["grants"] for p in facts["per_day"].values()) == log.grants
    assert facts["revocation_delay_ms"]["count"] == log.revocations
    assert [k["event"] for k in facts["key_history"]] == ["genesis", "register"]
    verification = r["verification"]
    assert isinstance(verification, dict)
    assert verification["entries_verified"] == size
    assert verification["hash_tiles_checked"] >= 3  # two level-0 tiles and a level-1 tile
    page = (tmp_path / "out.html").read_text()
    assert "VERIFIED FROM GENESIS" in page and "<svg" in page
    assert "<script" not in page and not re.search(r"(src|href)=", page)


def test_a_mirror_that_lags_behind_is_consistent(log: Log, tmp_path: Path) -> None:
    old = log.old_checkpoint
    with Proxy(log.url, rewrite={"checkpoint": lambda _: old}) as mirror:
        result = audit(log.url, tmp_path, "--mirror", mirror.url)
    assert result.returncode == 0, result.stderr
    sources = report(tmp_path)["sources"]
    assert isinstance(sources, list)
    assert sources[1]["role"] == "mirror" and sources[1]["verdict"] == "consistent"
    assert sources[1]["size"] == int(old.split(b"\n")[1]) < sources[0]["size"]


# ---------------------------------------------------------------- resume


def test_an_interrupted_audit_resumes_without_refetching(log: Log, tmp_path: Path) -> None:
    with Proxy(log.url, hold_after=4) as stalled:
        proc = subprocess.Popen([sys.executable, "-m", "node.cli", "audit", "--log",
                                 stalled.url, "--state", str(tmp_path), "--quiet"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 60
        # The audit is waiting on the stalled network, and has kept what it was given
        # (on a loaded machine it may still be checking those tiles when the stall begins).
        while stalled.held == 0 or not [t for t in stored_tiles(tmp_path)
                                        if not t.rsplit("/", 1)[-1].startswith(".")]:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.02)  # polling a condition with a deadline
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    kept = stored_tiles(tmp_path)
    assert 0 < len(kept) <= 4
    with Proxy(log.url) as honest:
        result = audit(honest.url, tmp_path)
        assert result.returncode == 0, result.stderr
        fetched = {p for p in honest.paths if p.startswith("tile/")}
    assert not fetched & kept, "a tile kept from the interrupted run was fetched again"
    assert stored_tiles(tmp_path) == kept | fetched
    with Proxy(log.url) as again:
        assert audit(again.url, tmp_path).returncode == 0
        # Everything but the checkpoint (and the log key, trusted on first use) is local.
        assert sorted(again.paths) == ["checkpoint", "v1/keys"]


# ---------------------------------------------------------------- a dishonest server


def _flip_signature(index: int, flipped: list[int]) -> Rewrite:
    """Flip a bit of the signature of the first signed entry from `index` on; the
    entry still decodes, so only its signature check can catch it."""
    def rewrite(bundle: bytes) -> bytes:
        entries = parse_entry_bundle(bundle)
        for at in range(index % 256, len(entries)):
            sig = LogEntry.decode(entries[at]).signed.sig
            if sig is not None:
                entries[at] = entries[at].replace(sig, bytes([sig[0] ^ 1]) + sig[1:])
                flipped.append(index - index % 256 + at)
                return encode_entry_bundle(entries)
        raise AssertionError("no signed entry to tamper with")
    return rewrite


def _entry_bundle(log: Log, index: int) -> str:
    size = int(log.checkpoint().split(b"\n")[1])
    n = index // 256
    width = min(256, size - n * 256)
    return f"tile/entries/{n:03d}" + (f".p/{width}" if width < 256 else "")


def test_a_tampered_entry_is_named_with_its_reason(log: Log, tmp_path: Path) -> None:
    flipped: list[int] = []
    with Proxy(log.url, rewrite={_entry_bundle(log, 300): _flip_signature(300, flipped)}
               ) as liar:
        err = one_line_error(audit(liar.url, tmp_path), 1)
    (index,) = flipped
    assert f"entry {index}:" in err and "signature" in err and "does not verify" in err
    failure = report(tmp_path)["failure"]
    assert isinstance(failure, dict)
    assert failure["entry"] == index and failure["code"] == "bad-signature"
    assert "FAILED" in (tmp_path / "out.html").read_text()
    # The lie is not kept: the same state audits the honest node cleanly.
    assert audit(log.url, tmp_path).returncode == 0


@pytest.mark.parametrize("processes", [False, True])
async def test_the_engine_reports_the_entry_and_counts_only_what_passed(
        log: Log, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: bool) -> None:
    """The engine in-process, as a library caller uses it, with either signature pool."""
    monkeypatch.setattr(audit_engine, "PROCESSES_FROM", 0)
    vkey = _log_vkey(log)
    verifier = new_verifier(vkey)

    def opener(note: bytes) -> Checkpoint:
        return open_checkpoint(note, verifier)[0]

    clean = await Auditor(log.url, open_log_checkpoint=opener, log_verifier=verifier,
                          workers=2, processes=processes).run()
    assert clean.failure is None and clean.signatures_checked > 0
    flipped: list[int] = []
    with Proxy(log.url, rewrite={_entry_bundle(log, 300): _flip_signature(300, flipped)}
               ) as liar:
        result = await Auditor(liar.url, open_log_checkpoint=opener, log_verifier=verifier,
                               store=AuditStore(tmp_path, ORIGIN), workers=2,
                               processes=processes).run()
    assert result.failure is not None
    assert (result.failure.index, result.failure.code) == (flipped[0], "bad-signature")
    assert result.entries_verified == flipped[0]


def test_a_false_status_root_is_named(log: Log, tmp_path: Path) -> None:
    changed: list[int] = []

    def lie(bundle: bytes) -> bytes:
        entries = parse_entry_bundle(bundle)
        for i, raw in enumerate(entries):
            body = LogEntry.decode(raw).signed.body
            if isinstance(body, StatusRoot):
                entries[i] = raw.replace(body.map_root, bytes(32))
                changed.append(i)
                return encode_entry_bundle(entries)
        raise AssertionError("no status root in the first bundle")

    with Proxy(log.url, rewrite={"tile/entries/000": lie}) as liar:
        err = one_line_error(audit(liar.url, tmp_path), 1)
    (index,) = changed
    assert f"entry {index}:" in err and "status root" in err
    r = report(tmp_path)
    assert r["failure"]["code"] == "bad-status-root"  # type: ignore[index]
    assert r["sources"][0]["verdict"] == "failed"  # type: ignore[index]


def test_a_tampered_hash_tile_is_named(log: Log, tmp_path: Path) -> None:
    def lie(tile: bytes) -> bytes:
        return tile[:5 * 32] + bytes(32) + tile[6 * 32:]

    with Proxy(log.url, rewrite={"tile/0/000": lie}) as liar:
        err = one_line_error(audit(liar.url, tmp_path), 1)
    assert "entry 5" in err and "hash tile tile/0/000" in err
    assert report(tmp_path)["failure"]["code"] == "bad-hash-tile"  # type: ignore[index]


def test_a_tampered_checkpoint_is_refused(log: Log, tmp_path: Path) -> None:
    def lie(note: bytes) -> bytes:
        lines = note.split(b"\n")
        lines[2] = b"A" * 43 + b"="
        return b"\n".join(lines)

    with Proxy(log.url, rewrite={"checkpoint": lie}) as liar:
        err = one_line_error(audit(liar.url, tmp_path), 1)
    assert "checkpoint" in err and "does not verify" in err
    assert report(tmp_path)["failure"]["code"] == "bad-checkpoint"  # type: ignore[index]


# ---------------------------------------------------------------- forks


@pytest.fixture(scope="module")
def fork(log: Log, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """Another log with the same origin and the same log key, and its own history."""
    data = tmp_path_factory.mktemp("fork") / "data"
    data.mkdir()
    for name in ("log.key", "operator.key"):
        shutil.copy(log.node.data_dir / name, data / name)
        os.chmod(data / name, 0o600)
    node = NodeProcess(data, "--origin", ORIGIN)
    node.start()
    _demo(node, 40)
    yield node
    assert node.stop() == 0, node.stderr()


def test_a_fork_given_as_mirror_is_a_split_view(log: Log, fork: NodeProcess,
                                               tmp_path: Path) -> None:
    err = one_line_error(audit(log.url, tmp_path, "--mirror", fork.url), 1)
    assert "split view" in err and fork.url in err
    failure = report(tmp_path)["failure"]
    assert isinstance(failure, dict) and failure["code"] == "split-view"
    verdicts = [(s["role"], s["verdict"]) for s in report(tmp_path)["sources"]]  # type: ignore[attr-defined]
    assert verdicts[0] == ("log", "audited") and verdicts[1][0] == "mirror"
    evidence = failure["evidence"]
    assert evidence["checkpoint"].startswith(ORIGIN + "\n")
    assert evidence["mirror_checkpoint"].startswith(ORIGIN + "\n")
    assert evidence["checkpoint"] != evidence["mirror_checkpoint"]


def test_a_log_that_forks_after_an_audit_is_reported(log: Log, fork: NodeProcess,
                                                   tmp_path: Path) -> None:
    assert audit(log.url, tmp_path).returncode == 0
    # The same origin and key now serve another history: it is not merged.
    err = one_line_error(audit(fork.url, tmp_path), 1)
    assert "does not extend the one audited before" in err
    assert report(tmp_path)["failure"]["code"] == "fork"  # type: ignore[index]


def test_a_mirror_ahead_of_the_log_is_checked_with_its_own_entries(
        log: Log, tmp_path: Path) -> None:
    old = log.old_checkpoint
    with Proxy(log.url, rewrite={"checkpoint": lambda _: old}) as lagging:
        result = audit(lagging.url, tmp_path, "--mirror", log.url)
    assert result.returncode == 0, result.stderr
    r = report(tmp_path)
    mirror = r["sources"][1]  # type: ignore[index]
    assert mirror["verdict"] == "consistent" and mirror["size"] > r["checkpoint"]["size"]  # type: ignore[index]


# ---------------------------------------------------------------- trust


def _log_vkey(log: Log) -> str:
    keys = subprocess.run(
        [sys.executable, "-c", "import sys,urllib.request;sys.stdout.buffer.write("
         f"urllib.request.urlopen('{log.url}/v1/keys').read())"],
        capture_output=True, check=True).stdout
    vkey = json.loads(keys)["log"]
    assert isinstance(vkey, str)
    return vkey


def test_a_policy_or_a_pinned_key_decides_which_checkpoints_count(
        log: Log, tmp_path: Path) -> None:
    policy = tmp_path / "trust.policy"
    policy.write_text(f"log {_log_vkey(log)}\nquorum none\n")
    result = audit(log.url, tmp_path, "--policy", str(policy))
    assert result.returncode == 0, result.stderr
    assert report(tmp_path)["log_key"] == f"policy {policy}"
    # Another key of the same name: the log's checkpoint is not signed by it.
    other = subprocess.run(
        [sys.executable, "-c", "from ledger.note import generate_key;"
         f"print(generate_key({ORIGIN!r})[1])"], cwd=ROOT, capture_output=True, text=True,
        check=True).stdout.strip()
    err = one_line_error(audit(log.url, tmp_path, "--log-key", other), 1)
    assert "the log's checkpoint" in err and "does not verify" in err
