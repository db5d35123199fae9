"""A consent-ledger node: storage, sequencing, HTTP API. All I/O lives here."""
