"""Vendor formats. Each route parses its format into AlertIn / StatusChange and
hands them to the same pipeline as `POST /alerts`.

Point the senders here:
- Alertmanager `webhook_configs.url`: /integrations/alertmanager
- Grafana webhook contact point: /integrations/grafana
- Alertmanager/Grafana `pagerduty_configs.url`, or any Events API v2 sender:
  /integrations/pagerduty/v2/enqueue
- Alertmanager `opsgenie_configs.api_url`: /integrations/opsgenie/ (it appends v2/alerts...)
"""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from service.deps import DecisionSessionDep, NowDep, PipelineDep, SettingsDep
from service.parsers import alertmanager, opsgenie, pagerduty
from service.routes.ingest import ingest
from service.schemas import IngestResult

router = APIRouter(prefix="/integrations", tags=["integrations"])

SourceQuery = Annotated[str | None, Query(min_length=1, max_length=100,
                                          description="source of the alerts, when no `source` label says")]


@router.post("/alertmanager")
def from_alertmanager(body: alertmanager.AlertmanagerWebhook, session: DecisionSessionDep,
                      pipeline: PipelineDep, settings: SettingsDep, now: NowDep,
                      source: SourceQuery = None) -> IngestResult:
    """Alertmanager's webhook (version 4). A resolve matches the firing alert by fingerprint."""
    items = alertmanager.to_alerts(body, received_at=now, severity_words=settings.severity_words(),
                                   default_severity=settings.default_severity,
                                   default_source=source or "prometheus")
    return ingest(session, pipeline, items, now, body.truncatedAlerts)


@router.post("/grafana")
def from_grafana(body: alertmanager.GrafanaWebhook, session: DecisionSessionDep, pipeline: PipelineDep,
                 settings: SettingsDep, now: NowDep, source: SourceQuery = None) -> IngestResult:
    """Grafana unified alerting's webhook contact point (version 1)."""
    items = alertmanager.to_alerts(body, received_at=now, severity_words=settings.severity_words(),
                                   default_severity=settings.default_severity,
                                   default_source=source or "grafana")
    return ingest(session, pipeline, items, now, body.truncatedAlerts)


@router.post("/pagerduty/v2/enqueue", status_code=202)
def from_pagerduty(body: pagerduty.PagerDutyEvent, session: DecisionSessionDep, pipeline: PipelineDep,
                   settings: SettingsDep, now: NowDep) -> IngestResult:
    """PagerDuty Events API v2: trigger, acknowledge, resolve (by dedup_key)."""
    items = pagerduty.to_alerts(body, received_at=now, severity_words=settings.severity_words(),
                                default_severity=settings.default_severity)
    return ingest(session, pipeline, items, now)


@router.post("/opsgenie/v2/alerts", status_code=202)
def from_opsgenie(body: opsgenie.OpsgenieCreate, session: DecisionSessionDep, pipeline: PipelineDep,
                  settings: SettingsDep, now: NowDep) -> IngestResult:
    """Opsgenie's create-alert call (what Alertmanager's opsgenie_configs sends)."""
    items = opsgenie.to_alerts(body, received_at=now, severity_words=settings.severity_words())
    return ingest(session, pipeline, items, now)


@router.post("/opsgenie/v2/alerts/{identifier}/{action}", status_code=202)
def opsgenie_action(identifier: str, action: Literal["close", "acknowledge"], session: DecisionSessionDep,
                    pipeline: PipelineDep, now: NowDep, body: opsgenie.OpsgenieAction | None = None,
                    identifier_type: Annotated[str | None, Query(alias="identifierType")] = None
                    ) -> IngestResult:
    """Opsgenie's close / acknowledge of the alert with that alias."""
    items = opsgenie.status_change(identifier, action, received_at=now, identifier_type=identifier_type)
    return ingest(session, pipeline, items, now)
