"""Property tests (hypothesis), with moderate example counts; ``fuzz/run.py`` runs the
same properties with many more."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from .strategies import PROPERTIES

#: Examples per property in the unit suite (the fuzz harness runs thousands).
EXAMPLES = {
    "roundtrip": 300,
    "batch_roundtrip": 60,
    "chunking": 150,
    "hostile": 250,
    "codecs_bytes": 400,
    "codecs_values": 200,
}


@pytest.mark.parametrize("name", sorted(PROPERTIES))
def test_property(name: str) -> None:
    check, strategies = PROPERTIES[name]
    test: Any = settings(
        max_examples=EXAMPLES[name],
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )(given(**strategies)(check))
    test()


def test_every_property_is_run() -> None:
    assert set(EXAMPLES) == set(PROPERTIES)
