"""API response and request bodies (the ones that are not intake formats)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.tables import Alert, AlertIncidentLink, Incident, IncidentEvent


class AlertOut(BaseModel):
    id: int
    external_id: str | None
    fingerprint: str
    title: str
    source: str
    severity: str
    status: str
    fired_at: datetime
    resolved_at: datetime | None
    labels: dict[str, Any]
    annotations: dict[str, Any]
    delivery_count: int
    received_at: datetime
    last_received_at: datetime

    @classmethod
    def of(cls, a: Alert) -> AlertOut:
        return cls(id=a.id, external_id=a.external_id, fingerprint=a.fingerprint, title=a.title, source=a.source,
                   severity=a.severity, status=a.status, fired_at=a.fired_at, resolved_at=a.resolved_at,
                   labels=a.labels or {}, annotations=a.annotations or {}, delivery_count=a.delivery_count,
                   received_at=a.received_at, last_received_at=a.last_received_at)


class IncidentOut(BaseModel):
    id: int
    external_id: str | None
    title: str
    status: str
    severity: str
    created_at: datetime
    acknowledged_at: datetime | None
    resolved_at: datetime | None
    root_cause: str | None
    summary: str | None
    aggregation_key: str | None
    last_activity_at: datetime

    @classmethod
    def of(cls, i: Incident) -> IncidentOut:
        return cls(id=i.id, external_id=i.external_id, title=i.title, status=i.status, severity=i.severity,
                   created_at=i.created_at, acknowledged_at=i.acknowledged_at, resolved_at=i.resolved_at,
                   root_cause=i.root_cause, summary=i.summary, aggregation_key=i.aggregation_key,
                   last_activity_at=i.last_activity_at)


class LinkOut(BaseModel):
    alert_id: int
    incident_id: int
    link_type: str
    linked_at: datetime
    linked_by: str
    rule: str | None
    score: float | None
    components: dict[str, Any] | None
    decided_by_version: str | None
    removed_at: datetime | None = None
    removed_by: str | None = None

    @classmethod
    def of(cls, link: AlertIncidentLink) -> LinkOut:
        return cls(alert_id=link.alert_id, incident_id=link.incident_id, link_type=link.link_type,
                   linked_at=link.linked_at, linked_by=link.linked_by, rule=link.rule, score=link.score,
                   components=link.components, decided_by_version=link.decided_by_version,
                   removed_at=link.removed_at, removed_by=link.removed_by)


class LinkedAlert(BaseModel):
    alert: AlertOut
    link: LinkOut


class LinkedIncident(BaseModel):
    incident: IncidentOut
    link: LinkOut


class EventOut(BaseModel):
    id: int
    at: datetime
    kind: str
    actor: str
    data: dict[str, Any]

    @classmethod
    def of(cls, e: IncidentEvent) -> EventOut:
        return cls(id=e.id, at=e.at, kind=e.kind, actor=e.actor, data=e.data or {})


class IncidentDetail(IncidentOut):
    alert_count: int
    timeline: list[EventOut]


class Outcome(BaseModel):
    index: int
    alert_id: int | None
    action: Literal["created", "redelivered", "resolved", "acknowledged", "ignored"]
    decision: dict[str, Any]


class IngestResult(BaseModel):
    accepted: int
    alert_ids: list[int]
    results: list[Outcome]
    truncated_alerts: int = 0


class LinkRequest(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    alert_ids: list[int] = Field(alias="alertIds", min_length=1)
    link_type: Literal["manual", "historical"] = Field(default="manual", alias="linkType")
    linked_by: str | None = Field(default=None, alias="linkedBy", min_length=1, max_length=255)


class LinkResult(BaseModel):
    links: list[LinkOut]
    already_linked: list[int]


class StatusRequest(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    status: Literal["open", "acknowledged", "resolved"]
    by: str | None = Field(default=None, min_length=1, max_length=255)
    root_cause: str | None = Field(default=None, alias="rootCause")
    summary: str | None = None


class Health(BaseModel):
    status: Literal["ok"]
    database: str
    schema_revision: str | None
    rules_version: str
    weights_version: str | None
    event_time: datetime | None
