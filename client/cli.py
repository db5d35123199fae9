"""The client-side commands of `consent-ledger` (the node's own live in node/cli.py)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: consent-ledger COMMAND [options]

commands:
  node      run a ledger node or cluster member     (consent-ledger node --help)
  up        run a local 3-member cluster + the demo (consent-ledger up --help)
  cluster init|up
            make a cluster's files; run its members (consent-ledger cluster --help)
  demo      drive the demo workload into a log      (consent-ledger demo --help)
  keygen    write a new Ed25519 key file            (consent-ledger keygen --help)
  controller register|rotate|retire
            manage controller keys (operator)       (consent-ledger controller --help)
  grant     record a consent, write its receipt     (consent-ledger grant --help)
  revoke    revoke a grant (controller or person)   (consent-ledger revoke --help)
  status    a consent's current status, verified    (consent-ledger status --help)
  verify    replay the whole log from genesis       (consent-ledger verify --help)
  audit     full audit with mirrors and a report    (consent-ledger audit --help)
  receipt verify|refresh|show
            check, refresh or export a receipt      (consent-ledger receipt verify --help)
"""


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], list(argv[1:])
    if command == "demo":
        from client.demo import demo_main

        return demo_main(rest)
    if command == "keygen":
        from client.admin import keygen_main

        return keygen_main(rest)
    if command == "controller":
        from client.admin import controller_main

        return controller_main(rest)
    if command == "audit":
        from client.audit_cli import audit_main

        return audit_main(rest)
    if command in ("grant", "revoke", "status", "verify"):
        from client.consent_cli import consent_main

        return consent_main(command, rest)
    if command == "receipt":
        from client.receipt_cli import receipt_main

        return receipt_main(rest)
    print(f"consent-ledger: error: unknown command {command!r} (see consent-ledger --help)",
          file=sys.stderr)
    return 2
