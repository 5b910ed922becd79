from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, HTTPException, Query

from models.tables import Incident
from service import repository as repo
from service.deps import DecisionSessionDep, NowDep, PipelineDep, SessionDep
from service.schemas import (
    AlertOut, EventOut, IncidentDetail, IncidentOut, LinkedAlert, LinkOut, LinkRequest, LinkResult,
    StatusRequest,
)

router = APIRouter(tags=["incidents"])

UserHeader = Annotated[str | None, Header(alias="X-Alertlink-User", max_length=255)]


def _incident_or_404(session: SessionDep, incident_id: int) -> Incident:
    incident = repo.get_incident(session, incident_id)
    if incident is None:
        raise HTTPException(404, f"no incident {incident_id}")
    return incident


@router.get("/incidents")
def list_incidents(session: SessionDep, status: Literal["open", "acknowledged", "resolved"] | None = None,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                   offset: Annotated[int, Query(ge=0)] = 0) -> list[IncidentOut]:
    return [IncidentOut.of(i) for i in repo.list_incidents(session, status=status, limit=limit, offset=offset)]


@router.get("/incidents/{incident_id}")
def get_incident(incident_id: int, session: SessionDep) -> IncidentDetail:
    incident = _incident_or_404(session, incident_id)
    return IncidentDetail(
        **IncidentOut.of(incident).model_dump(),
        alert_count=len(repo.links_of_incident(session, incident_id)),
        timeline=[EventOut.of(e) for e in repo.incident_events(session, incident_id)],
    )


@router.get("/incidents/{incident_id}/alerts")
def incident_alerts(incident_id: int, session: SessionDep, include_removed: bool = False) -> list[LinkedAlert]:
    _incident_or_404(session, incident_id)
    return [LinkedAlert(alert=AlertOut.of(a), link=LinkOut.of(link))
            for link, a in repo.links_of_incident(session, incident_id, include_removed=include_removed)]


@router.post("/incidents/{incident_id}/links")
def link_alerts(incident_id: int, body: LinkRequest, session: DecisionSessionDep, pipeline: PipelineDep,
                now: NowDep, user: UserHeader = None) -> LinkResult:
    """A responder links alerts (`manual` while it runs, `historical` in a postmortem).
    A link a responder removed before is restored by linking it again."""
    incident = _incident_or_404(session, incident_id)
    by = body.linked_by or user or "api"
    alerts = repo.alerts_by_ids(session, body.alert_ids)
    if missing := [i for i in body.alert_ids if i not in alerts]:
        raise HTTPException(422, [{"loc": ["body", "alertIds"], "msg": f"no such alerts: {missing}",
                                   "type": "value_error"}])
    made, already = [], []
    for alert_id in dict.fromkeys(body.alert_ids):
        link, new = repo.link_manually(session, alerts[alert_id], incident, body.link_type, by, now)
        (made if new else already).append(link if new else alert_id)
    if made:
        repo.add_event(session, incident_id, "alerts_linked", now, by, link_type=body.link_type,
                       alert_ids=[link.alert_id for link in made], count=len(made))
        # a postmortem link on a resolved incident changes what history says
        pipeline.incident_changed(session, incident_id, resolved=incident.status == "resolved")
    session.flush()
    return LinkResult(links=[LinkOut.of(link) for link in made], already_linked=already)


@router.delete("/incidents/{incident_id}/links/{alert_id}")
def remove_link(incident_id: int, alert_id: int, session: DecisionSessionDep, pipeline: PipelineDep,
                now: NowDep, user: UserHeader = None) -> LinkOut:
    """Removes a link. It is kept as removed, so it is never re-added automatically."""
    _incident_or_404(session, incident_id)
    link = repo.get_link(session, alert_id, incident_id)
    if link is None or link.removed_at is not None:
        raise HTTPException(404, f"alert {alert_id} is not linked to incident {incident_id}")
    link.removed_at, link.removed_by = now, user or "api"
    repo.add_event(session, incident_id, "alert_unlinked", now, link.removed_by, alert_id=alert_id,
                   link_type=link.link_type)
    incident = _incident_or_404(session, incident_id)
    pipeline.incident_changed(session, incident_id, resolved=incident.status == "resolved")
    return LinkOut.of(link)


@router.post("/incidents/{incident_id}/status")
def change_status(incident_id: int, body: StatusRequest, session: DecisionSessionDep, pipeline: PipelineDep,
                  now: NowDep, user: UserHeader = None) -> IncidentOut:
    """Acknowledge, resolve (optionally with root cause and summary) or reopen."""
    incident = _incident_or_404(session, incident_id)
    by = body.by or user or "api"
    before = incident.status
    incident.status = body.status
    if body.status == "acknowledged" and incident.acknowledged_at is None:
        incident.acknowledged_at = now
    if body.status == "resolved":
        incident.resolved_at = incident.resolved_at or now
    if body.status != "resolved":  # reopened or acknowledged again: no longer resolved
        incident.resolved_at = None
    if body.root_cause is not None:
        incident.root_cause = body.root_cause
    if body.summary is not None:
        incident.summary = body.summary
    repo.add_event(session, incident_id, "status_changed", now, by, before=before, after=body.status)
    # its text (title + root cause) may have changed, and a resolved incident becomes history
    pipeline.incident_changed(session, incident_id, resolved=body.status == "resolved",
                              reopened=before == "resolved" and body.status != "resolved")
    return IncidentOut.of(incident)
