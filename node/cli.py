"""`consent-ledger`: the node's commands, and the client's commands by delegation.

Errors reach the user as one readable line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from client.command import one_line
from client.errors import ClientError
from ledger.errors import LedgerError
from node.app import create_app
from node.config import ConfigError, NodeConfig, load_config
from node.logs import setup_logging
from node.storage import StorageError

NODE_COMMANDS = ("node", "up")


def _node_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, dest="data_dir", help="data directory")
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8080; 0 picks a free one)")
    parser.add_argument("--origin", help="the log's origin name, fixed at its creation")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))


def _config(args: argparse.Namespace) -> NodeConfig:
    return load_config(file=args.config, data_dir=args.data_dir, host=args.host,
                       port=args.port, origin=args.origin, log_level=args.log_level)


async def _serve(config: NodeConfig, *, then: object = None, once: bool = False) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://{config.host}:{port}"
    print(f"consent-ledger node listening on {url}", flush=True)
    status = 0
    try:
        if callable(then):
            status = await then(url, config)
            if once:
                return status
        await stop.wait()
        print("consent-ledger node: shutting down after the batch in flight", flush=True)
    finally:
        await runner.cleanup()
    return status


async def _up_demo(url: str, config: NodeConfig, events: int, once: bool) -> int:
    # The demo is a client like any other: its own process, so that it neither shares
    # the node's event loop nor its core.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node.cli", "demo", "--log", url,
        "--operator-key", str(config.operator_key_path), "--events", str(events))
    status = await proc.wait()
    if status == 0 and not once:
        print(f"\nThe node keeps serving at {url}; Ctrl-C stops it.", flush=True)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in NODE_COMMANDS:
        from client.cli import main as client_main

        return client_main(argv)
    parser = argparse.ArgumentParser(prog="consent-ledger")
    sub = parser.add_subparsers(dest="command", required=True)
    node = sub.add_parser("node", help="run a ledger node")
    _node_flags(node)
    up = sub.add_parser("up", help="run a node on loopback and drive the demo workload")
    _node_flags(up)
    up.add_argument("--demo-events", type=int, default=2000, metavar="N")
    up.add_argument("--once", action="store_true", help="exit after the demo")
    args = parser.parse_args(argv)
    try:
        config = _config(args)
        setup_logging(config.log_level)
        if args.command == "node":
            return asyncio.run(_serve(config))
        events = args.demo_events

        async def demo(url: str, cfg: NodeConfig) -> int:
            return await _up_demo(url, cfg, events, args.once)

        return asyncio.run(_serve(config, then=demo, once=args.once))
    except (ConfigError, StorageError, ClientError, LedgerError, OSError) as exc:
        print(f"consent-ledger: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # no traceback for the user; the log keeps it
        logging.getLogger("consent_ledger.node").exception("node failed")
        print(f"consent-ledger: internal error: {type(exc).__name__}: {one_line(exc)}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
