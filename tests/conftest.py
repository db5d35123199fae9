import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Test helpers (factories, reference implementations) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True, scope="session")
def _no_node_outlives_the_session() -> Iterator[None]:
    yield
    from nodeproc import NodeProcess

    NodeProcess.kill_all()
