"""The migrations build exactly the models' schema, and the schema enforces what it promises.

Every test runs on SQLite and on PostgreSQL (`db_url` is parametrized).
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import CheckConstraint, Engine, delete, insert, inspect, select
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from models.db import (
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    make_session_factory,
    migrate,
)
from models.tables import (
    Alert,
    AlertIncidentLink,
    Base,
    Incident,
    IncidentEvent,
    PendingGroup,
    PendingGroupAlert,
    Suggestion,
)

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
TABLES = sorted(Base.metadata.tables)


def incident(**kw: Any) -> Incident:
    return Incident(**{"title": "disk full", "severity": "high", "created_at": T0,
                       "last_activity_at": T0, **kw})


def alert(**kw: Any) -> Alert:
    return Alert(**{"fingerprint": "fp1", "title": "disk full", "source": "alertmanager",
                    "severity": "high", "fired_at": T0, "received_at": T0,
                    "last_received_at": T0, **kw})


def link(a: Alert, i: Incident, **kw: Any) -> AlertIncidentLink:
    return AlertIncidentLink(**{"alert": a, "incident": i, "link_type": "manual",
                                "linked_at": T0, "linked_by": "test", **kw})


def schema_diff(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def check_constraints(engine: Engine) -> dict[str, list[str | None]]:
    insp = inspect(engine)
    return {t: sorted(c["name"] for c in insp.get_check_constraints(t)) for t in TABLES}



def rejected(factory: sessionmaker[Session], build: Callable[[Session], Any]) -> bool:
    """Whether the database refuses the row `build` makes (in its own transaction: a failed
    one is unusable on PostgreSQL)."""
    with factory() as s:
        s.add(build(s))
        try:
            s.flush()
        except IntegrityError:
            return True
        return False

def test_upgrade_builds_the_models_schema(migrated_engine: Engine) -> None:
    assert current_revision(migrated_engine) == head_revision() == "0003"
    # Nothing is ignored. SQLite has no time-zone-aware column type (DATETIME either way), so
    # DateTime(timezone=True) is checked on PostgreSQL only; UTCDateTime covers SQLite.
    assert schema_diff(migrated_engine) == []
    # autogenerate does not compare CHECK constraints: compare them by name
    expected = {
        t: sorted(c.name for c in Base.metadata.tables[t].constraints
                  if isinstance(c, CheckConstraint))
        for t in TABLES
    }
    assert check_constraints(migrated_engine) == expected


def test_downgrade_to_base_then_upgrade_again(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        migrate(engine)
        migrate(engine)  # already at head: nothing to do
        downgrade(engine, "base")
        # Alembic keeps its (now empty) bookkeeping table
        assert inspect(engine).get_table_names() == ["alembic_version"]
        assert current_revision(engine) is None
        migrate(engine)
        assert sorted(inspect(engine).get_table_names()) == sorted([*TABLES, "alembic_version"])
        assert schema_diff(engine) == []
    finally:
        engine.dispose()


def test_deletes_cascade(migrated_engine: Engine) -> None:
    factory = make_session_factory(migrated_engine)
    with factory.begin() as s:
        a1, a2, i1, i2 = alert(), alert(fingerprint="fp2"), incident(), incident()
        group = PendingGroup(rule="r", group_key="k", started_at=T0, expires_at=T0)
        s.add_all([link(a1, i1), link(a1, i2), link(a2, i2), group,
                   IncidentEvent(incident=i1, at=T0, kind="opened", actor="test"),
                   IncidentEvent(incident=i2, at=T0, kind="opened", actor="test")])
        s.flush()
        s.add_all([PendingGroupAlert(group_id=group.id, alert_id=a.id) for a in (a1, a2)])

    def rows(s: Session) -> dict[str, list[Any]]:
        pairs = select(AlertIncidentLink.alert_id, AlertIncidentLink.incident_id)
        return {
            "links": sorted(map(tuple, s.execute(pairs))),
            "events": sorted(s.scalars(select(IncidentEvent.incident_id))),
            "members": sorted(s.scalars(select(PendingGroupAlert.alert_id))),
        }

    # Core deletes: the database cascades, not the ORM
    with factory.begin() as s:
        s.execute(delete(Incident).where(Incident.id == i1.id))
        assert rows(s) == {"links": [(a1.id, i2.id), (a2.id, i2.id)], "events": [i2.id],
                           "members": [a1.id, a2.id]}
        s.execute(delete(Alert).where(Alert.id == a1.id))
        assert rows(s) == {"links": [(a2.id, i2.id)], "events": [i2.id],
                           "members": [a2.id]}
        s.execute(delete(PendingGroup))
        assert rows(s) == {"links": [(a2.id, i2.id)], "events": [i2.id], "members": []}


def test_constraints_reject_bad_rows(migrated_engine: Engine) -> None:
    factory = make_session_factory(migrated_engine)
    with factory.begin() as s:
        a, i = alert(), incident()
        s.add(link(a, i))

    bad_rows: dict[str, Callable[[Session], Any]] = {
        "same alert-incident pair": lambda s: link(s.get(Alert, a.id), s.get(Incident, i.id)),
        "same fingerprint and fired_at": lambda s: alert(),
        "incident status": lambda s: incident(status="closed"),
        "incident severity": lambda s: incident(severity="urgent"),
        "alert status": lambda s: alert(fingerprint="fp2", status="open"),
        "alert severity": lambda s: alert(fingerprint="fp3", severity="urgent"),
        "link type": lambda s: link(alert(fingerprint="fp4"), s.get(Incident, i.id),
                                    link_type="guessed"),
    }

    assert {case: rejected(factory, build) for case, build in bad_rows.items()} == dict.fromkeys(
        bad_rows, True
    )
    # the same kinds of rows, valid, are accepted
    with factory.begin() as s:
        s.add_all([link(alert(fingerprint="fp2", fired_at=T0 + timedelta(1)), incident(),
                        link_type="auto_created")])


def test_times_read_back_aware_utc(migrated_engine: Engine) -> None:
    factory = make_session_factory(migrated_engine)
    elsewhere = datetime(2025, 1, 1, 7, 0, tzinfo=timezone(timedelta(hours=-5)))  # == T0
    with factory.begin() as s:
        s.add(incident(created_at=T0, last_activity_at=elsewhere))

    with factory() as s:
        times = s.execute(select(Incident.created_at, Incident.last_activity_at)).one()
        assert [(t, t.tzinfo) for t in times] == [(T0, UTC), (T0, UTC)]
        # stored as the same instant, so SQL comparisons agree too
        assert s.scalar(select(Incident.id).where(Incident.last_activity_at == T0)) is not None

    with factory() as s, pytest.raises(StatementError, match="naive datetime"):
        s.add(incident(created_at=datetime(2025, 1, 1, 12, 0)))
        s.flush()


def table_shape(engine: Engine, table: str) -> dict[str, Any]:
    insp = inspect(engine)
    return {
        "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)],
        "checks": sorted(c["name"] for c in insp.get_check_constraints(table)),
        "indexes": sorted(i["name"] for i in insp.get_indexes(table)),
        "foreign_keys": sorted(f["name"] for f in insp.get_foreign_keys(table)),
    }


def test_0002_keeps_incidents_both_ways(db_url: str) -> None:
    """0001 -> 0002 adds the embedding columns to existing incidents; 0002 -> 0001 (a table
    copy on SQLite) gives back 0001's table with the rows and their children intact."""
    engine = make_engine(db_url)
    try:
        migrate(engine, "0001")
        at_0001 = table_shape(engine, "incidents")
        # Core inserts naming 0001's columns only: the ORM classes already carry 0002's
        rows = [{"id": n, "title": f"disk full {n}", "severity": "high", "status": "open",
                 "created_at": T0, "last_activity_at": T0 + timedelta(minutes=n),
                 "root_cause": "log rotation" if n == 2 else None} for n in (1, 2)]
        with engine.begin() as conn:
            conn.execute(insert(Incident.__table__), rows)
            conn.execute(insert(IncidentEvent.__table__),
                         [{"incident_id": 2, "at": T0, "kind": "opened", "actor": "test", "data": {}}])

        def incidents() -> list[dict[str, Any]]:
            with engine.connect() as conn:
                return [dict(r._mapping) for r in conn.execute(
                    select(*(Incident.__table__.c[k] for k in rows[0])).order_by(Incident.id))]

        migrate(engine, "0002")
        assert current_revision(engine) == "0002"
        assert incidents() == rows
        with make_session_factory(engine)() as s:
            assert s.execute(select(Incident.id, Incident.embedding, Incident.embedding_model,
                                    Incident.embedding_key).order_by(Incident.id)).all() == [
                (1, None, None, None), (2, None, None, None)]

        downgrade(engine, "0001")
        assert current_revision(engine) == "0001"
        assert table_shape(engine, "incidents") == at_0001
        assert "suggestions" not in inspect(engine).get_table_names()
        assert incidents() == rows
        with engine.connect() as conn:
            assert conn.execute(select(IncidentEvent.__table__.c.incident_id)).scalars().all() == [2]
    finally:
        engine.dispose()


def test_suggestions_cascade_and_constraints(migrated_engine: Engine) -> None:
    factory = make_session_factory(migrated_engine)

    def suggestion(a: Alert, i: Incident, **kw: Any) -> Suggestion:
        return Suggestion(**{"alert": a, "incident": i, "score": 0.61, "weights_version": "w1",
                             "created_at": T0, **kw})

    with factory.begin() as s:
        a1, a2, i1, i2 = alert(), alert(fingerprint="fp2"), incident(), incident()
        s.add_all([suggestion(a1, i1, components={"semantic": 0.9}), suggestion(a1, i2),
                   suggestion(a2, i2, status="dismissed", decided_by="ana", decided_at=T0)])

    assert [rejected(factory, lambda s: suggestion(s.get(Alert, a1.id), s.get(Incident, i1.id))),
            rejected(factory, lambda s: suggestion(alert(fingerprint="fp3"), s.get(Incident, i1.id),
                                          status="maybe"))] == [True, True]

    def rows(s: Session) -> list[tuple[Any, ...]]:
        return sorted(map(tuple, s.execute(select(Suggestion.alert_id, Suggestion.incident_id,
                                                  Suggestion.status, Suggestion.decided_at))))

    with factory.begin() as s:
        assert rows(s) == [(a1.id, i1.id, "open", None), (a1.id, i2.id, "open", None),
                           (a2.id, i2.id, "dismissed", T0)]
        s.execute(delete(Incident).where(Incident.id == i1.id))
        assert rows(s) == [(a1.id, i2.id, "open", None), (a2.id, i2.id, "dismissed", T0)]
        s.execute(delete(Alert).where(Alert.id == a1.id))
        assert rows(s) == [(a2.id, i2.id, "dismissed", T0)]
