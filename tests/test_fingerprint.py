"""alertmanager_fingerprint == Prometheus' LabelSet.Fingerprint(), checked against captured payloads."""
import json
from pathlib import Path

import pytest

from service.parsers.common import alertmanager_fingerprint

FIXTURES = Path(__file__).parents[2] / "shared" / "fixtures" / "alertmanager"
CAPTURED = [
    pytest.param(alert["labels"], alert["fingerprint"], id=f"{path.stem}[{i}]")
    for path in sorted(FIXTURES.glob("*.json"))
    for i, alert in enumerate(json.loads(path.read_text()).get("alerts", []) if path.stem != "_http_requests" else [])
]


def test_every_captured_alert_is_covered():
    assert len(CAPTURED) == 13


@pytest.mark.parametrize(("labels", "fingerprint"), CAPTURED)
def test_matches_alertmanager(labels, fingerprint):
    assert alertmanager_fingerprint(labels) == fingerprint


@pytest.mark.parametrize(("labels", "fingerprint"), [
    ({}, "cbf29ce484222325"),  # the FNV-1a 64 offset basis
    # insertion order must not matter: names are sorted
    ({"service": "s", "alertname": "NowAlert1"}, "478afe75d8e8aa87"),
])
def test_edge_cases(labels, fingerprint):
    assert alertmanager_fingerprint(labels) == fingerprint


def test_separator_keeps_name_and_value_apart():
    assert alertmanager_fingerprint({"ab": "c"}) != alertmanager_fingerprint({"a": "bc"})
