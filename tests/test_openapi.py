"""The OpenAPI document, checked against a running node by schemathesis.

Every generated request must get a documented status, a body matching the schema and
never a 5xx; errors must be problem documents.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from nodeproc import NodeProcess
from schemathesis.config import SchemathesisConfig

SPEC = Path(__file__).resolve().parents[1] / "node" / "openapi.yaml"


@pytest.fixture(scope="module")
def api_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("openapi") / "data", "--origin",
                       "test.example/openapi")
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.stderr()


# 413 is how the node refuses an oversized body or batch: a rejection like any 4xx.
# A schema cannot say "base64 of a canonical, signed event", so a schema-valid body may
# still be refused with 400/403/409/422: accepted data is checked by the other tests.
CONFIG = SchemathesisConfig.from_str("""
[checks.negative_data_rejection]
expected-statuses = ["400", "403", "404", "405", "409", "413", "415", "422"]
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "403", "404", "409", "413", "422"]
""")
schema = schemathesis.openapi.from_path(SPEC, config=CONFIG)


@schemathesis.serializer("application/msgpack")
def _msgpack_body(ctx, value):  # type: ignore[no-untyped-def]
    """The schema's msgpack body is opaque bytes: send them as they are."""
    return value if isinstance(value, bytes) else msgpack.packb(value)


@schema.parametrize()
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_api_conforms(case, api_node: NodeProcess) -> None:  # type: ignore[no-untyped-def]
    case.call_and_validate(base_url=api_node.url)


def test_node_serves_its_openapi_document(api_node: NodeProcess) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{api_node.url}/openapi.yaml") as resp:
        assert resp.status == 200
        assert resp.read() == SPEC.read_bytes()
