"""The pure, verifiable core of consent-ledger.

Nothing in this package performs I/O: no sockets, no files, no asyncio, no SQLite.
Every function is deterministic given its inputs (randomness is only drawn where a
caller asks for a new key, salt or token).
"""
