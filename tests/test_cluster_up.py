"""`consent-ledger cluster up` keeps a local cluster running as systemd keeps a real one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import aiohttp
from clusterproc import UpProcess
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import grant
from nodeclient import now_ms, post, register_controller
from nodeproc import wait_gone

from ledger.signed import SignedEvent, sign_batch
from node.member_supervisor import RESTART_BURST, MemberSupervisor, describe_exit


def _batch(key: Ed25519PrivateKey, tag: int) -> list[SignedEvent]:
    t = now_ms()
    return sign_batch([grant(subject=tag.to_bytes(4, "big") + bytes([i]) * 28, consented_at=t,
                             valid_until=t + 10**9) for i in range(20)], key)


def test_a_killed_leader_is_started_again_and_catches_up(tmp_path: Path) -> None:
    up = UpProcess(tmp_path / "cluster")
    try:
        leader, url = up.leader, up.url
        others = [m for m in url if m != leader]
        killed = up.pid(leader)
        assert killed is not None

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            async with aiohttp.ClientSession() as s:
                key = await register_controller(s, url[leader],
                                                up.dir / "keys" / "operator.key")
                os.kill(killed, signal.SIGKILL)
                # The others elect a leader and take writes (a write to a member with no
                # leader yet is refused with 503: sent again until accepted).
                deadline = loop.time() + 60
                tag = 0
                while True:
                    with contextlib.suppress(aiohttp.ClientError):
                        status, body, _ = await post(s, url[others[tag % 2]], _batch(key, tag))
                        if status == 200:
                            break
                    assert loop.time() < deadline, "no write accepted after the kill"
                    tag += 1
                    await asyncio.sleep(0.05)  # the 503's Retry-After, shortened
                # The killed member is back, a new process, caught up with that write.
                size = max(r["index"] for r in body["results"]) + 1
                await up.await_restarted(s, leader, killed, size)

        asyncio.run(scenario())
        assert up.proc.poll() is None  # up goes on

        # A member stopped on purpose (SIGTERM: it exits with 0) stays stopped.
        stopped = up.pid(others[0])
        assert stopped is not None
        os.kill(stopped, signal.SIGTERM)
        up.wait_said(f"member {others[0]} stopped (status 0); not restarted")
        assert wait_gone(stopped) and up.pid(others[0]) is None
        status, err = up.stop()
        assert status == 0, err
        assert f"member {leader} exited with signal SIGKILL; restarting it in 2 s" in err
        assert f"member {others[0]} stopped (status 0); not restarted" in err
        assert all(up.pid(m) is None for m in url)
    finally:
        up.kill_all()


async def test_a_member_that_keeps_dying_is_given_up_on(tmp_path: Path) -> None:
    """A member that cannot live (here a process that exits at once with 3) is started
    RESTART_BURST times, then left stopped; run() ends once no member is left."""
    starts: list[int] = []

    async def start(member_id: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(3)")
        starts.append(proc.pid)
        return proc

    supervisor = MemberSupervisor(start, lambda m: tmp_path / f"{m}.log", pause_s=0.01)
    await supervisor.start("n1")
    await asyncio.wait_for(supervisor.run(), timeout=60)
    assert len(starts) == RESTART_BURST
    assert supervisor.procs["n1"].returncode == 3


def test_exits_are_described_as_a_user_reads_them() -> None:
    assert describe_exit(-9) == "signal SIGKILL"
    assert describe_exit(1) == "status 1"
    assert describe_exit(-200) == "signal 200"
