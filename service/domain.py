"""Plain data that flows between the layers: what a parser makes of a payload,
and what the decision code sees of alerts and incidents. No I/O here."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Severity = Literal["critical", "high", "medium", "low", "info"]
SEVERITY_ORDER: tuple[Severity, ...] = ("critical", "high", "medium", "low", "info")
AlertStatus = Literal["firing", "acknowledged", "resolved"]
LinkType = Literal["auto_created", "auto_correlated", "manual", "historical"]


class InputError(ValueError):
    """Bad input, reported as a 422 that names the field (`loc`, as FastAPI does)."""

    def __init__(self, loc: tuple[str | int, ...], msg: str, value: object = None) -> None:
        super().__init__(f"{'.'.join(map(str, loc))}: {msg}")
        self.loc = loc
        self.msg = msg
        self.value = value

    def as_detail(self) -> dict:
        return {"loc": list(self.loc), "msg": self.msg, "type": "value_error", "input": self.value}


@dataclass(frozen=True)
class AlertIn:
    """One alert as every intake format is normalised to. Times are aware UTC."""

    fingerprint: str
    title: str
    source: str
    severity: Severity
    fired_at: datetime
    status: AlertStatus = "firing"
    resolved_at: datetime | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    # the sender's own id for this alert, when it has one (data sets, imports)
    external_id: str | None = None
    # what makes a delivery "the same alert again": "occurrence" = same fingerprint and
    # start (Alertmanager, Grafana, our JSON); "open" = any unresolved alert with the same
    # key (PagerDuty dedup_key, Opsgenie alias: their senders give no start time)
    dedup: Literal["occurrence", "open"] = "occurrence"


def highest_severity(severities: list[str]) -> Severity:
    """The most severe of `severities` (the seed's order: critical first)."""
    return min(severities, key=SEVERITY_ORDER.index)  # type: ignore[return-value]
