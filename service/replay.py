"""Replay a labelled data set (`../shared/bench/DATASET.md`) through the live pipeline.

History goes into a fresh database as resolved incidents with `historical`
links; the stream is fed in event-time order, one delivery per transaction as
the live service would receive it, with the alerts' own timestamps as the
clock. Nothing later in the stream is looked at when an alert is decided.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from indexer.embedder import Embedder
from indexer.sync import load_or_rebuild
from models.db import make_engine, make_session_factory, migrate
from models.tables import Alert, AlertIncidentLink, Incident
from service import repository as repo
from service.parsers import generic
from service.pipeline import EventClock, Pipeline, learn_history
from service.rules import Rules
from service.settings import Settings
from service.similar import AlertText
from service.weights import Weights

HISTORY_ACTOR = "history"


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open() as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _alert_in(row: dict[str, Any], settings: Settings, *, resolved: bool):
    """A data set row as the generic intake format (the same parser as POST /alerts)."""
    body = {k: row[k] for k in ("fingerprint", "title", "source", "severity", "fired_at", "labels", "annotations")
            if k in row}
    body["external_id"] = row["id"]
    if resolved and row.get("resolved_at"):
        body["resolved_at"] = row["resolved_at"]
    parsed = generic.GenericBody.model_validate(body)
    at = datetime.fromisoformat(row["resolved_at"] if resolved else row["fired_at"])
    return generic.to_alerts(parsed, received_at=at, severity_words=settings.severity_words(),
                             default_severity=settings.default_severity)[0]


def load_history(session: Session, data: Path, settings: Settings) -> dict[str, int]:
    """Past incidents and alerts, linked as `historical`. Returns external -> our incident id."""
    incidents: dict[str, Incident] = {}
    for row in read_jsonl(data / "history" / "incidents.jsonl"):
        created = datetime.fromisoformat(row["created_at"])
        resolved = datetime.fromisoformat(row["resolved_at"]) if row.get("resolved_at") else None
        incidents[row["id"]] = Incident(
            external_id=row["id"], title=row["title"], severity=row.get("severity", "high"),
            status="resolved" if resolved else "open", created_at=created, resolved_at=resolved,
            root_cause=row.get("root_cause"), summary=row.get("summary"), last_activity_at=resolved or created)
    session.add_all(incidents.values())
    session.flush()
    links = []
    for row in read_jsonl(data / "history" / "alerts.jsonl"):
        a = _alert_in(row, settings, resolved=True)
        alert = Alert(external_id=a.external_id, fingerprint=a.fingerprint, title=a.title, source=a.source,
                      severity=a.severity, fired_at=a.fired_at, resolved_at=a.resolved_at, status=a.status,
                      labels=dict(a.labels), annotations=dict(a.annotations), delivery_count=1,
                      received_at=a.fired_at, last_received_at=a.resolved_at or a.fired_at)
        session.add(alert)
        if (incident := incidents.get(row.get("incident_id") or "")) is not None:
            links.append((alert, incident))
    session.flush()
    session.add_all(AlertIncidentLink(alert_id=alert.id, incident_id=incident.id, link_type="historical",
                                      linked_at=incident.resolved_at or alert.fired_at, linked_by=HISTORY_ACTOR)
                    for alert, incident in links)
    session.flush()
    return {ext: i.id for ext, i in incidents.items()}


@dataclass
class ReplayResult:
    predictions: list[dict[str, Any]]
    history_incidents: int
    stream_alerts: int
    incidents_opened: int


def stream_events(rows: list[dict[str, Any]]) -> list[tuple[str, int, dict[str, Any]]]:
    """Every firing and every resolve, in event-time order (a fire before a resolve at the same
    second, file order among equals)."""
    events = [(r["fired_at"], 0, i, r) for i, r in enumerate(rows)]
    events += [(r["resolved_at"], 1, i, r) for i, r in enumerate(rows) if r.get("resolved_at")]
    events.sort(key=lambda e: (datetime.fromisoformat(e[0]), e[1], e[2]))
    return [("fire" if kind == 0 else "resolve", i, r) for _, kind, i, r in events]


def replay(data: Path, settings: Settings, rules: Rules, weights: Weights | None = None,
           embedder: Embedder | Callable[[], Embedder] | None = None) -> ReplayResult:
    """`embedder` may be a factory: the model then loads while the history does."""
    engine = make_engine("sqlite://")  # a fresh database for every replay
    loading = None
    if callable(embedder) and not isinstance(embedder, Embedder):
        loading = ThreadPoolExecutor(1).submit(embedder)
    try:
        migrate(engine)
        factory: sessionmaker[Session] = make_session_factory(engine)
        with factory.begin() as session:
            history = load_history(session, data, settings)
        our_to_external = {v: k for k, v in history.items()}

        with factory() as session:
            stats, similar = learn_history(session, weights) if weights else (None, None)
        if loading is not None:
            embedder = loading.result()
        if similar is not None and embedder is not None:  # meaning, from an in-memory index
            index = load_or_rebuild(None, factory, embedder)
            similar.embed = embedder.embed
            similar.search = lambda v, k, allowed: index.search(v, k, allowed=allowed)
        # incidents the stream opens stay open, so they are never searched here: embedding
        # them (as the live service does) would only cost time
        pipeline = Pipeline(rules, EventClock(), weights=weights, stats=stats, similar=similar)
        rows = list(read_jsonl(data / "stream" / "alerts.jsonl"))
        stored: dict[str, int] = {}
        similar: dict[str, list[str]] = {}
        last: datetime | None = None
        for kind, _, row in stream_events(rows):
            item = _alert_in(row, settings, resolved=kind == "resolve")
            at = item.resolved_at if kind == "resolve" else item.fired_at
            with pipeline.decision_lock, factory.begin() as session:
                outcome = pipeline.ingest(session, [item], at)[0]
            if kind == "fire" and outcome.alert_id is not None:
                stored[row["id"]] = outcome.alert_id
                # the answer at the moment it was processed: with the incident it went into
                with factory() as session:
                    texts = [AlertText(*t) for t in repo.alert_texts(session, outcome.alert_id)]
                    similar[row["id"]] = [our_to_external.get(h.incident_id, str(h.incident_id))
                                          for h in pipeline.similar.find(texts)] if pipeline.similar else []
            last = at if last is None or (at and at > last) else last

        # time goes on after the stream: groups still pending are flushed as they would be live
        if last is not None:
            longest = max((r.time_window for r in rules.aggregation), default=timedelta(0))
            with pipeline.decision_lock, factory.begin() as session:
                pipeline.tick(session, last + longest + timedelta(seconds=1))

        with factory() as session:
            linked = repo.incidents_of_alerts(session, stored.values())
            opened = session.query(Incident).filter(Incident.external_id.is_(None)).count()
        predictions = []
        for row in rows:
            incident_id = linked.get(stored.get(row["id"], -1))
            label = None if incident_id is None else our_to_external.get(incident_id, str(incident_id))
            predictions.append({"alert_id": row["id"], "incident_id": label, "similar": similar.get(row["id"], [])})
        return ReplayResult(predictions, len(history), len(rows), opened)
    finally:
        engine.dispose()


def write_predictions(predictions: list[dict[str, Any]], out: Path) -> None:
    with out.open("w") as fh:
        for p in predictions:
            fh.write(json.dumps(p, sort_keys=True) + "\n")
