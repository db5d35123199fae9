"""The consent-ledger SDK and command line: trusts no node, verifies every answer."""
