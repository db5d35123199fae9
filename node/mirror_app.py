"""`consent-ledger mirror`: the mirror's aiohttp app and its command.

It serves the same tlog-tiles read API as a node (node/read_api.py) from its verified
copy, `/checkpoint` carrying its own cosignature; `GET /v1/keys`, `/healthz`, `/metrics`;
and `POST /add-checkpoint` (c2sp.org/tlog-witness), so that a log can push checkpoints
and get cosignatures back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import aiohttp
from aiohttp import web

from client.command import one_line
from client.errors import ClientError
from client.keys import generate_key_file, load_private_key
from client.policy import parse_policy
from ledger.errors import LedgerError
from ledger.note import new_verifier
from ledger.witness import MAX_REQUEST_SIZE, SIZE_CONTENT_TYPE
from node.app import problems_middleware
from node.config import ConfigError
from node.logs import setup_logging
from node.mirror import Mirror
from node.problems import CONTENT_TYPE, problem
from node.read_api import SERVED_LOG, add_read_routes
from node.serving import serve_until_signalled
from node.storage import StorageError

log = logging.getLogger("consent_ledger.mirror")

MIRROR: web.AppKey[Mirror] = web.AppKey("mirror", Mirror)

# tlog-witness verdicts as problem types; 200 and the stale-size 409 have bodies of
# their own that the spec fixes.
_WITNESS_PROBLEMS = {400: "malformed", 403: "untrusted-checkpoint", 404: "unknown-log",
                     409: "conflicting-checkpoint", 422: "inconsistent-checkpoint"}


@dataclass(frozen=True)
class MirrorConfig:
    log_url: str
    data_dir: Path
    log_vkey: str | None  # None: the one this data directory already mirrors
    host: str = "127.0.0.1"
    port: int = 8081
    interval_s: float = 2.0
    name: str | None = None

    @property
    def cosigner_key_path(self) -> Path:
        return self.data_dir / "mirror.key"


async def add_checkpoint(request: web.Request) -> web.Response:
    mirror = request.app[MIRROR]
    if request.content_length is not None and request.content_length > MAX_REQUEST_SIZE:
        return _problem(413, "too-large", f"at most {MAX_REQUEST_SIZE} bytes are accepted")
    verdict, lines = await mirror.add_checkpoint(await request.read())
    if verdict.accepted:
        return web.Response(body=lines, content_type="text/plain", charset="utf-8")
    if verdict.latest_size is not None:
        return web.Response(status=409, body=verdict.size_body(),
                            content_type=SIZE_CONTENT_TYPE)
    return _problem(verdict.status, _WITNESS_PROBLEMS[verdict.status], verdict.reason)


def _problem(status: int, code: str, detail: str) -> web.Response:
    return web.Response(status=status, content_type=CONTENT_TYPE,
                        text=json.dumps(problem(code, detail, status=status)))


async def get_keys(request: web.Request) -> web.Response:
    mirror = request.app[MIRROR]
    return web.json_response({"origin": mirror.origin, "log": mirror.log_vkey,
                              "mirror": mirror.cosigner_vkey,
                              "cosigners": [mirror.cosigner_vkey]})


async def healthz(request: web.Request) -> web.Response:
    mirror = request.app[MIRROR]
    witnessed = mirror.witnessed
    return web.json_response({
        "status": "ok", "origin": mirror.origin, "log": mirror.log_url,
        "size": mirror.size, "cosigned_size": witnessed.size if witnessed else 0,
        "refusals": mirror.evidence.count, "last_refusal": mirror.last_refusal,
        "last_error": mirror.last_error})


async def metrics(request: web.Request) -> web.Response:
    mirror = request.app[MIRROR]
    witnessed = mirror.witnessed
    text = (f"consent_ledger_mirror_size {mirror.size}\n"
            f"consent_ledger_mirror_cosigned_size {witnessed.size if witnessed else 0}\n"
            f"consent_ledger_mirror_pulls_total {mirror.pulls}\n"
            f"consent_ledger_mirror_refusals_total {mirror.evidence.count}\n")
    return web.Response(text=text, content_type="text/plain",
                        headers={"Cache-Control": "no-store"})


def create_mirror_app(config: MirrorConfig) -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_SIZE, middlewares=[problems_middleware])

    async def mirror_ctx(app: web.Application) -> AsyncIterator[None]:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        path = config.cosigner_key_path
        key = load_private_key(path) if path.exists() else generate_key_file(path)
        mirror = await Mirror.open(log_url=config.log_url, data_dir=config.data_dir,
                                   log_vkey=config.log_vkey, cosigner_key=key,
                                   name=config.name)
        app[MIRROR] = mirror
        app[SERVED_LOG] = mirror
        try:
            yield
        finally:
            await mirror.close()

    async def puller_ctx(app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=60, sock_connect=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            task = asyncio.create_task(app[MIRROR].run(session, config.interval_s),
                                       name="mirror-puller")
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app.cleanup_ctx.extend([mirror_ctx, puller_ctx])
    add_read_routes(app)
    app.router.add_post("/add-checkpoint", add_checkpoint)
    app.router.add_get("/v1/keys", get_keys)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


# ---------------------------------------------------------------- the command


def _log_key(args: argparse.Namespace) -> str | None:
    if args.log_key is not None:
        new_verifier(args.log_key)  # one readable line if it is not an Ed25519 vkey
        return str(args.log_key)
    if args.policy is None:
        return None
    try:
        text = Path(args.policy).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{args.policy}: cannot read the policy: {exc.strerror}") from None
    logs = parse_policy(text).logs
    if len(logs) != 1:
        raise ConfigError(f"{args.policy} names {len(logs)} logs; a mirror follows one: "
                          "give --log-key")
    return logs[0].vkey


def parse_args(argv: Sequence[str]) -> MirrorConfig:
    parser = _Parser(prog="consent-ledger mirror",
                                     description="mirror a log and witness its checkpoints")
    parser.add_argument("--log", required=True, metavar="URL", help="the log's base URL")
    parser.add_argument("--data", required=True, type=Path, help="data directory")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--log-key", metavar="VKEY", help="the log's verifier key")
    keys.add_argument("--policy", metavar="FILE", help="a tlog-policy file naming the log")
    parser.add_argument("--name", help="the cosigner key's name (default: from the key)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    parser.add_argument("--interval", type=float, default=2.0, metavar="S",
                        help="seconds between polls of the log's checkpoint")
    parser.add_argument("--log-level", default="info",
                        choices=("debug", "info", "warning", "error"))
    args = parser.parse_args(argv)
    if not args.log.startswith(("http://", "https://")):
        raise ConfigError(f"--log {args.log!r} is not an http(s) URL")
    if not 0.01 <= args.interval <= 86_400:
        raise ConfigError("--interval must be between 0.01 and 86400 seconds")
    if not 0 <= args.port <= 65_535:
        raise ConfigError(f"--port {args.port} is not a port")
    setup_logging(args.log_level)
    return MirrorConfig(log_url=args.log, data_dir=args.data, log_vkey=_log_key(args),
                        host=args.host, port=args.port, interval_s=args.interval,
                        name=args.name)


async def serve(config: MirrorConfig) -> int:
    app = create_mirror_app(config)
    return await serve_until_signalled(
        app, config.host, config.port, name="consent-ledger mirror",
        announce=lambda url: print(f"cosigner key  {app[MIRROR].cosigner_vkey}", flush=True))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def mirror_main(argv: Sequence[str]) -> int:
    """Run the mirror; errors reach the user as one line and a non-zero exit."""
    try:
        return asyncio.run(serve(parse_args(argv)))
    except (ConfigError, StorageError, ClientError, LedgerError, OSError) as exc:
        print(f"consent-ledger mirror: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # no traceback for the user; the log keeps it
        log.exception("mirror failed")
        print(f"consent-ledger mirror: internal error: {type(exc).__name__}: "
              f"{one_line(exc)}", file=sys.stderr)
        return 1
