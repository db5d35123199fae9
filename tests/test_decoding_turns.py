"""A node that decodes request bodies on its event loop decodes one per turn of the
loop: many bodies sent at once never hold the loop for long, so that whatever else runs
on it (a cluster's heartbeats, acknowledgements, reads) keeps its pace."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from factories import grant
from nodeclient import msgpack_body, now_ms, register_controller

from ledger.signed import sign_batch
from node.app import create_app
from node.config import NodeConfig

BODIES = 60  # of 100 events each, sent at once


async def test_many_bodies_at_once_never_hold_the_loop_for_long(tmp_path: Path) -> None:
    config = NodeConfig(data_dir=tmp_path / "node", decode_process=False,
                        origin="turns.example/log")
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            key = await register_controller(s, url, config.operator_key_path)
            t = now_ms()
            bodies = [msgpack_body(sign_batch([
                grant(subject=bytes([b]) * 28 + i.to_bytes(4, "big"), consented_at=t,
                      valid_until=t + 10**9) for i in range(100)], key))
                for b in range(BODIES)]
            gaps: list[float] = []
            done = asyncio.Event()

            async def probe() -> None:
                while not done.is_set():
                    started = time.perf_counter()
                    await asyncio.sleep(0.005)  # measures the loop's lateness
                    gaps.append(time.perf_counter() - started - 0.005)

            async def send(body: bytes) -> int:
                async with s.post(f"{url}/v1/events", data=body,
                                  headers={"Content-Type": "application/msgpack"}) as resp:
                    await resp.read()
                    return resp.status

            watcher = asyncio.create_task(probe())
            statuses = await asyncio.gather(*(send(b) for b in bodies))
            done.set()
            await watcher
        # What the intake budget admits at once is decoded; the rest is refused (503).
        assert set(statuses) <= {200, 503} and statuses.count(200) >= 20, statuses
        # Decoded side by side, the admitted bodies held the loop for one turn of about
        # 10 ms each; one per turn, no turn is much longer than one body's.
        assert max(gaps) < 0.2, sorted(gaps)[-5:]
    finally:
        await runner.cleanup()
