"""The mirror that witnesses, against real nodes, proxies and its own process."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cliutil import cli, one_line_error
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import grant
from nodeclient import load_key, now_ms, post, register_controller
from nodeproc import ROOT, NodeProcess

from client.policy import parse_policy
from client.verify_log import verify_log
from ledger.checkpoint import Checkpoint, open_checkpoint, parse_checkpoint, sign_checkpoint
from ledger.commitment import token_hash
from ledger.cosignature import new_cosignature_verifier
from ledger.note import Ed25519Signer, generate_key, new_verifier, open_note, split_note
from ledger.signed import sign_event
from ledger.tiles import ENTRIES, TILE_WIDTH, TileId, format_tile_path, tiles_for_size
from ledger.witness import format_add_checkpoint

ORIGIN = "test.example/mirrored"
PURPOSE = "dpv:Marketing"


class MirrorProcess:
    """`consent-ledger mirror` in its own process; URL and cosigner key from its output."""

    def __init__(self, data_dir: Path, log_url: str, *args: str) -> None:
        self.data_dir, self.log_url, self.args = data_dir, log_url, args
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = self.vkey = ""
        self.stderr_path = data_dir.parent / f"{data_dir.name}.mirror.log"

    def start(self, timeout: float = 30.0) -> MirrorProcess:
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "mirror", "--log", self.log_url,
                 "--data", str(self.data_dir), "--port", "0", *self.args],
                stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        NodeProcess.started.append(self.proc)  # killed at the session's end whatever happens
        first, second = self._lines(2, timeout)
        self.url = first.rsplit(" ", 1)[-1]
        self.vkey = second.rsplit(" ", 1)[-1]
        return self

    def _lines(self, n: int, timeout: float) -> list[str]:
        assert self.proc is not None and self.proc.stdout is not None
        deadline, out = time.monotonic() + timeout, b""
        while out.count(b"\n") < n:
            ready, _, _ = select.select([self.proc.stdout], [], [],
                                        max(0.0, deadline - time.monotonic()))
            chunk = os.read(self.proc.stdout.fileno(), 4096) if ready else b""
            if not chunk:
                self.kill()
                raise AssertionError(f"the mirror did not start: {self.stderr()}")
            out += chunk
        return out.decode().splitlines()[:n]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def evidence(self) -> list[dict[str, object]]:
        root = self.data_dir / "evidence"
        return [json.loads((d / "summary.json").read_text()) | {"dir": str(d)}
                for d in sorted(root.iterdir()) if not d.name.startswith(".")] \
            if root.exists() else []


async def until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        # Yield to the loop between polls; the deadline, not this pause, decides.
        await asyncio.sleep(0.05)


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes, str]:
    async with session.get(url) as resp:
        return resp.status, await resp.read(), resp.headers.get("Cache-Control", "")


async def checkpoint_of(session: aiohttp.ClientSession, url: str) -> Checkpoint | None:
    status, body, _ = await get(session, f"{url}/checkpoint")
    return parse_checkpoint(split_note(body)[0]) if status == 200 else None


async def log_vkey(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(f"{url}/v1/keys") as resp:
        return str((await resp.json())["log"])


async def add_grants(session: aiohttp.ClientSession, node: NodeProcess, n: int) -> None:
    """Register a controller and record n grants, in batches."""
    controller = f"c{os.urandom(4).hex()}.example"
    key = await register_controller(session, node.url, node.data_dir / "operator.key",
                                    controller=controller)
    t = now_ms()
    events = [sign_event(grant(controller=controller, subject=os.urandom(32),
                               purposes=(PURPOSE,), consented_at=t, valid_until=t + 3_600_000,
                               token_hash=token_hash(os.urandom(32))), key)
              for _ in range(n)]
    for i in range(0, n, 200):
        status, body, _ = await post(session, node.url, events[i:i + 200])
        assert status == 200, body


async def wait_converged(session: aiohttp.ClientSession, mirror: MirrorProcess,
                         node_url: str) -> Checkpoint:
    want = await checkpoint_of(session, node_url)
    assert want is not None

    async def same() -> bool:
        return await checkpoint_of(session, mirror.url) == want

    await until(f"the mirror reaches size {want.size}", same)
    return want


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("mirrored") / "data", "--origin", ORIGIN)
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.stderr()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def all_tiles(size: int) -> list[TileId]:
    bundles = [TileId(ENTRIES, n, min(TILE_WIDTH, size - n * TILE_WIDTH))
               for n in range(-(-size // TILE_WIDTH))]
    return [*tiles_for_size(size), *bundles]


async def test_a_mirror_converges_serves_the_same_tiles_and_cosigns(
        node: NodeProcess, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    await add_grants(session, node, 300)  # a full bundle and a partial one
    vkey = await log_vkey(session, node.url)
    (tmp_path / "log.policy").write_text(f"log {vkey}\nquorum none\n")
    mirror = MirrorProcess(tmp_path / "m", node.url, "--policy", str(tmp_path / "log.policy"),
                           "--interval", "0.1").start()
    try:
        want = await wait_converged(session, mirror, node.url)
        for tile in all_tiles(want.size):
            path = format_tile_path(tile)
            ours, theirs = await get(session, f"{mirror.url}/{path}"), \
                await get(session, f"{node.url}/{path}")
            assert ours[0] == 200 and ours == theirs, path
        assert (await get(session, f"{mirror.url}/tile/0/999"))[0] == 404

        # Its cosignature verifies, and a policy with the mirror as witness accepts it.
        _, note, _ = await get(session, f"{mirror.url}/checkpoint")
        opened = open_note(note, [new_cosignature_verifier(mirror.vkey)])
        assert len(opened.signatures) == 1
        open_checkpoint(note, new_verifier(vkey))
        async with session.get(f"{mirror.url}/v1/keys") as resp:
            keys = await resp.json()
        assert keys["mirror"] == mirror.vkey and keys["log"] == vkey
        policy = parse_policy(f"log {vkey}\nwitness m {mirror.vkey}\nquorum m\n")
        trusted = policy.check_checkpoint(note, now=int(time.time()), max_age=60)
        assert trusted.checkpoint == want and [n for n, _ in trusted.cosigned] == ["m"]
        with pytest.raises(Exception, match="does not meet quorum"):
            policy.check_checkpoint((await get(session, f"{node.url}/checkpoint"))[1],
                                    now=int(time.time()), max_age=60)

        # It follows the log as it grows, re-reading the partial bundle it held.
        await add_grants(session, node, 40)
        grown = await wait_converged(session, mirror, node.url)
        assert grown.size > want.size
        last = all_tiles(grown.size)[-1]
        assert await get(session, f"{mirror.url}/{format_tile_path(last)}") == \
            await get(session, f"{node.url}/{format_tile_path(last)}")
        async with session.get(f"{mirror.url}/healthz") as resp:
            health = await resp.json()
        assert (health["size"], health["cosigned_size"], health["refusals"]) == \
            (grown.size, grown.size, 0)
    finally:
        assert mirror.stop() == 0, mirror.stderr()


async def proof(session: aiohttp.ClientSession, url: str, old: int, new: int) -> list[bytes]:
    async with session.get(f"{url}/v1/proofs/consistency?from={old}&to={new}") as resp:
        return [base64.b64decode(h) for h in (await resp.json())["proof"]]


async def push(session: aiohttp.ClientSession, mirror: MirrorProcess, body: bytes
               ) -> tuple[int, bytes, str]:
    async with session.post(f"{mirror.url}/add-checkpoint", data=body) as resp:
        return resp.status, await resp.read(), resp.content_type


async def test_add_checkpoint_cosigns_only_what_is_consistent(
        node: NodeProcess, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    vkey = await log_vkey(session, node.url)
    # One pull at start, then none during the test: every later size comes by push.
    mirror = MirrorProcess(tmp_path / "w", node.url, "--log-key", vkey,
                           "--interval", "3600").start()
    try:
        held = await wait_converged(session, mirror, node.url)
        await add_grants(session, node, 3)
        _, note, _ = await get(session, f"{node.url}/checkpoint")
        new = parse_checkpoint(split_note(note)[0])
        good = format_add_checkpoint(held.size, await proof(session, node.url, held.size,
                                                            new.size), note)
        status, lines, _ = await push(session, mirror, good)
        assert status == 200, lines
        opened = open_note(note + lines, [new_cosignature_verifier(mirror.vkey)])
        assert len(opened.signatures) == 1

        # The same old size again is stale now: 409 with the size it cosigned.
        assert await push(session, mirror, good) == (409, b"%d\n" % new.size,
                                                      "text/x.tlog.size")

        await add_grants(session, node, 3)
        _, note3, _ = await get(session, f"{node.url}/checkpoint")
        size3 = parse_checkpoint(split_note(note3)[0]).size
        hashes = await proof(session, node.url, new.size, size3)
        hashes[0] = bytes([hashes[0][0] ^ 1]) + hashes[0][1:]
        status, body, ctype = await push(session, mirror,
                                         format_add_checkpoint(new.size, hashes, note3))
        assert (status, ctype) == (422, "application/problem+json")
        assert json.loads(body)["type"].endswith("/inconsistent-checkpoint")

        stranger = Ed25519Signer.from_private_key(ORIGIN, Ed25519PrivateKey.generate())
        forged = sign_checkpoint(parse_checkpoint(split_note(note3)[0]), stranger)
        assert (await push(session, mirror, format_add_checkpoint(new.size, [], forged)))[0] \
            == 403
        other = Ed25519Signer.from_private_key("other.example/log",
                                               load_key(node.data_dir / "log.key"))
        unknown = sign_checkpoint(Checkpoint("other.example/log", 1, bytes(32)), other)
        assert (await push(session, mirror, format_add_checkpoint(0, [], unknown)))[0] == 404
        assert (await push(session, mirror, format_add_checkpoint(size3 + 1, [], note3)))[0] \
            == 400
        assert (await push(session, mirror, b"old 1\n"))[0] == 400

        # The cosigned size with another root, signed by the log: a conflict, kept.
        log_signer = Ed25519Signer.from_private_key(ORIGIN, load_key(node.data_dir / "log.key"))
        fork = sign_checkpoint(Checkpoint(ORIGIN, new.size, bytes(32)), log_signer)
        status, body, ctype = await push(session, mirror,
                                         format_add_checkpoint(new.size, [], fork))
        assert (status, ctype) == (409, "application/problem+json")
        assert json.loads(body)["type"].endswith("/conflicting-checkpoint")
        bad_proof, conflict = mirror.evidence()
        assert (bad_proof["kind"], conflict["kind"]) == ("bad-proof", "split-view")
        assert Path(str(bad_proof["dir"]), "request.body").read_bytes().endswith(note3)
        assert Path(str(conflict["dir"]), "cosigned.note").read_bytes() == note
        # A log that asks with the right old size still gets its cosignature.
        status, _, _ = await push(session, mirror, format_add_checkpoint(
            new.size, await proof(session, node.url, new.size, size3), note3))
        assert status == 200
    finally:
        assert mirror.stop() == 0, mirror.stderr()


class SwitchingProxy:
    """Forwards GETs to `upstream`, which a test may switch; may rewrite one entry."""

    def __init__(self, upstream: str, session: aiohttp.ClientSession) -> None:
        self.upstream, self.session = upstream, session
        self.rewrite_entry: int | None = None

    async def handle(self, request: web.Request) -> web.Response:
        async with self.session.get(self.upstream + request.path_qs) as resp:
            body, status = await resp.read(), resp.status
        index = self.rewrite_entry
        if status == 200 and index is not None and request.path.startswith(
                f"/tile/entries/{index // TILE_WIDTH:03d}"):
            body = self._rewrite(body, index % TILE_WIDTH)
        return web.Response(body=body, status=status)

    @staticmethod
    def _rewrite(bundle: bytes, k: int) -> bytes:
        pos = 0
        for _ in range(k):
            pos += 2 + int.from_bytes(bundle[pos:pos + 2], "big")
        end = pos + 2 + int.from_bytes(bundle[pos:pos + 2], "big")
        return bundle[:end - 1] + bytes([bundle[end - 1] ^ 1]) + bundle[end:]


@pytest.fixture
async def proxy(node: NodeProcess) -> AsyncIterator[tuple[SwitchingProxy, str]]:
    async with aiohttp.ClientSession() as upstream:
        p = SwitchingProxy(node.url, upstream)
        app = web.Application()
        app.router.add_get("/{path:.*}", p.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        try:
            yield p, f"http://{host}:{port}"
        finally:
            await runner.cleanup()


async def test_a_rewritten_entry_is_caught_with_its_index(
        node: NodeProcess, session: aiohttp.ClientSession, tmp_path: Path,
        proxy: tuple[SwitchingProxy, str]) -> None:
    p, url = proxy
    p.rewrite_entry = 5
    # The module's node is shared: whatever ran before, its log must hold entry 5.
    served = await checkpoint_of(session, node.url)
    if served is None or served.size < 6:
        await add_grants(session, node, 6)
    mirror = MirrorProcess(tmp_path / "r", url, "--log-key", await log_vkey(session, node.url),
                           "--interval", "0.1").start()
    try:
        async def refused() -> bool:
            return bool(mirror.evidence())

        await until("the mirror reports the rewritten entry", refused)
        (report,) = mirror.evidence()
        assert report["index"] == 5 and report["kind"] == "bad-entry", report
        assert "entry 5" in str(report["reason"])
        assert Path(str(report["dir"]), "entry-5.served").exists()
        # Nothing unverified is served, and the refusal is counted once.
        assert (await get(session, f"{mirror.url}/checkpoint"))[0] == 503
        assert (await get(session, f"{mirror.url}/tile/entries/000.p/1"))[0] == 404
        async with session.get(f"{mirror.url}/metrics") as resp:
            assert "consent_ledger_mirror_refusals_total 1\n" in await resp.text()
    finally:
        assert mirror.stop() == 0, mirror.stderr()
    assert "entry 5" in mirror.stderr()


async def test_a_rollback_and_a_split_view_are_refused_with_evidence(
        session: aiohttp.ClientSession, tmp_path: Path) -> None:
    first = NodeProcess(tmp_path / "first", "--origin", ORIGIN + "-split")
    first.start()
    second = NodeProcess(tmp_path / "second", "--origin", ORIGIN + "-split")
    try:
        await add_grants(session, first, 20)
        (tmp_path / "second").mkdir()
        shutil.copy2(first.data_dir / "log.key", second.data_dir / "log.key")
        async with aiohttp.ClientSession() as upstream:
            p = SwitchingProxy(first.url, upstream)
            app = web.Application()
            app.router.add_get("/{path:.*}", p.handle)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            url = "http://{}:{}".format(*runner.addresses[0][:2])
            mirror = MirrorProcess(tmp_path / "m", url, "--log-key",
                                   await log_vkey(session, first.url), "--interval", "0.1")
            try:
                mirror.start()
                held = await wait_converged(session, mirror, first.url)
                _, held_note, _ = await get(session, f"{mirror.url}/checkpoint")
                second.start()  # the same origin and key, a history of its own
                p.upstream = second.url

                def reported(kind: str) -> Callable[[], Awaitable[bool]]:
                    async def check() -> bool:
                        return any(e["kind"] == kind for e in mirror.evidence())
                    return check

                await until("the rollback is reported", reported("rollback"))
                await add_grants(session, second, 30)
                await until("the split view is reported", reported("split-view"))
                # Each smaller checkpoint the second log signed on its way is one rollback.
                *rollbacks, split = reported_all = mirror.evidence()
                assert {r["kind"] for r in rollbacks} == {"rollback"}
                assert split["kind"] == "split-view"
                assert split["index"] == 0  # the genesis entries differ
                for report in reported_all:
                    d = Path(str(report["dir"]))
                    assert (d / "held.note").read_bytes() == held_note
                    offered = parse_checkpoint(split_note((d / "offered.note").read_bytes())[0])
                    assert offered.origin == held.origin and offered != held
                assert {"entry-0.held", "entry-0.served"} <= set(
                    os.listdir(str(split["dir"])))
                # The good copy is still what it serves.
                assert (await get(session, f"{mirror.url}/checkpoint"))[1] == held_note
                async with session.get(f"{mirror.url}/healthz") as resp:
                    assert (await resp.json())["refusals"] == len(reported_all)
            finally:
                mirror.kill()
                await runner.cleanup()
    finally:
        first.kill()
        second.kill()


async def test_a_mirror_killed_mid_pull_resumes_and_its_copy_verifies(
        node: NodeProcess, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    await add_grants(session, node, 600)
    vkey = await log_vkey(session, node.url)
    data = tmp_path / "k"
    first = MirrorProcess(data, node.url, "--log-key", vkey, "--interval", "0.1").start()

    async def pulling() -> bool:
        async with session.get(f"{first.url}/metrics") as resp:
            return "consent_ledger_mirror_pulls_total 0\n" not in await resp.text()

    await until("the first pull has begun", pulling)
    first.kill()  # most likely while it verifies some 1,500 entries
    # Restarted without the key: the data directory pins the log it mirrors.
    again = MirrorProcess(data, node.url, "--interval", "0.1").start()
    try:
        want = await wait_converged(session, again, node.url)
        verified = await verify_log(session, again.url, vkey)
        assert verified.checkpoint == want
        assert again.evidence() == []
    finally:
        assert again.stop() == 0, again.stderr()
    other_key = generate_key(ORIGIN)[1]
    wrong = cli("mirror", "--log", node.url, "--data", str(data), "--log-key", other_key)
    assert "mirrors the log with key" in one_line_error(wrong, 1)


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    assert "--log" in one_line_error(cli("mirror", "--data", str(tmp_path)), 1)
    assert "http" in one_line_error(cli("mirror", "--log", "ftp://x", "--data",
                                        str(tmp_path)), 1)
    assert "verifier key" in one_line_error(cli("mirror", "--log", "http://127.0.0.1:1",
                                                "--data", str(tmp_path), "--log-key", "x"), 1)
    (tmp_path / "two.policy").write_text(
        f"log {generate_key('a.example/x')[1]}\nlog {generate_key('b.example/y')[1]}\n"
        "quorum none\n")
    assert "names 2 logs" in one_line_error(cli("mirror", "--log", "http://127.0.0.1:1", "--data",
                              str(tmp_path), "--policy", str(tmp_path / "two.policy")), 1)
    assert "needs the log's key" in one_line_error(
        cli("mirror", "--log", "http://127.0.0.1:1", "--data", str(tmp_path / "new")), 1)
