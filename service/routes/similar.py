"""Similar past incidents, and the suggestions the scorer leaves for a responder.

Similar incidents are past (resolved) incidents ranked against some alerts: one stored
alert, all the alerts of an incident, or one alert that is only asked about (nothing is
stored). They need the scorer (its weights rank them); with it off they answer 409.
Suggestions ("this alert may belong to that incident") are stored rows: a responder
lists them and accepts (a `manual` link) or dismisses them.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from models.tables import Alert, Suggestion
from service import repository as repo
from service.deps import DecisionSessionDep, NowDep, PipelineDep, SessionDep, SettingsDep
from service.parsers import generic
from service.pipeline import Pipeline
from service.schemas import AlertOut, IncidentOut, LinkOut
from service.similar import SimilarHit

router = APIRouter(tags=["similar"])

UserHeader = Annotated[str | None, Header(alias="X-Alertlink-User", max_length=255)]
Limit = Annotated[int, Query(ge=1, le=100)]
MinScore = Annotated[float, Query(ge=0.0, le=1.0)]


# ------------------------------------------------------------------ shapes

class SimilarComponents(BaseModel):
    kinds: float
    semantic: float


class SimilarIncident(BaseModel):
    incident: IncidentOut
    score: float
    components: SimilarComponents
    match_types: list[str]
    # what a responder reads first; only a resolved incident has a settled answer
    root_cause: str | None
    summary: str | None


class SimilarIncidents(BaseModel):
    weights_version: str
    results: list[SimilarIncident]


class SuggestionOut(BaseModel):
    id: int
    incident_id: int
    alert: AlertOut
    score: float
    components: dict[str, Any] | None
    weights_version: str
    created_at: datetime
    status: str
    decided_by: str | None
    decided_at: datetime | None

    @classmethod
    def of(cls, s: Suggestion, alert: Alert) -> SuggestionOut:
        return cls(id=s.id, incident_id=s.incident_id, alert=AlertOut.of(alert), score=s.score,
                   components=s.components, weights_version=s.weights_version, created_at=s.created_at,
                   status=s.status, decided_by=s.decided_by, decided_at=s.decided_at)


class SuggestionDecision(BaseModel):
    by: str | None = Field(default=None, min_length=1, max_length=255)


class AcceptedSuggestion(BaseModel):
    suggestion: SuggestionOut
    link: LinkOut


# ------------------------------------------------------------ similar incidents

def scorer_pipeline(pipeline: PipelineDep) -> Pipeline:
    if pipeline.weights is None:
        raise HTTPException(409, "similar incidents need the scorer, and it is off (ALERTLINK_SCORER=false)")
    return pipeline


ScorerDep = Annotated[Pipeline, Depends(scorer_pipeline)]


def _answer(session: Session, pipeline: Pipeline, alerts: list[Alert], limit: int, min_score: float,
            exclude: int | None = None) -> SimilarIncidents:
    assert pipeline.weights is not None
    k = limit if exclude is None else limit + 1  # room for the excluded one
    hits = [h for h in pipeline.find_similar(alerts, k) if h.incident_id != exclude and h.score >= min_score]
    hits = hits[:limit]
    return SimilarIncidents(weights_version=pipeline.weights.version,
                            results=[_result(session, h) for h in hits])


def _result(session: Session, hit: SimilarHit) -> SimilarIncident:
    incident = repo.get_incident(session, hit.incident_id)
    assert incident is not None  # the index holds resolved incidents; incidents are never deleted
    resolved = incident.status == "resolved"
    return SimilarIncident(incident=IncidentOut.of(incident), score=hit.score,
                           components=SimilarComponents(**hit.components), match_types=list(hit.match_types),
                           root_cause=incident.root_cause if resolved else None,
                           summary=incident.summary if resolved else None)


@router.get("/alerts/{alert_id}/similar-incidents")
def alert_similar(alert_id: int, session: SessionDep, pipeline: ScorerDep, limit: Limit = 10,
                  min_score: MinScore = 0.0) -> SimilarIncidents:
    """Past incidents like this alert (the alert alone, not the incident it is in)."""
    alert = repo.get_alert(session, alert_id)
    if alert is None:
        raise HTTPException(404, f"no alert {alert_id}")
    return _answer(session, pipeline, [alert], limit, min_score)


@router.get("/incidents/{incident_id}/similar-incidents")
def incident_similar(incident_id: int, session: SessionDep, pipeline: ScorerDep, limit: Limit = 10,
                     min_score: MinScore = 0.0) -> SimilarIncidents:
    """Past incidents like this one, by all its alerts; never the incident itself."""
    if repo.get_incident(session, incident_id) is None:
        raise HTTPException(404, f"no incident {incident_id}")
    return _answer(session, pipeline, repo.incident_alerts(session, incident_id), limit, min_score,
                   exclude=incident_id)


@router.post("/similar-incidents")
def ask_similar(body: generic.GenericAlert, session: SessionDep, pipeline: ScorerDep, settings: SettingsDep,
                now: NowDep, limit: Limit = 10, min_score: MinScore = 0.0) -> SimilarIncidents:
    """Past incidents like an alert that is not stored (for pipelines that only ask).
    The body is one alert in alertlink's JSON (`POST /alerts`); nothing is stored."""
    [item] = generic.to_alerts(body, received_at=now, severity_words=settings.severity_words(),
                               default_severity=settings.default_severity)
    # a transient row, never added to the session: similarity reads its fingerprint, title, labels
    alert = Alert(fingerprint=item.fingerprint, title=item.title, labels=dict(item.labels))
    return _answer(session, pipeline, [alert], limit, min_score)


# ------------------------------------------------------------------ suggestions

def _suggestion_or_404(session: Session, suggestion_id: int) -> Suggestion:
    suggestion = repo.get_suggestion(session, suggestion_id)
    if suggestion is None:
        raise HTTPException(404, f"no suggestion {suggestion_id}")
    return suggestion


def _decide(suggestion: Suggestion, status: Literal["accepted", "dismissed"], by: str, now: datetime) -> None:
    if suggestion.status != "open":
        raise HTTPException(409, f"suggestion {suggestion.id} is already {suggestion.status}")
    suggestion.status, suggestion.decided_by, suggestion.decided_at = status, by, now


@router.get("/incidents/{incident_id}/suggestions")
def incident_suggestions(incident_id: int, session: SessionDep,
                         status: Literal["open", "accepted", "dismissed", "all"] = "open") -> list[SuggestionOut]:
    """Alerts that may belong to this incident, best first (open ones unless `status` says)."""
    if repo.get_incident(session, incident_id) is None:
        raise HTTPException(404, f"no incident {incident_id}")
    rows = repo.suggestions_of_incident(session, incident_id, status=None if status == "all" else status)
    return [SuggestionOut.of(s, a) for s, a in rows]


@router.post("/suggestions/{suggestion_id}/accept")
def accept_suggestion(suggestion_id: int, session: DecisionSessionDep, now: NowDep,
                      body: Annotated[SuggestionDecision | None, Body()] = None,
                      user: UserHeader = None) -> AcceptedSuggestion:
    """The alert belongs to the incident: a `manual` link (or a removed one restored)."""
    suggestion = _suggestion_or_404(session, suggestion_id)
    by = (body.by if body else None) or user or "api"
    _decide(suggestion, "accepted", by, now)
    link, made = repo.link_manually(session, suggestion.alert, suggestion.incident, "manual", by, now)
    if made:
        repo.add_event(session, suggestion.incident_id, "alerts_linked", now, by, link_type="manual",
                       alert_ids=[suggestion.alert_id], count=1, suggestion_id=suggestion.id)
    session.flush()
    return AcceptedSuggestion(suggestion=SuggestionOut.of(suggestion, suggestion.alert), link=LinkOut.of(link))


@router.post("/suggestions/{suggestion_id}/dismiss")
def dismiss_suggestion(suggestion_id: int, session: DecisionSessionDep, now: NowDep,
                       body: Annotated[SuggestionDecision | None, Body()] = None,
                       user: UserHeader = None) -> SuggestionOut:
    """The alert does not belong to the incident: the suggestion is closed, nothing linked."""
    suggestion = _suggestion_or_404(session, suggestion_id)
    _decide(suggestion, "dismissed", (body.by if body else None) or user or "api", now)
    session.flush()
    return SuggestionOut.of(suggestion, suggestion.alert)
