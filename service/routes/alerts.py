from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query

from service import repository as repo
from service.deps import DecisionSessionDep, NowDep, PipelineDep, SessionDep, SettingsDep
from service.parsers import generic
from service.routes.ingest import ingest
from service.schemas import AlertOut, IngestResult, LinkedIncident, IncidentOut, LinkOut

router = APIRouter(tags=["alerts"])


@router.post("/alerts")
def post_alerts(body: generic.GenericBody, session: DecisionSessionDep, pipeline: PipelineDep,
                settings: SettingsDep, now: NowDep) -> IngestResult:
    """One alert or a list of them, in alertlink's own JSON (see `service/parsers/generic.py`)."""
    items = generic.to_alerts(body, received_at=now, severity_words=settings.severity_words(),
                              default_severity=settings.default_severity)
    return ingest(session, pipeline, items, now)


@router.get("/alerts")
def list_alerts(session: SessionDep, fingerprint: str | None = None,
                status: Literal["firing", "acknowledged", "resolved"] | None = None,
                since: datetime | None = None, until: datetime | None = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                offset: Annotated[int, Query(ge=0)] = 0) -> list[AlertOut]:
    rows = repo.list_alerts(session, fingerprint=fingerprint, status=status, since=since, until=until,
                            limit=limit, offset=offset)
    return [AlertOut.of(a) for a in rows]


def _alert_or_404(session: SessionDep, alert_id: int):
    alert = repo.get_alert(session, alert_id)
    if alert is None:
        raise HTTPException(404, f"no alert {alert_id}")
    return alert


@router.get("/alerts/{alert_id}")
def get_alert(alert_id: int, session: SessionDep) -> AlertOut:
    return AlertOut.of(_alert_or_404(session, alert_id))


@router.get("/alerts/{alert_id}/incidents")
def alert_incidents(alert_id: int, session: SessionDep, include_removed: bool = False) -> list[LinkedIncident]:
    _alert_or_404(session, alert_id)
    return [LinkedIncident(incident=IncidentOut.of(i), link=LinkOut.of(link))
            for link, i in repo.links_of_alert(session, alert_id, include_removed=include_removed)]
