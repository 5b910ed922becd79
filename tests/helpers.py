"""Shared helpers for the API and pipeline tests: captured fixtures, a controllable
wall clock, an app client, and builders for alerts in each shape."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from fastapi.testclient import TestClient

from service.app import create_app
from service.domain import AlertIn
from service.rules import seed_rules_dir
from service.settings import Settings

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "alertmanager"
REQUESTS: dict[str, dict[str, Any]] = json.loads((FIXTURES / "_http_requests.json").read_text())
GO_ZERO = "0001-01-01T00:00:00Z"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def endpoint(name: str) -> str:
    """Our URL for a captured request: its path under /integrations, Alertmanager's webhook otherwise."""
    path = REQUESTS[name]["path"]
    if path.startswith(("/pagerduty/", "/opsgenie/")):
        return "/integrations" + path
    return "/integrations/alertmanager"


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def api(clock: Clock, **settings: Any) -> TestClient:
    """A client of a fresh app on an in-memory database; use it as a context manager."""
    # the spine's tests pin the seed design's rules without the scorer; pass scorer=True etc. to change
    base: dict[str, Any] = {"rules_dir": seed_rules_dir(), "scorer": False}
    return TestClient(create_app(Settings(database_url="sqlite://", clock="manual", **(base | settings)),
                                 wall_clock=clock))


def iso(t: datetime | None) -> str | None:
    """A time as the API writes it."""
    return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def generic(title: str, severity: str, at: datetime, **labels: str) -> dict[str, Any]:
    """One alert in alertlink's own format; `alertname` = title keeps fingerprints apart."""
    return {"title": title, "severity": severity, "fired_at": iso(at), "labels": {"alertname": title, **labels}}


def am_webhook(*alerts: Mapping[str, Any]) -> dict[str, Any]:
    return {"version": "4", "status": alerts[0]["status"], "alerts": list(alerts)}


def am_alert(labels: Mapping[str, str], starts: datetime, ends: datetime | None = None) -> dict[str, Any]:
    return {"status": "firing" if ends is None else "resolved", "labels": dict(labels), "annotations": {},
            "startsAt": iso(starts), "endsAt": iso(ends) if ends else GO_ZERO}


def alert_in(fingerprint: str, at: datetime, severity: str = "info", **fields: Any) -> AlertIn:
    """An AlertIn as a parser would make it; `title` defaults to the fingerprint."""
    return AlertIn(**({"fingerprint": fingerprint, "title": fingerprint, "source": "test", "severity": severity,
                       "fired_at": at} | fields))


# ------------------------------------------------------------ bench material

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench"


def load_score() -> ModuleType:
    """`../shared/bench/score.py` as a module: the reference scorer the project must agree with."""
    spec = importlib.util.spec_from_file_location("bench_score", BENCH / "score.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def simulate(out: Path, *, seed: int, history: int, scenarios: int, days: float) -> Path:
    """A data set from `../shared/bench/simulate.py` and the dev world."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "simulate.py"), str(BENCH / "worlds" / "dev.json"), str(out),
         "--seed", str(seed), "--history", str(history), "--scenarios", str(scenarios), "--days", str(days)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"simulate.py failed: {done.stdout}{done.stderr}"
    return out
