"""RFC 9457 problem details: every error the API returns, with a stable type."""

from __future__ import annotations

import json
from typing import Any, NoReturn

from aiohttp import web

from ledger.errors import (
    DecodeError,
    MalformedError,
    NonCanonicalError,
    OversizeError,
    RejectedError,
)

PROBLEM_BASE = "https://consent-ledger.dev/problems/"
CONTENT_TYPE = "application/problem+json"

STATUS: dict[str, int] = {
    "malformed": 400,
    "non-canonical": 400,
    "invalid-field": 400,
    "out-of-range": 400,
    "too-large": 413,
    "unsupported-media-type": 415,
    "not-found": 404,
    "method-not-allowed": 405,
    "bad-signature": 403,
    "unknown-key": 403,
    "wrong-controller": 403,
    "key-retired": 403,
    "not-operator": 403,
    "bad-token": 403,
    "log-authored": 403,
    "bad-status-root": 409,
    "clock-skew": 422,
    "unknown-grant": 409,
    "already-revoked": 409,
    "nothing-to-revoke": 409,
    "duplicate-key": 409,
    "genesis-exists": 409,
    "no-genesis": 409,
    "duplicate-event": 409,
    "time-regressed": 409,
    "unauthorized-peer": 401,
    "not-leader": 409,
    "cosign-refused": 409,
    "membership-change": 409,
    "overloaded": 503,
    "unavailable": 503,
    "no-leader": 503,
    "internal": 500,
}

TITLES: dict[str, str] = {
    "malformed": "The request body is not well-formed",
    "non-canonical": "The event is not canonically encoded",
    "invalid-field": "A field is missing, unknown or invalid",
    "out-of-range": "A parameter is out of range",
    "too-large": "Too large",
    "unsupported-media-type": "Unsupported media type",
    "not-found": "Not found",
    "method-not-allowed": "Method not allowed",
    "bad-signature": "The signature does not verify",
    "unknown-key": "The signing key is not registered",
    "wrong-controller": "The key belongs to another controller",
    "key-retired": "The signing key is retired",
    "not-operator": "Only the log operator may do this",
    "bad-token": "The revocation token does not match",
    "log-authored": "Only the log writes this kind of entry",
    "bad-status-root": "The status root does not match the entries",
    "clock-skew": "The event's time is too far from the log's clock",
    "unknown-grant": "No such grant",
    "already-revoked": "The grant is already revoked",
    "nothing-to-revoke": "No consent in force to revoke",
    "duplicate-key": "The key is already registered",
    "genesis-exists": "The log already has a genesis entry",
    "no-genesis": "The log has no genesis entry yet",
    "duplicate-event": "The event is already in the log",
    "time-regressed": "The log's clock ran backwards",
    "overloaded": "The node is overloaded",
    "unavailable": "The node is not accepting writes",
    "internal": "Internal error",
    "unauthorized-peer": "Not an authenticated cluster member",
    "not-leader": "Not from the leader this member follows",
    "cosign-refused": "This member will not cosign that checkpoint",
    "membership-change": "The membership change cannot be made now",
    "no-leader": "The cluster has no reachable leader right now",
}


def problem(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + code,
        "title": TITLES.get(code, code),
        "status": STATUS.get(code, 400),
        "detail": detail,
    }
    body.update(extra)
    return body


def code_of(exc: BaseException) -> str:
    if isinstance(exc, RejectedError):
        return exc.code
    if isinstance(exc, OversizeError):
        return "too-large"
    if isinstance(exc, NonCanonicalError):
        return "non-canonical"
    if isinstance(exc, MalformedError):
        return "malformed"
    if isinstance(exc, DecodeError):
        return "invalid-field"
    return "internal"


def problem_of(exc: BaseException) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if isinstance(exc, DecodeError) and exc.field:
        extra["field"] = exc.field
    return problem(code_of(exc), str(exc), **extra)


class ProblemResponse(web.HTTPException):
    """An HTTP error whose body is a problem document."""

    def __init__(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self.status_code = int(body["status"])
        super().__init__(text=json.dumps(body), content_type=CONTENT_TYPE, headers=headers)
        self.problem = body


def raise_problem(code: str, detail: str, headers: dict[str, str] | None = None,
                  **extra: Any) -> NoReturn:
    raise ProblemResponse(problem(code, detail, **extra), headers=headers)
