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
from sqlalchemy import CheckConstraint, Engine, delete, inspect, select
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


def test_upgrade_builds_the_models_schema(migrated_engine: Engine) -> None:
    assert current_revision(migrated_engine) == head_revision() == "0001"
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

    def rejected(factory: sessionmaker[Session], build: Callable[[Session], Any]) -> bool:
        with factory() as s:  # own transaction: a failed one is unusable on PostgreSQL
            s.add(build(s))
            try:
                s.flush()
            except IntegrityError:
                return True
            return False

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
