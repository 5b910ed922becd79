"""Prometheus Alertmanager webhook (`version: "4"`) and Grafana's webhook contact point
(`version: "1"` with `orgId`), which sends the same alert shape plus extras."""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, StrictStr

from service.domain import AlertIn
from service.parsers.common import alertmanager_fingerprint, as_utc, labelset_text, normalize_severity, parse_time

# Vendor payloads: unknown fields are kept, not rejected, so a newer sender still gets through.
_LIBERAL = ConfigDict(extra="allow")


class AlertmanagerAlert(BaseModel):
    model_config = _LIBERAL

    status: Literal["firing", "resolved"] | None = None
    labels: dict[str, StrictStr] = Field(default_factory=dict)
    annotations: dict[str, StrictStr] = Field(default_factory=dict)
    startsAt: StrictStr | None = None
    endsAt: StrictStr | None = None
    generatorURL: StrictStr | None = None
    fingerprint: StrictStr | None = Field(default=None, max_length=512)


class AlertmanagerWebhook(BaseModel):
    """Alertmanager's webhook body; `truncatedAlerts` > 0 means `max_alerts` cut the list."""

    model_config = _LIBERAL

    version: StrictStr | None = None
    groupKey: StrictStr | None = None
    truncatedAlerts: NonNegativeInt = 0
    status: Literal["firing", "resolved"] | None = None
    receiver: StrictStr | None = None
    groupLabels: dict[str, StrictStr] = Field(default_factory=dict)
    commonLabels: dict[str, StrictStr] = Field(default_factory=dict)
    commonAnnotations: dict[str, StrictStr] = Field(default_factory=dict)
    externalURL: StrictStr | None = None
    alerts: list[AlertmanagerAlert]


class GrafanaWebhook(AlertmanagerWebhook):
    """Grafana unified alerting's webhook; `title`/`state`/`message` are deprecated group-level text."""

    orgId: int | None = None
    title: StrictStr | None = None
    state: StrictStr | None = None
    message: StrictStr | None = None


def to_alerts(
    body: AlertmanagerWebhook,
    *,
    received_at: datetime,
    severity_words: Mapping[str, str],
    default_severity: str,
    default_source: str = "prometheus",
) -> list[AlertIn]:
    """One AlertIn per `alerts[]` entry, firing and resolved alike (the route reads `body.truncatedAlerts`).

    The route passes default_source="prometheus" for Alertmanager and "grafana" for Grafana.
    """
    received_at = as_utc(received_at)
    out: list[AlertIn] = []
    for i, a in enumerate(body.alerts):
        loc = ("body", "alerts", i)
        ends = parse_time(a.endsAt, (*loc, "endsAt"))  # Go's zero time (still firing) -> None
        # status is always sent; without it, follow Alertmanager's rule: resolved once endsAt has passed
        status = a.status or ("resolved" if ends is not None and ends <= received_at else "firing")
        out.append(AlertIn(
            fingerprint=a.fingerprint or alertmanager_fingerprint(a.labels),
            title=a.annotations.get("summary") or a.labels.get("alertname") or labelset_text(a.labels),
            source=a.labels.get("source") or default_source,
            severity=normalize_severity(a.labels.get("severity"), severity_words, default_severity,
                                        (*loc, "labels", "severity")),
            fired_at=parse_time(a.startsAt, (*loc, "startsAt")) or received_at,
            status=status,
            # a firing alert's endsAt is zero or a lease expiry, never an end
            resolved_at=(ends or received_at) if status == "resolved" else None,
            labels=dict(a.labels),
            annotations=dict(a.annotations),
        ))
    return out
