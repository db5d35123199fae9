"""What every client command shares: argument errors as exceptions, failures as one line.

A command body parses its arguments with `Parser` and returns its output; `run_command`
maps every way it can fail to one readable line on stderr and an exit code: 2 for bad
arguments, 1 for anything else (a node that refuses, a file that cannot be read, an
answer that does not verify), 130 for Ctrl-C. Never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import aiohttp

from client.errors import ClientError
from ledger.errors import LedgerError


class UsageError(Exception):
    """Bad arguments: exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:500]


def run_command(command: str, body: Callable[[], str]) -> int:
    """Run a command body that returns its output; map every failure to one line."""
    prog = f"consent-ledger {command}"
    try:
        out = body()
    except UsageError as exc:
        print(f"{prog}: error: {one_line(exc)} (see --help)", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help printed its text
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise  # nobody reads the output any more: the entry point ends quietly
    except (ClientError, LedgerError, OSError, aiohttp.ClientError, TimeoutError) as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # the promise is no traceback, even for a bug of ours
        print(f"{prog}: internal error: {type(exc).__name__}: {one_line(exc)}",
              file=sys.stderr)
        return 1
    print(out)
    return 0
