"""`consent-ledger`: the node's commands, and the client's commands by delegation.

Errors reach the user as one readable line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from client.command import one_line
from client.errors import ClientError
from ledger.errors import LedgerError
from node.app import create_app
from node.config import ConfigError, NodeConfig, load_config
from node.logs import setup_logging
from node.serving import serve_until_signalled
from node.storage import StorageError

NODE_COMMANDS = ("node", "up", "cluster", "mirror", "fsck")


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


async def _serve(config: NodeConfig) -> int:
    return await serve_until_signalled(create_app(config), config.host, config.port,
                                       name="consent-ledger node")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # Whoever read the output went away (`| head`): the rest has no reader, and
        # Python's own flush at exit must not fail on it either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE  # what a shell reports for a command SIGPIPE ended


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in NODE_COMMANDS:
        from client.cli import main as client_main

        return client_main(argv)
    if argv[0] == "fsck":
        from node.fsck import fsck_main

        return _reporting_errors(lambda: fsck_main(argv[1:]))
    if argv[0] == "mirror":
        from node.mirror_app import mirror_main

        return mirror_main(argv[1:])
    if argv[0] in ("cluster", "up"):
        from node.cluster_cli import cluster_main, up_main

        setup_logging("warning")
        run_cluster_command = cluster_main if argv[0] == "cluster" else up_main
        return _reporting_errors(lambda: run_cluster_command(argv[1:]))
    parser = argparse.ArgumentParser(prog="consent-ledger")
    sub = parser.add_subparsers(dest="command", required=True)
    node = sub.add_parser("node", help="run a ledger node (one, or a cluster member)")
    _node_flags(node)
    args = parser.parse_args(argv)

    def run() -> int:
        config = _config(args)
        setup_logging(config.log_level)
        return asyncio.run(_serve(config))

    return _reporting_errors(run)


def _reporting_errors(run: Callable[[], int]) -> int:
    """Run a command; errors reach the user as one line and a non-zero exit."""
    try:
        return run()
    except BrokenPipeError:
        raise  # nobody reads the output any more: main() ends quietly
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
