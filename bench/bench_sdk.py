"""The consent SDK: verified require() decisions per second.

    python -m bench.bench_sdk [--subjects N] [--seconds S]

A real node process gets N grants; one status answer per subject is recorded, and a
witness of the benchmark cosigns the checkpoint they share (the policy's quorum).
Then ConsentClient.require runs on one core, in three settings:

- verified: the checkpoint is already verified (trust store and policy check done
  once), the decision cache is off, and GET /v1/status is replaced by the recorded
  reply bytes, so each decision costs the JSON decode and a full check of a fresh
  status proof (inclusion of the status root, the map proof, the decision) and nothing
  of HTTP;
- cached: the same with the decision cache on, every key already cached;
- end to end: against the node over HTTP, the cache off, 32 concurrent requires
  (the node and the client share the machine's cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.bench_node import seed_grants
from client.consent import ConsentClient
from client.policy import TrustPolicy, parse_policy
from client.trust_store import TrustStore
from ledger.cosignature import CosignatureSigner, add_cosignatures, cosigner_verifier_key
from ledger.note import Signature
from ledger.status import ConsentStatus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nodeproc import NodeProcess  # the tests' process harness

CONTROLLER = "shop.example"
PURPOSE = "dpv:Marketing"
MAX_AGE_S = 3600
_WITNESS_KEY = Ed25519PrivateKey.from_private_bytes(b"\x5b" * 32)
WITNESS = CosignatureSigner.from_private_key("bench.example/witness", _WITNESS_KEY)


class ReplayedClient(ConsentClient):
    """The SDK with GET /v1/status answered from recorded reply bytes, not the network.

    Only the transport is replaced: each reply is decoded anew, and every check after
    it is the SDK's own.
    """

    def __init__(self, replies: dict[str, bytes], **kwargs: Any) -> None:
        super().__init__("http://replayed.invalid", **kwargs)
        self._replies = replies

    async def _get_json(self, path: str, params: dict[str, Any]) -> Any:
        if path != "/v1/status":
            raise AssertionError(f"a replayed client asked for {path}")
        return json.loads(self._replies[params["subject"]])


def cosigned(reply: bytes, now: int) -> bytes:
    """The reply with the benchmark witness's cosignature on its checkpoint."""
    answer = json.loads(reply)
    note = answer["checkpoint"].encode()
    text = note[:note.index(b"\n\n") + 1]
    line = Signature(WITNESS.name, WITNESS.key_id, WITNESS.sign(text, now))
    answer["checkpoint"] = add_cosignatures(note, [line]).decode()
    return json.dumps(answer).encode()


async def record(url: str, subjects: list[bytes]) -> dict[str, bytes]:
    replies: dict[str, bytes] = {}
    async with aiohttp.ClientSession() as s:
        for subject in subjects:
            async with s.get(f"{url}/v1/status", params={
                    "controller": CONTROLLER, "subject": subject.hex(),
                    "purpose": PURPOSE}) as resp:
                assert resp.status == 200, await resp.text()
                replies[subject.hex()] = await resp.read()
    return replies


async def one_core(policy: TrustPolicy, store: TrustStore, replies: dict[str, bytes],
                   subjects: list[bytes], *, max_cached: int, rounds: int) -> float:
    async with ReplayedClient(replies, policy=policy, trust_store=store,
                              max_age_s=MAX_AGE_S, max_cached=max_cached) as c:
        for subject in subjects:  # the checkpoint verified, and the cache filled if on
            await c.require(CONTROLLER, subject, PURPOSE)
        # CPU time, not wall time: on a shared machine, time spent waiting for a core
        # is not the SDK's.
        started = time.process_time()
        for _ in range(rounds):
            for subject in subjects:
                decision = await c.require(CONTROLLER, subject, PURPOSE)
        elapsed = time.process_time() - started
        assert decision.status is ConsentStatus.GIVEN
    return rounds * len(subjects) / elapsed


async def end_to_end(url: str, policy: TrustPolicy, store: TrustStore,
                     subjects: list[bytes], seconds: float) -> float:
    done = 0
    async with ConsentClient(url, policy=policy, trust_store=store, max_age_s=MAX_AGE_S,
                             max_cached=0) as c:
        await c.require(CONTROLLER, subjects[0], PURPOSE)
        deadline = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal done
            i = offset
            while time.perf_counter() < deadline:
                await c.require(CONTROLLER, subjects[i % len(subjects)], PURPOSE)
                done += 1
                i += 32

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(32)))
        return done / (time.perf_counter() - started)


async def run(subjects_n: int, seconds: float, directory: Path) -> None:
    node = NodeProcess(directory / "node", "--origin", "bench.example/sdk")
    url = node.start()
    try:
        grants, log_vkey = await seed_grants(url, directory / "node", subjects_n)
        subjects = [g.subject for g in grants]
        now = int(time.time())
        replies = {k: cosigned(v, now) for k, v in (await record(url, subjects)).items()}
        witnessed = parse_policy(
            f"log {log_vkey}\n"
            f"witness w1 {cosigner_verifier_key(WITNESS.name, _WITNESS_KEY.public_key())}\n"
            "quorum w1\n")
        store = TrustStore(directory / "trust")
        verified = await one_core(witnessed, store, replies, subjects, max_cached=0, rounds=3)
        print(f"verified require() decisions on one core, checkpoint already verified, "
              f"no decision cache ({subjects_n:,} subjects): {verified:,.0f} /s", flush=True)
        cached = await one_core(witnessed, store, replies, subjects, max_cached=subjects_n,
                                rounds=20)
        print(f"cached require() decisions on one core: {cached:,.0f} /s", flush=True)
        # The node's replies carry no cosignature: over HTTP the log key alone is trusted.
        unwitnessed = parse_policy(f"log {log_vkey}\nquorum none\n")
        e2e = await end_to_end(url, unwitnessed, TrustStore(directory / "trust-e2e"),
                               subjects, seconds)
        print(f"verified require() decisions end to end over HTTP (32 concurrent, no "
              f"decision cache, node on the same machine): {e2e:,.0f} /s", flush=True)
    finally:
        node.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subjects", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        asyncio.run(run(args.subjects, args.seconds, Path(tmp)))


if __name__ == "__main__":
    main()
