"""End to end: the served app as a real process, and a real Alertmanager posting to it."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest

from servers import ALERTMANAGER_BIN, running_alertmanager, running_service

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "alertmanager"
REQUESTS: dict[str, dict[str, Any]] = json.loads((FIXTURES / "_http_requests.json").read_text())

# firing before resolved, so every resolve finds the alert it resolves
FIXTURE_ORDER = [
    "firing_group_two_alerts.json",
    "firing_group_one_firing_one_resolved.json",
    "resolved_group_last_alert.json",
    "firing_single_warning_disk_space_low.json",
    "resolved_single_disk_space_low.json",
    "firing_single_critical_high_latency.json",
    "firing_truncated_max_alerts_1.json",
    "firing_minimal_labels_only_nanosecond_startsat.json",
    "prometheus_watchdog_firing.json",
    "prometheus_target_down_firing.json",
    "prometheus_target_down_resolved.json",
    "am_to_pagerduty_v2_trigger.json",
    "am_to_pagerduty_v2_resolve.json",
    "am_to_opsgenie_create.json",
    "am_to_opsgenie_close.json",
]

# the sender's words in the fixtures -> alertlink's level (written out, not taken from the service)
SEVERITY = {"critical": "critical", "error": "high", "warning": "medium", "none": "info", None: "medium"}

POLL_SECONDS = 30.0
T = TypeVar("T")


def client(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=10, trust_env=False)


def endpoint(captured_path: str) -> str:
    """Where the service takes a request that Alertmanager sent to `captured_path`."""
    url = urlsplit(captured_path)
    if url.path == "/pagerduty/v2/enqueue":
        return "/integrations/pagerduty/v2/enqueue"
    if url.path.startswith("/opsgenie/"):
        return "/integrations" + captured_path  # the query string (identifierType) is kept
    return "/integrations/alertmanager"


def expected_alerts(name: str, body: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(fingerprint, severity, status) of the stored alert each id in the answer must name."""
    path = urlsplit(REQUESTS[name]["path"]).path
    if path == "/pagerduty/v2/enqueue":
        status = "resolved" if body["event_action"] == "resolve" else "firing"
        return [(f"pagerduty:{body['dedup_key']}", SEVERITY[body["payload"]["severity"]], status)]
    if path.startswith("/opsgenie/"):
        *_, alias, action = path.split("/")
        if action == "close":
            return [(f"opsgenie:{alias}", "medium", "resolved")]
        # Alertmanager's opsgenie_configs sends no priority here: Opsgenie's default P3
        return [(f"opsgenie:{body['alias']}", "medium", "firing")]
    return [(a["fingerprint"], SEVERITY[a["labels"].get("severity")], a["status"]) for a in body["alerts"]]


def require_alertmanager() -> None:
    if not ALERTMANAGER_BIN.is_file():
        reason = f"{ALERTMANAGER_BIN} missing (apt-get install prometheus-alertmanager)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def poll(what: str, probe: Callable[[], tuple[bool, T]], seconds: float = POLL_SECONDS) -> T:
    """Call `probe` until it says done; fail after `seconds` with what it last saw."""
    deadline = time.monotonic() + seconds
    while True:
        done, seen = probe()
        if done:
            return seen
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds:.0f}s waiting for {what}; last seen: {seen!r}")
        time.sleep(0.2)


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def as_utc(text: str) -> datetime:
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def service(tmp_path: Path) -> Iterator[str]:
    with running_service(tmp_path / "service") as base:
        yield base


def test_fixture_list_is_complete() -> None:
    on_disk = {p.name for p in FIXTURES.glob("*.json")} - {"_http_requests.json"}
    assert sorted(FIXTURE_ORDER) == sorted(on_disk) == sorted(REQUESTS)


def test_served_app_takes_every_captured_payload(service: str) -> None:
    with client(service) as http:
        health = http.get("/health")
        assert health.status_code == 200, health.text
        assert health.json()["status"] == "ok"
        assert health.json()["database"] == "sqlite"

        problems = []
        for name in FIXTURE_ORDER:
            body = json.loads((FIXTURES / name).read_text())
            path = endpoint(REQUESTS[name]["path"])
            headers = {k: v for k, v in REQUESTS[name]["headers"].items() if k != "Content-Type"}
            resp = http.post(path, json=body, headers=headers)
            if not resp.is_success:
                problems.append(f"{name}: POST {path} -> {resp.status_code} {resp.text}")
                continue
            want = expected_alerts(name, body)
            ids = resp.json()["alert_ids"]
            if len(ids) != len(want):
                problems.append(f"{name}: POST {path} gave alert ids {ids}, expected {len(want)}: {resp.text}")
                continue
            for alert_id, (fingerprint, severity, status) in zip(ids, want):
                got = http.get(f"/alerts/{alert_id}")
                if got.status_code != 200:
                    problems.append(f"{name}: GET /alerts/{alert_id} -> {got.status_code} {got.text}")
                    continue
                a = got.json()
                seen = (a["fingerprint"], a["severity"], a["status"])
                if seen != (fingerprint, severity, status):
                    problems.append(f"{name}: alert {alert_id} is (fingerprint, severity, status) {seen}, "
                                    f"expected {(fingerprint, severity, status)}")
        assert not problems, "\n".join(problems)


def test_alertmanager_delivers_to_the_service(tmp_path: Path) -> None:
    require_alertmanager()
    started = datetime.now(UTC) - timedelta(minutes=1)  # older than group_wait: sent at once
    common = {"alertname": "AlertlinkE2E", "service": "e2e-checkout", "environment": "ci", "severity": "critical"}
    alerts = [{"labels": {**common, "instance": f"e2e-checkout-{i}:8080"},
               "annotations": {"summary": f"e2e alert {i}"},
               "startsAt": rfc3339(started),
               "generatorURL": "http://prometheus.example:9090/graph"} for i in (1, 2)]

    with running_service(tmp_path / "service") as base, \
            running_alertmanager(tmp_path, f"{base}/integrations/alertmanager") as am_url, \
            client(base) as svc, client(am_url) as am:
        posted = am.post("/api/v2/alerts", json=alerts)
        assert posted.status_code == 200, f"Alertmanager refused the alerts: {posted.status_code} {posted.text}"

        # Alertmanager's own fingerprints, by instance
        def am_fingerprints() -> tuple[bool, dict[str, str]]:
            ours = [a for a in am.get("/api/v2/alerts").json() if a["labels"].get("alertname") == "AlertlinkE2E"]
            return len(ours) == 2, {a["labels"]["instance"]: a["fingerprint"] for a in ours}

        fingerprints = poll("Alertmanager to list both alerts", am_fingerprints, 10)
        assert len(set(fingerprints.values())) == 2, fingerprints

        def stored(status: str) -> Callable[[], tuple[bool, dict[str, Any]]]:
            def probe() -> tuple[bool, dict[str, Any]]:
                seen = {}
                for instance, fp in fingerprints.items():
                    rows = svc.get("/alerts", params={"fingerprint": fp}).json()
                    seen[instance] = rows
                ok = all(len(rows) == 1 and rows[0]["status"] == status for rows in seen.values())
                return ok, seen
            return probe

        seen = poll("both alerts stored as firing in the service", stored("firing"))
        rows = {instance: found[0] for instance, found in seen.items()}
        for instance, row in rows.items():
            want = next(a for a in alerts if a["labels"]["instance"] == instance)
            assert row["fingerprint"] == fingerprints[instance]
            assert row["labels"] == want["labels"], row
            assert row["severity"] == "critical", row
            assert row["source"] == "prometheus", row
            assert as_utc(row["fired_at"]) == as_utc(want["startsAt"].replace("Z", "+00:00")), row

        def linked() -> tuple[bool, dict[str, list]]:
            seen = {i: svc.get(f"/alerts/{row['id']}/incidents").json() for i, row in rows.items()}
            return all(len(v) == 1 for v in seen.values()), seen

        links = poll("both alerts linked to an incident", linked)
        incident_ids = {v[0]["incident"]["id"] for v in links.values()}
        assert len(incident_ids) == 1, f"the two alerts went to different incidents: {links}"
        incident_id = incident_ids.pop()
        detail = svc.get(f"/incidents/{incident_id}").json()
        assert detail["status"] == "open", detail
        assert detail["alert_count"] == 2, detail
        assert any(e["kind"] == "incident_created" for e in detail["timeline"]), detail
        assert sorted(v[0]["link"]["link_type"] for v in links.values()) == ["auto_correlated", "auto_created"]

        # resolve: the same labels and start, an end in the past
        ended = rfc3339(datetime.now(UTC) - timedelta(seconds=1))
        resolved = am.post("/api/v2/alerts", json=[{**a, "endsAt": ended} for a in alerts])
        assert resolved.status_code == 200, f"Alertmanager refused the resolve: {resolved.text}"
        seen = poll("both alerts resolved in the service", stored("resolved"))
        for instance, found in seen.items():
            assert found[0]["id"] == rows[instance]["id"], "the resolve made a new alert instead"
            assert found[0]["resolved_at"] is not None, found
