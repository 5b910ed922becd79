"""intake -> decide -> apply, for the live service and the replay alike.

The caller owns the transaction: every function here works in the session it
is given and flushes; none commits. Time is event time: an `EventClock` is
advanced by each alert's own timestamp (and, live, by a wall-clock ticker), and
every window is measured on alert timestamps.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from indexer.embedder import Embedder
from indexer.sync import SyncedIndex, ensure_embeddings
from models.tables import Alert
from service import repository as repo
from service.decide import Decision, Drop, GroupFacts, Link, Open, Pend, Scored, decide, expired, flush
from service.domain import AlertIn
from service.features import CooccurrenceStats, Vocabulary, link_features
from service.parsers.common import StatusChange
from service.rules import AlertFacts, Rules
from service.shadow import record_shadow
from service.similar import AlertText, KindIndex, SimilarHit, SimilarIncidents
from service.weights import Weights

SYSTEM = "alertlink"
# session.info key: the event time a transaction moves the clock to when it commits
EVENT_TIME = "alertlink.event_time"
# session.info key: incidents this transaction created or changed, for after its commit
TOUCHED = "alertlink.touched"


def on_commit(session: Session, key: str, initial: Any, apply: Callable[[Any], None]) -> Any:
    """State a transaction collects in `session.info[key]` (starting at `initial`) and hands
    to `apply` once it commits; a rollback drops it. Returns the state collected so far."""
    if key not in session.info:
        session.info[key] = initial
        event.listen(session, "after_commit", lambda s: apply(s.info.pop(key)), once=True)
        event.listen(session, "after_rollback", lambda s: s.info.pop(key, None), once=True)
    return session.info[key]


class EventClock:
    """Monotonic event time: the newest timestamp seen. Thread-safe."""

    def __init__(self, now: datetime | None = None) -> None:
        self._now = now
        self._lock = threading.Lock()

    @property
    def now(self) -> datetime | None:
        return self._now

    def advance(self, t: datetime) -> datetime:
        with self._lock:
            if self._now is None or t > self._now:
                self._now = t
            return self._now


@dataclass
class Outcome:
    """What happened to one item of a request, in the order the items came."""

    index: int
    alert_id: int | None
    action: Literal["created", "redelivered", "resolved", "acknowledged", "ignored"]
    decision: dict[str, Any] = field(default_factory=dict)


@dataclass
class FlushOutcome:
    group_id: int
    rule: str
    group_key: str
    incident_id: int | None
    alert_ids: list[int]


def match_types(features: dict[str, float]) -> tuple[str, ...]:
    """Which kinds of evidence carried a score, in words a responder reads."""
    out = []
    if features.get("fingerprint"):
        out.append("fingerprint")
    if features.get("shared_label"):
        out.append("labels")
    if features.get("cooc_kind", 0) >= 0.3 or features.get("pmi_kind", 0) >= 1.0:
        out.append("co-occurrence")
    if features.get("gap_e1", 0) >= 0.5:
        out.append("time")
    return tuple(out)


def _json(components: Any) -> dict[str, Any] | None:
    return None if components is None else {k: (round(v, 6) if isinstance(v, float) else
                                                _json(v) if isinstance(v, dict) else v)
                                            for k, v in components.items()}


def describe(decision: Decision, incident_id: int | None = None) -> dict[str, Any]:
    """A decision as the API reports it."""
    out: dict[str, Any] = {"kind": decision.kind, "reason": decision.reason}
    if isinstance(decision, Link):
        out |= {"incident_id": decision.incident_id, "link_type": "auto_correlated", "rule": decision.rule}
    elif isinstance(decision, Open):
        out |= {"incident_id": incident_id, "link_type": "auto_created", "rule": decision.rule}
    if isinstance(decision, (Link, Open)) and decision.score is not None:
        out["score"] = round(decision.score, 4)
    elif isinstance(decision, Pend):
        out |= {"rule": f"aggregation:{decision.rule}", "group_key": decision.group_key,
                "expires_at": decision.expires_at.isoformat()}
    return out


class Pipeline:
    def __init__(self, rules: Rules, clock: EventClock | None = None, *, weights: Weights | None = None,
                 stats: CooccurrenceStats | None = None, similar: SimilarIncidents | None = None,
                 embedder: Embedder | None = None, index: SyncedIndex | None = None,
                 session_factory: sessionmaker[Session] | None = None, shadow: Weights | None = None) -> None:
        self.rules = rules
        self.clock = clock or EventClock()
        # without weights the scorer is off and the rules alone decide (the spine's behaviour)
        self.weights = weights
        # weights in shadow (with the scorer on): their decision is recorded beside the live one,
        # never acted on
        self.shadow = shadow
        self.stats = stats or CooccurrenceStats(weights.vocabulary if weights else Vocabulary())
        self.similar = similar
        # derived data kept up to date after each commit: the FAISS index of incidents
        self.embedder = embedder
        self.index = index
        self.session_factory = session_factory
        # one deciding transaction at a time in this process (see repository.lock_decisions
        # for several processes): decisions read and write open incidents and pending groups
        self.decision_lock = threading.Lock()

    # ----------------------------------------------------------- intake
    def ingest(self, session: Session, items: Sequence[AlertIn | StatusChange],
               received_at: datetime) -> list[Outcome]:
        repo.lock_decisions(session)
        return [self._one(session, i, item, received_at) for i, item in enumerate(items)]

    def _one(self, session: Session, index: int, item: AlertIn | StatusChange,
             received_at: datetime) -> Outcome:
        if isinstance(item, StatusChange):
            row = repo.latest_unresolved(session, item.fingerprint)
            if row is None:
                return Outcome(index, None, "ignored", {"kind": "none",
                               "reason": f"no open alert with fingerprint {item.fingerprint}"})
            row.status = item.status
            if item.status == "resolved":
                row.resolved_at = item.at
            row.last_received_at = received_at
            return Outcome(index, row.id, item.status)

        if item.dedup == "open":  # a key with no start time: the open alert with that key
            row = repo.latest_unresolved(session, item.fingerprint)
            if row is None and repo.find_occurrence(session, item.fingerprint, item.fired_at) is not None:
                # a trigger after the resolve opens a new alert (PagerDuty's rule); its timestamp
                # is the old one, so the new occurrence starts when it arrived
                item = replace(item, fired_at=received_at)
        else:
            row = repo.find_occurrence(session, item.fingerprint, item.fired_at)
        if row is not None:  # the same alert again: idempotent
            was = row.status
            repo.refresh_alert(row, item, received_at)
            action = "resolved" if row.status == "resolved" and was != "resolved" else "redelivered"
            return Outcome(index, row.id, action)

        if item.status == "resolved":
            # Alertmanager's resolve may carry startsAt = endsAt: match by fingerprint alone
            ended = item.resolved_at or item.fired_at
            open_row = repo.latest_unresolved(session, item.fingerprint)
            if open_row is not None and open_row.fired_at <= ended:
                repo.refresh_alert(open_row, item, received_at, keep_content=True)
                return Outcome(index, open_row.id, "resolved")
            done = repo.latest_resolved(session, item.fingerprint, ended)
            if done is not None:  # that resolve again (a retry)
                repo.refresh_alert(done, item, received_at, keep_content=True)
                return Outcome(index, done.id, "redelivered")
            # never seen firing: keep it (nothing accepted is lost) but decide nothing on it
            row = repo.insert_alert(session, item, received_at)
            return Outcome(index, row.id, "created", {"kind": "none", "reason": "arrived resolved"})

        row = repo.insert_alert(session, item, received_at)
        now = self.event_time(session, item.fired_at)
        _, pending = self._flush(session, now)
        decision = self.decide(session, row, pending)
        incident_id = self.apply(session, decision, row)
        return Outcome(index, row.id, "created", describe(decision, incident_id))

    def incident_changed(self, session: Session, incident_id: int, *, resolved: bool = False,
                         reopened: bool = False) -> None:
        """An incident was created, retitled or resolved in this transaction: embed its
        text now (stored beside it), and after the commit update the derived data."""
        if self.embedder is not None:
            ensure_embeddings(session, self.embedder, [incident_id])
        touched = on_commit(session, TOUCHED, {"changed": set(), "resolved": set(), "reopened": set()},
                            self._after_commit)
        touched["changed"].add(incident_id)
        if resolved:
            touched["resolved"].add(incident_id)
        if reopened:
            touched["reopened"].add(incident_id)

    def _after_commit(self, touched: dict[str, set[int]]) -> None:
        if self.session_factory is None:
            return
        with self.session_factory() as session:
            if self.index is not None:
                self.index.update(session, sorted(touched["changed"]))
            for incident_id in sorted(touched["resolved"]):
                self.learn_resolved(session, incident_id)
            for incident_id in sorted(touched["reopened"]):
                if self.similar is not None:  # open again: not history any more
                    self.similar.drop(incident_id)

    def learn_resolved(self, session: Session, incident_id: int) -> None:
        """A resolved incident becomes history: its kinds count for co-occurrence and it
        can be found as a similar past incident."""
        incident = repo.get_incident(session, incident_id)
        if incident is None or incident.status != "resolved" or self.similar is None:
            return
        alerts = repo.incident_alerts(session, incident_id)
        if incident_id not in self.similar.past:
            # a postmortem's later links refresh only its profile below; the statistics are
            # recounted from the database at the next start (as is a reopened, re-resolved one)
            self.stats.add_incident((dict(a.labels or {}), a.title) for a in alerts)
        self.similar.add_past(incident_id, map(alert_text, alerts))

    def event_time(self, session: Session, t: datetime) -> datetime:
        """Event time for this transaction: the clock moved to `t`, but only for
        good once the transaction commits (a rolled-back alert moves nothing)."""
        now = max(t, self.clock.now or t, on_commit(session, EVENT_TIME, t, self.clock.advance))
        session.info[EVENT_TIME] = now
        return now

    # ---------------------------------------------------------- decide
    def decide(self, session: Session, row: Alert, pending: Sequence[GroupFacts] | None = None) -> Decision:
        """`pending`: the groups still pending, when the caller has just read them."""
        facts = repo.alert_facts(row)
        link, create = self.rules.auto_link, self.rules.auto_create
        window = max(link.correlation_window, create.dedup_window)
        incidents = repo.active_incidents(session, facts.fired_at - window, facts,
                                          [link.match_fields, create.match_fields])
        groups = {(g.rule, g.group_key): g for g in (repo.pending_groups(session) if pending is None else pending)}
        if self.weights is None:
            return decide(facts, incidents, groups, self.rules)
        scored = self.score(session, row, facts)
        decision = decide(facts, incidents, groups, self.rules, scored, self.weights.auto_link_at)
        self.suggest(session, row, scored, decision)
        if self.shadow is not None:  # the same candidates scored by the shadow weights: only recorded
            record_shadow(session, facts, scored, self.weights, self.shadow)
        return decision

    def suggest(self, session: Session, row: Alert, scored: Sequence[Scored], decision: Decision) -> None:
        """Incidents the alert may belong to, scored between suggest_at and auto_link_at,
        are left for a responder (never the incident the alert went into)."""
        assert self.weights is not None
        chosen = decision.incident_id if isinstance(decision, Link) else None
        for s in scored:
            if (s.incident_id is not None and s.incident_id != chosen
                    and self.weights.suggest_at <= s.score < self.weights.auto_link_at):
                repo.add_suggestion(session, alert_id=row.id, incident_id=s.incident_id, score=s.score,
                                    components=_json(s.components), weights_version=self.weights.version,
                                    created_at=row.fired_at)

    def score(self, session: Session, row: Alert, facts: AlertFacts) -> list[Scored]:
        """The scorer's verdict on every candidate in the window."""
        assert self.weights is not None
        since = facts.fired_at - timedelta(minutes=self.weights.window_minutes)
        out = []
        for candidate in repo.scorer_candidates(session, row, since):
            features = link_features(facts, candidate, self.stats)
            score, parts = self.weights.link_score(features)
            first = candidate.members[0]
            out.append(Scored(candidate.incident_id, candidate.alert_id, round(score, 6),
                              {"intercept": self.weights.link.intercept, **parts, "features": features},
                              match_types(features), first.title, first.severity))
        return out

    # ----------------------------------------------------------- apply
    def _version(self, rule: str) -> str:
        """What decided a link: the weights file for the scorer, the rules files otherwise."""
        if rule == "scorer" and self.weights is not None:
            return f"weights-{self.weights.version}"
        return self.rules.version

    def apply(self, session: Session, decision: Decision | Drop, row: Alert | None) -> int | None:
        """Write a decision: links, incidents, groups and timeline events."""
        if isinstance(decision, Link):
            incident = repo.get_incident(session, decision.incident_id)
            assert incident is not None and row is not None
            repo.add_link(session, alert=row, incident=incident, link_type="auto_correlated",
                          linked_at=row.fired_at, linked_by=SYSTEM, rule=decision.rule,
                          score=decision.score, components=_json(decision.components),
                          version=self._version(decision.rule))
            repo.add_event(session, incident.id, "alert_linked", row.fired_at, SYSTEM, alert_id=row.id,
                           link_type="auto_correlated", rule=decision.rule, reason=decision.reason)
            return incident.id
        if isinstance(decision, Open):
            alerts = repo.alerts_by_ids(session, decision.alert_ids)
            incident = repo.create_incident(session, title=decision.title[:500], severity=decision.severity,
                                            created_at=decision.opened_at, summary=decision.summary,
                                            aggregation_key=decision.aggregation_key)
            repo.add_event(session, incident.id, "incident_created", decision.opened_at, SYSTEM,
                           rule=decision.rule, reason=decision.reason, alert_ids=list(decision.alert_ids))
            for alert_id in decision.alert_ids:
                repo.add_link(session, alert=alerts[alert_id], incident=incident, link_type="auto_created",
                              linked_at=decision.opened_at, linked_by=SYSTEM, rule=decision.rule,
                              score=decision.score, components=_json(decision.components),
                              version=self._version(decision.rule))
            if decision.group_id is not None:
                repo.delete_group(session, decision.group_id)
            repo.drop_from_groups(session, decision.alert_ids)
            self.incident_changed(session, incident.id)
            self.add_context(session, incident.id, [alerts[i] for i in decision.alert_ids], decision.opened_at)
            return incident.id
        if isinstance(decision, Pend):
            assert row is not None
            group_id = decision.group_id
            if group_id is None:
                group_id = repo.start_group(session, decision.rule, decision.group_key,
                                            decision.started_at, decision.expires_at).id
            repo.add_to_group(session, group_id, row.id)
            return None
        if isinstance(decision, Drop):
            repo.delete_group(session, decision.group_id)
        return None

    def find_similar(self, alerts: Sequence[Alert], k: int = 10) -> list[SimilarHit]:
        return self.similar.find([alert_text(a) for a in alerts], k) if self.similar and alerts else []

    def add_context(self, session: Session, incident_id: int, alerts: Sequence[Alert], at: datetime) -> None:
        """A past incident this similar goes on the new incident's timeline, with its
        root cause and fix: the first thing a responder wants to read."""
        if self.weights is None:
            return
        hits = self.find_similar(alerts, 1)
        if not hits or hits[0].score < self.weights.context_at:
            return
        past = repo.get_incident(session, hits[0].incident_id)
        if past is None:
            return
        repo.add_event(session, incident_id, "similar_incident", at, SYSTEM, past_incident_id=past.id,
                       title=past.title, root_cause=past.root_cause, summary=past.summary,
                       score=hits[0].score, components=hits[0].components, weights_version=self.weights.version)

    # ----------------------------------------------------------- clock
    def flush_expired(self, session: Session, now: datetime) -> list[FlushOutcome]:
        """Close every pending group whose window ended before `now`."""
        return self._flush(session, now)[0]

    def _flush(self, session: Session, now: datetime) -> tuple[list[FlushOutcome], list[GroupFacts]]:
        """Flush the expired groups; also returns the groups still pending (read once per alert)."""
        groups = repo.pending_groups(session)
        done = expired(groups, now)
        out = []
        for group in done:
            decision = flush(group, self.rules)
            incident_id = self.apply(session, decision, None)
            out.append(FlushOutcome(group.id, group.rule, group.group_key, incident_id,
                                    [m.id for m in group.members]))
        session.flush()
        flushed = {g.id for g in done}
        return out, [g for g in groups if g.id not in flushed]

    def tick(self, session: Session, wall_now: datetime) -> list[FlushOutcome]:
        """Live operation: advance event time by the wall clock and flush."""
        repo.lock_decisions(session)
        return self.flush_expired(session, self.event_time(session, wall_now))


def alert_text(alert: Alert) -> AlertText:
    return AlertText(alert.fingerprint, alert.title, dict(alert.labels or {}))


def learn_history(session: Session, weights: Weights) -> tuple[CooccurrenceStats, SimilarIncidents]:
    """Co-occurrence statistics and the kind index of past incidents, from the database."""
    vocabulary = weights.vocabulary
    by_incident, noise = repo.history(session)
    stats, kinds = CooccurrenceStats(vocabulary), KindIndex(vocabulary)
    for incident_id, alerts in by_incident.items():
        stats.add_incident((dict(a.labels or {}), a.title) for a in alerts)
        kinds.add(incident_id, map(alert_text, alerts))
    for a in noise:
        stats.add_noise(dict(a.labels or {}), a.title)
    return stats, SimilarIncidents(weights.similar, kinds, by_incident)
