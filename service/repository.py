"""All SQL. Functions take the caller's session and flush; they never commit
(the transaction belongs to whoever opened the session)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select, text
from sqlalchemy.orm import Session, selectinload

from models.tables import (Alert, AlertIncidentLink, Incident, IncidentEvent, PendingGroup, PendingGroupAlert,
                           Suggestion)
from service.decide import GroupFacts, IncidentFacts, label_name
from service.domain import AlertIn
from service.features import Candidate, Member
from service.rules import AlertFacts

# an alert with any link, a removed one included (correlated: usable inside a query on Alert)
EVER_LINKED = select(AlertIncidentLink.id).where(AlertIncidentLink.alert_id == Alert.id).exists()

# any constant will do: all deciding transactions take the same advisory lock
DECISION_LOCK_KEY = 0x616C6572  # "aler"


def lock_decisions(session: Session) -> None:
    """Serialise deciding transactions across replicas (PostgreSQL); one process
    already serialises them with a thread lock."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": DECISION_LOCK_KEY})


# ------------------------------------------------------------------ alerts

def alert_facts(alert: Alert) -> AlertFacts:
    return AlertFacts(id=alert.id, fingerprint=alert.fingerprint, title=alert.title, source=alert.source,
                      severity=alert.severity, fired_at=alert.fired_at, labels=dict(alert.labels or {}))


def find_occurrence(session: Session, fingerprint: str, fired_at: datetime) -> Alert | None:
    return session.scalars(
        select(Alert).where(Alert.fingerprint == fingerprint, Alert.fired_at == fired_at)
    ).first()


def latest_unresolved(session: Session, fingerprint: str) -> Alert | None:
    return session.scalars(
        select(Alert).where(Alert.fingerprint == fingerprint, Alert.status != "resolved")
        .order_by(Alert.fired_at.desc(), Alert.id.desc()).limit(1)
    ).first()


def latest_resolved(session: Session, fingerprint: str, resolved_at: datetime) -> Alert | None:
    """The resolved occurrence that ended at `resolved_at` (to recognise a resolve sent again)."""
    return session.scalars(
        select(Alert).where(Alert.fingerprint == fingerprint, Alert.status == "resolved",
                            Alert.resolved_at == resolved_at)
        .order_by(Alert.fired_at.desc(), Alert.id.desc()).limit(1)
    ).first()


def cut_to_column(text: str, column: Any) -> str:
    """Cut text to its column's length (a vendor's long title must not fail a whole batch)."""
    limit = column.type.length
    return text if len(text) <= limit else text[: limit - 1] + "…"


def insert_alert(session: Session, a: AlertIn, received_at: datetime) -> Alert:
    row = Alert(
        external_id=a.external_id, fingerprint=a.fingerprint, title=cut_to_column(a.title, Alert.title),
        source=cut_to_column(a.source, Alert.source),
        severity=a.severity, fired_at=a.fired_at, resolved_at=a.resolved_at, status=a.status,
        labels=dict(a.labels), annotations=dict(a.annotations), delivery_count=1,
        received_at=received_at, last_received_at=received_at,
    )
    session.add(row)
    session.flush()
    return row


def refresh_alert(row: Alert, a: AlertIn, received_at: datetime, *, keep_content: bool = False) -> None:
    """Another delivery of a stored occurrence: count it and keep the newest content
    (unless it is a resolve matched by fingerprint only, which may carry stale text)."""
    if not keep_content:
        row.title, row.source = cut_to_column(a.title, Alert.title), cut_to_column(a.source, Alert.source)
        row.severity = a.severity
        row.labels, row.annotations = dict(a.labels), dict(a.annotations)
    row.delivery_count += 1
    row.last_received_at = received_at
    if a.status == "resolved" and row.status != "resolved":
        row.status, row.resolved_at = "resolved", a.resolved_at or received_at


def get_alert(session: Session, alert_id: int) -> Alert | None:
    return session.get(Alert, alert_id)


def list_alerts(session: Session, *, fingerprint: str | None = None, status: str | None = None,
                since: datetime | None = None, until: datetime | None = None,
                limit: int = 100, offset: int = 0) -> Sequence[Alert]:
    q = select(Alert)
    if fingerprint is not None:
        q = q.where(Alert.fingerprint == fingerprint)
    if status is not None:
        q = q.where(Alert.status == status)
    if since is not None:
        q = q.where(Alert.fired_at >= since)
    if until is not None:
        q = q.where(Alert.fired_at <= until)
    return session.scalars(q.order_by(Alert.fired_at.desc(), Alert.id.desc()).limit(limit).offset(offset)).all()


def alerts_by_ids(session: Session, ids: Iterable[int]) -> dict[int, Alert]:
    ids = list(ids)
    return {a.id: a for a in session.scalars(select(Alert).where(Alert.id.in_(ids)))} if ids else {}


def newest_alert_time(session: Session) -> datetime | None:
    return session.scalar(select(func.max(Alert.fired_at)))


# --------------------------------------------------------------- incidents

def get_incident(session: Session, incident_id: int) -> Incident | None:
    return session.get(Incident, incident_id)


def list_incidents(session: Session, *, status: str | None = None, limit: int = 100,
                   offset: int = 0) -> Sequence[Incident]:
    q = select(Incident)
    if status is not None:
        q = q.where(Incident.status == status)
    return session.scalars(q.order_by(Incident.created_at.desc(), Incident.id.desc())
                           .limit(limit).offset(offset)).all()


def active_incidents(session: Session, since: datetime, alert: AlertFacts,
                     field_sets: Iterable[Sequence[str]]) -> list[IncidentFacts]:
    """Incidents not resolved with activity at or after `since`, with what matching
    `alert` needs of their linked alerts (removed links do not count): whether one
    has the alert's fingerprint, and for each set of match fields whether one has
    the alert's values for all of them. The lookups run in SQL, so a 1,000-alert
    incident costs no more than a small one."""
    incidents = session.scalars(
        select(Incident).where(Incident.status != "resolved", Incident.last_activity_at >= since)
    ).all()
    if not incidents:
        return []
    linked = (select(AlertIncidentLink.incident_id).join(Alert, Alert.id == AlertIncidentLink.alert_id)
              .where(AlertIncidentLink.incident_id.in_([i.id for i in incidents]),
                     AlertIncidentLink.removed_at.is_(None)).distinct())
    field_sets = [fs for fs in field_sets if fs]  # rules that match on nothing need no lookups
    with_fingerprint = set(session.scalars(linked.where(Alert.fingerprint == alert.fingerprint))) \
        if any("fingerprint" in fs for fs in field_sets) else set()
    label_sets: dict[int, list[dict[str, str]]] = {}
    for fields in {tuple(sorted({label_name(f) for f in fs} - {"fingerprint"})) for fs in field_sets}:
        wanted = {n: alert.labels.get(n) for n in fields}
        if not fields or None in wanted.values():
            continue
        same = linked.where(*(Alert.labels[n].as_string() == v for n, v in wanted.items()))
        for incident_id in session.scalars(same):
            label_sets.setdefault(incident_id, []).append(wanted)
    return [IncidentFacts(i.id, i.aggregation_key, i.last_activity_at,
                          frozenset({alert.fingerprint}) if i.id in with_fingerprint else frozenset(),
                          tuple(label_sets.get(i.id, ())))
            for i in incidents]


def create_incident(session: Session, *, title: str, severity: str, created_at: datetime,
                    summary: str | None = None, aggregation_key: str | None = None,
                    root_cause: str | None = None, status: str = "open", resolved_at: datetime | None = None,
                    external_id: str | None = None) -> Incident:
    row = Incident(title=title, severity=severity, created_at=created_at, summary=summary,
                   aggregation_key=aggregation_key, root_cause=root_cause, status=status,
                   resolved_at=resolved_at, external_id=external_id, last_activity_at=created_at)
    session.add(row)
    session.flush()
    return row


def add_event(session: Session, incident_id: int, kind: str, at: datetime, actor: str,
              **data: Any) -> IncidentEvent:
    row = IncidentEvent(incident_id=incident_id, kind=kind, at=at, actor=actor, data=data)
    session.add(row)
    return row


def incident_events(session: Session, incident_id: int) -> Sequence[IncidentEvent]:
    return session.scalars(select(IncidentEvent).where(IncidentEvent.incident_id == incident_id)
                           .order_by(IncidentEvent.at, IncidentEvent.id)).all()


# ------------------------------------------------------------------- links

def get_link(session: Session, alert_id: int, incident_id: int) -> AlertIncidentLink | None:
    return session.scalars(select(AlertIncidentLink).where(
        AlertIncidentLink.alert_id == alert_id, AlertIncidentLink.incident_id == incident_id)).first()


def add_link(session: Session, *, alert: Alert, incident: Incident, link_type: str, linked_at: datetime,
             linked_by: str, rule: str | None = None, score: float | None = None,
             components: dict[str, Any] | None = None, version: str | None = None) -> AlertIncidentLink:
    """Link an alert to an incident and move the incident's activity to the alert's time."""
    row = AlertIncidentLink(alert_id=alert.id, incident_id=incident.id, link_type=link_type,
                            linked_at=linked_at, linked_by=linked_by, rule=rule, score=score,
                            components=components, decided_by_version=version)
    session.add(row)
    if alert.fired_at > incident.last_activity_at:
        incident.last_activity_at = alert.fired_at
    return row


def link_manually(session: Session, alert: Alert, incident: Incident, link_type: str, by: str,
                  now: datetime) -> tuple[AlertIncidentLink, bool]:
    """A responder's link: new, or a removed one restored (it becomes theirs). Returns the
    link and whether it was made now (False: it was linked already)."""
    link = get_link(session, alert.id, incident.id)
    if link is not None and link.removed_at is None:
        return link, False
    if link is not None:
        link.removed_at = link.removed_by = None
        link.link_type, link.linked_by, link.linked_at = link_type, by, now
        link.rule = link.score = link.components = link.decided_by_version = None
    else:
        link = add_link(session, alert=alert, incident=incident, link_type=link_type, linked_at=now, linked_by=by)
    return link, True


def links_of_incident(session: Session, incident_id: int, *, include_removed: bool = False
                      ) -> Sequence[tuple[AlertIncidentLink, Alert]]:
    q: Select = (select(AlertIncidentLink, Alert).join(Alert, Alert.id == AlertIncidentLink.alert_id)
                 .where(AlertIncidentLink.incident_id == incident_id))
    if not include_removed:
        q = q.where(AlertIncidentLink.removed_at.is_(None))
    return session.execute(q.order_by(Alert.fired_at, Alert.id)).all()  # type: ignore[return-value]


def links_of_alert(session: Session, alert_id: int, *, include_removed: bool = False
                   ) -> Sequence[tuple[AlertIncidentLink, Incident]]:
    q: Select = (select(AlertIncidentLink, Incident).join(Incident, Incident.id == AlertIncidentLink.incident_id)
                 .where(AlertIncidentLink.alert_id == alert_id))
    if not include_removed:
        q = q.where(AlertIncidentLink.removed_at.is_(None))
    return session.execute(q.order_by(Incident.created_at, Incident.id)).all()  # type: ignore[return-value]


def incidents_of_alerts(session: Session, alert_ids: Iterable[int]) -> dict[int, int]:
    """alert id -> the incident it is linked to (the earliest link wins)."""
    ids = list(alert_ids)
    out: dict[int, int] = {}
    if not ids:
        return out
    for alert_id, incident_id in session.execute(
        select(AlertIncidentLink.alert_id, AlertIncidentLink.incident_id)
        .where(AlertIncidentLink.alert_id.in_(ids), AlertIncidentLink.removed_at.is_(None))
        .order_by(AlertIncidentLink.id)
    ):
        out.setdefault(alert_id, incident_id)
    return out


# ---------------------------------------------------------- pending groups

def pending_groups(session: Session) -> list[GroupFacts]:
    groups = session.scalars(
        select(PendingGroup).options(selectinload(PendingGroup.members))
    ).all()
    alerts = alerts_by_ids(session, (m.alert_id for g in groups for m in g.members))
    return [GroupFacts(g.id, g.rule, g.group_key, g.started_at, g.expires_at,
                       tuple(alert_facts(alerts[m.alert_id]) for m in g.members if m.alert_id in alerts))
            for g in groups]


def start_group(session: Session, rule: str, group_key: str, started_at: datetime,
                expires_at: datetime) -> PendingGroup:
    row = PendingGroup(rule=rule, group_key=group_key, started_at=started_at, expires_at=expires_at)
    session.add(row)
    session.flush()
    return row


def add_to_group(session: Session, group_id: int, alert_id: int) -> None:
    session.add(PendingGroupAlert(group_id=group_id, alert_id=alert_id))


def delete_group(session: Session, group_id: int) -> None:
    group = session.get(PendingGroup, group_id)
    if group is not None:
        session.delete(group)


# -------------------------------------------------------- scorer candidates

_MEMBER_COLUMNS = (Alert.fingerprint, Alert.title, Alert.severity, Alert.labels, Alert.fired_at, Alert.resolved_at,
                   Alert.status)


def _member(fingerprint: str, title: str, severity: str, labels: dict[str, str] | None, fired_at: datetime,
            resolved_at: datetime | None, status: str) -> Member:
    return Member(fingerprint, title, severity, dict(labels or {}), fired_at,
                  resolved_at if status == "resolved" else None)


def scorer_candidates(session: Session, alert: Alert, since: datetime) -> list[Candidate]:
    """What the scorer may put `alert` with: incidents not resolved with an alert at or
    after `since`, and alerts since then that were never linked to anything (a link a
    responder removed counts: that alert is not paired again automatically). Plain
    columns, not ORM objects: this runs for every alert."""
    incidents = list(session.scalars(
        select(Incident.id).where(Incident.status != "resolved", Incident.last_activity_at >= since)))
    out: list[Candidate] = []
    if incidents:
        members: dict[int, list[Member]] = {}
        for incident_id, *columns in session.execute(
            select(AlertIncidentLink.incident_id, *_MEMBER_COLUMNS).join(Alert, Alert.id == AlertIncidentLink.alert_id)
            .where(AlertIncidentLink.incident_id.in_(incidents), AlertIncidentLink.removed_at.is_(None),
                   Alert.id != alert.id)
            .order_by(AlertIncidentLink.incident_id, Alert.fired_at, Alert.id)
        ):
            members.setdefault(incident_id, []).append(_member(*columns))
        out += [Candidate(i, None, tuple(members[i])) for i in incidents if i in members]
    loose = session.execute(
        select(Alert.id, *_MEMBER_COLUMNS).where(Alert.fired_at >= since, Alert.fired_at <= alert.fired_at,
                                                 Alert.id != alert.id, ~EVER_LINKED)
        .order_by(Alert.fired_at, Alert.id))
    out += [Candidate(None, alert_id, (_member(*columns),)) for alert_id, *columns in loose]
    return out


def drop_from_groups(session: Session, alert_ids: Iterable[int]) -> None:
    """Alerts that joined an incident leave their pending groups (and an emptied group goes)."""
    ids = list(alert_ids)
    rows = session.scalars(select(PendingGroupAlert).where(PendingGroupAlert.alert_id.in_(ids))).all()
    groups = {r.group_id for r in rows}
    for r in rows:
        session.delete(r)
    session.flush()
    for group_id in groups:
        if not session.scalar(select(func.count()).where(PendingGroupAlert.group_id == group_id)):
            delete_group(session, group_id)


def history(session: Session) -> tuple[dict[int, list[Alert]], list[Alert]]:
    """(resolved incident id -> its linked alerts, alerts linked to nothing and resolved):
    what co-occurrence statistics and the similar-incident index learn from."""
    by_incident: dict[int, list[Alert]] = {i: [] for i in session.scalars(
        select(Incident.id).where(Incident.status == "resolved").order_by(Incident.id))}
    for incident_id, alert in session.execute(
        select(AlertIncidentLink.incident_id, Alert)
        .join(Alert, Alert.id == AlertIncidentLink.alert_id)
        .join(Incident, Incident.id == AlertIncidentLink.incident_id)
        .where(Incident.status == "resolved", AlertIncidentLink.removed_at.is_(None))
        .order_by(AlertIncidentLink.incident_id, Alert.id)
    ):
        by_incident[incident_id].append(alert)
    noise = list(session.scalars(select(Alert).where(Alert.status == "resolved", ~EVER_LINKED).order_by(Alert.id)))
    return by_incident, noise


def alert_texts(session: Session, alert_id: int) -> list[tuple[str, str, dict[str, str]]]:
    """(fingerprint, title, labels) of the alert and of the alerts of the incident it is
    linked to: what similarity is asked with. Plain columns: it runs for every alert."""
    incident_id = session.scalar(select(AlertIncidentLink.incident_id).where(
        AlertIncidentLink.alert_id == alert_id, AlertIncidentLink.removed_at.is_(None))
        .order_by(AlertIncidentLink.id).limit(1))
    q = select(Alert.fingerprint, Alert.title, Alert.labels)
    if incident_id is None:
        q = q.where(Alert.id == alert_id)
    else:
        q = q.join(AlertIncidentLink, AlertIncidentLink.alert_id == Alert.id).where(
            AlertIncidentLink.incident_id == incident_id, AlertIncidentLink.removed_at.is_(None))
    return [(f, t, dict(l or {})) for f, t, l in session.execute(q.order_by(Alert.fired_at, Alert.id))]


def incident_alerts(session: Session, incident_id: int) -> list[Alert]:
    """The alerts linked to an incident (removed links left out), oldest first."""
    return [a for _, a in links_of_incident(session, incident_id)]


# -------------------------------------------------------------- suggestions

def add_suggestion(session: Session, *, alert_id: int, incident_id: int, score: float,
                   components: dict[str, Any] | None, weights_version: str, created_at: datetime) -> Suggestion:
    row = Suggestion(alert_id=alert_id, incident_id=incident_id, score=score, components=components,
                     weights_version=weights_version, created_at=created_at, status="open")
    session.add(row)
    return row


def suggestions_of_incident(session: Session, incident_id: int, status: str | None = "open"
                            ) -> Sequence[tuple[Suggestion, Alert]]:
    q: Select = (select(Suggestion, Alert).join(Alert, Alert.id == Suggestion.alert_id)
                 .where(Suggestion.incident_id == incident_id))
    if status is not None:
        q = q.where(Suggestion.status == status)
    return session.execute(q.order_by(Suggestion.score.desc(), Suggestion.id)).all()  # type: ignore[return-value]


def get_suggestion(session: Session, suggestion_id: int) -> Suggestion | None:
    return session.get(Suggestion, suggestion_id)
