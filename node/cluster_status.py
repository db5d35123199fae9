"""`consent-ledger cluster status --dir DIR`: every member's view of the cluster, side by side.

Each member of DIR's cluster file is asked, all at once, for `/v1/cluster` and `/readyz`;
one line per member shows its role, term, the leader it follows, its checkpoint and
published sizes, its lag as the leader sees it, and whether it is ready (or why not, or
that it did not answer). The exit status says whether the cluster takes writes: 0 when a
majority of the voters answer, are ready and follow one leader that says it leads; 1
otherwise, for scripts and alerts. The members' answers are their own word, unsigned:
this is an operator's view of health, not a proof (`consent-ledger audit` is that).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import aiohttp

from node.cluster_config import ClusterConfig

ASK_TIMEOUT_S = 2.0


@dataclasses.dataclass
class MemberView:
    id: str
    url: str
    info: dict[str, Any] | None  # its /v1/cluster, or None: it did not answer
    ready: bool
    why: str  # "ready", the reason it is not, or the error that reached no answer


async def gather_views(cluster: ClusterConfig, timeout: float = ASK_TIMEOUT_S
                       ) -> list[MemberView]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        return list(await asyncio.gather(*(_view(session, m.id, m.url)
                                           for m in cluster.members)))


async def _view(session: aiohttp.ClientSession, member: str, url: str) -> MemberView:
    try:
        async with session.get(url + "/v1/cluster") as resp:
            info = json.loads(await resp.read()) if resp.status == 200 else None
        async with session.get(url + "/readyz") as resp:
            answer = json.loads(await resp.read() or b"{}")
            ready = resp.status == 200
            why = "ready" if ready else str(answer.get("detail", f"HTTP {resp.status}"))
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return MemberView(member, url, None, False,
                          f"no answer ({str(exc) or type(exc).__name__})")
    if not isinstance(info, dict):
        return MemberView(member, url, None, ready, "no cluster view (not a member?)")
    return MemberView(member, url, info, ready, why)


def voters_now(views: Sequence[MemberView], cluster: ClusterConfig) -> set[str]:
    """The voters as the member in the newest term knows them (members are added and
    removed after `cluster init`); the cluster file's if none answered."""
    newest = max((v.info for v in views if v.info is not None),
                 key=lambda info: info["term"], default=None)
    return set(newest["voters"]) if newest is not None else set(cluster.voters)


def judge(views: Sequence[MemberView], cluster: ClusterConfig) -> tuple[bool, str]:
    """Whether the cluster takes writes, and a line saying why."""
    answered = {v.id: v.info for v in views if v.info is not None}
    voters = voters_now(views, cluster)
    quorum = len(voters) // 2 + 1
    followed = Counter(answered[v.id]["leader"] for v in views
                       if v.id in answered and v.id in voters and v.ready
                       and answered[v.id]["leader"] is not None)
    if not followed:
        return False, (f"no leader: {len(answered)} of {len(views)} members answered, "
                       f"none ready and following a leader")
    leader, count = followed.most_common(1)[0]
    says = answered.get(leader)
    if says is None or says["role"] != "leader":
        return False, f"{leader} is followed by {count}, but does not say it leads"
    if count < quorum:
        return False, (f"{leader} leads, but only {count} of {len(voters)} voters are ready "
                       f"and follow it ({quorum} needed)")
    return True, (f"{leader} leads term {says['term']}: {count} of {len(voters)} voters "
                  f"ready and following it")


def render(views: Sequence[MemberView], voters: set[str]) -> list[str]:
    lag = {r["member"]: r["lag"] for v in views if v.info and v.info.get("replication")
           for r in v.info["replication"]}
    rows = [("member", "url", "role", "term", "leader", "checkpoint", "published", "lag",
             "ready")]
    for v in views:
        i = v.info or {}
        role = str(i.get("role", "-")) + ("" if v.id in voters else " (not a voter)")
        rows.append((v.id, v.url, role, str(i.get("term", "-")),
                     str(i.get("leader") or "-"), str(i.get("checkpoint_size", "-")),
                     str(i.get("published_size", "-")), str(lag.get(v.id, "-")),
                     "yes" if v.ready else f"no: {v.why}"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)) + "  " + r[-1]
            for r in rows]


def as_json(views: Sequence[MemberView], healthy: bool, summary: str) -> str:
    return json.dumps({"healthy": healthy, "summary": summary,
                       "members": [dataclasses.asdict(v) for v in views]}, indent=2)
