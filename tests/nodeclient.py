"""A deliberately plain HTTP client for node tests: raw requests, checks done in the test."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from ledger.events import ControllerRegister
from ledger.signed import SignedEvent, public_bytes, sign_event

CONTROLLER = "shop.example"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def b64d(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def load_key(path: Path) -> Ed25519PrivateKey:
    key = load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def msgpack_body(items: SignedEvent | Sequence[SignedEvent]) -> bytes:
    if isinstance(items, SignedEvent):
        return items.encode()
    return msgpack.packb([s.to_wire() for s in items], use_bin_type=True)


async def post(session: aiohttp.ClientSession, url: str,
               items: SignedEvent | Sequence[SignedEvent]) -> tuple[int, Any, Any]:
    async with session.post(f"{url}/v1/events", data=msgpack_body(items),
                            headers={"Content-Type": "application/msgpack"}) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


async def post_raw(session: aiohttp.ClientSession, url: str, body: bytes,
                   content_type: str = "application/msgpack") -> tuple[int, Any, Any]:
    async with session.post(f"{url}/v1/events", data=body,
                            headers={"Content-Type": content_type}) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


async def register_controller(session: aiohttp.ClientSession, url: str, operator_key_path: Path,
                              controller: str = CONTROLLER) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    event = ControllerRegister(controller=controller, name="Example Shop",
                               contact="dpo@shop.example", key=public_bytes(key),
                               registered_at=now_ms())
    status, body, _ = await post(session, url, sign_event(event, load_key(operator_key_path)))
    assert status == 200, body
    return key


async def await_readiness(session: aiohttp.ClientSession, url: str, status: int, *,
                          timeout: float, why: str) -> Any:
    """Poll GET /readyz until it answers `status` (its JSON body), with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        async with session.get(f"{url}/readyz") as resp:
            if resp.status == status:
                return await resp.json()
        assert loop.time() < deadline, why
        await asyncio.sleep(0.05)  # polling a condition with a deadline
