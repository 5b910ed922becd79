"""The pipeline against a real database, on SQLite and PostgreSQL: one
`factory.begin()` transaction per ingest, as the app does. No HTTP."""
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from helpers import alert_in
from models.db import make_engine, make_session_factory
from models.tables import Alert, AlertIncidentLink, Incident, IncidentEvent, PendingGroup, PendingGroupAlert
from service import repository as repo
from service.decide import IncidentFacts
from service.parsers.common import StatusChange
from service.pipeline import FlushOutcome, Pipeline
from service.rules import AlertFacts, load_rules, seed_rules_dir
from service.settings import Settings

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
RECEIVED = datetime(2026, 12, 3, 16, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
RULES = load_rules(seed_rules_dir(), Settings().severity_words())
CHECKOUT = {"service": "checkout", "environment": "production"}
CART = {"service": "cart", "environment": "production"}
TABLES = (Alert, Incident, AlertIncidentLink, IncidentEvent, PendingGroup, PendingGroupAlert)


@pytest.fixture
def factory(migrated_engine):
    return make_session_factory(migrated_engine)


@pytest.fixture
def restart(db_url):
    """start() -> (session factory, Pipeline) on a new engine over the same database, as after a restart."""
    engines = []

    def start():
        engines.append(make_engine(db_url))
        return make_session_factory(engines[-1]), Pipeline(RULES)

    yield start
    for engine in engines:
        engine.dispose()


def ingest(factory, pipeline, *items) -> list[tuple]:
    with factory.begin() as session:
        return [(o.alert_id, o.action, o.decision.get("kind")) for o in pipeline.ingest(session, items, RECEIVED)]


def rows(factory, query) -> list[tuple]:
    with factory() as session:
        return [tuple(r) for r in session.execute(query)]


def links(factory) -> list[tuple]:
    return rows(factory, select(AlertIncidentLink.alert_id, AlertIncidentLink.incident_id, AlertIncidentLink.link_type,
                                AlertIncidentLink.linked_by, AlertIncidentLink.rule,
                                AlertIncidentLink.decided_by_version).order_by(AlertIncidentLink.alert_id))


def incidents(factory) -> list[tuple]:
    return rows(factory, select(Incident.id, Incident.title, Incident.severity, Incident.created_at,
                                Incident.aggregation_key).order_by(Incident.id))


def counts(factory) -> dict[str, int]:
    with factory() as session:
        return {t.__tablename__: session.scalar(select(func.count()).select_from(t)) for t in TABLES}


# --- intake: store, dedup, re-delivery, re-fire, resolve ----------------------------------------------

def test_store_redeliver_refire_resolve(factory):
    p = Pipeline(RULES)
    steps = [
        alert_in("disk", T0),
        alert_in("disk", T0),                                                      # the same occurrence again
        alert_in("disk", T0, status="resolved", resolved_at=T0 + 5 * MIN),
        alert_in("disk", T0 + 20 * MIN),                                           # re-fire: a new occurrence
        alert_in("disk", T0 + 30 * MIN, status="resolved", resolved_at=T0 + 30 * MIN),  # startsAt = endsAt
        StatusChange("no-such-key", "resolved", T0 + 40 * MIN),
    ]
    assert [ingest(factory, p, step) for step in steps] == [
        [(1, "created", "none")], [(1, "redelivered", None)], [(1, "resolved", None)],
        [(2, "created", "none")], [(2, "resolved", None)], [(None, "ignored", "none")]]
    assert rows(factory, select(Alert.id, Alert.status, Alert.fired_at, Alert.resolved_at, Alert.delivery_count)
                .order_by(Alert.id)) == [(1, "resolved", T0, T0 + 5 * MIN, 3),
                                         (2, "resolved", T0 + 20 * MIN, T0 + 30 * MIN, 2)]


def test_a_key_without_start_time_is_the_open_alert_with_that_key(factory):
    p = Pipeline(RULES)
    steps = [alert_in("k", T0, dedup="open"), alert_in("k", T0 + MIN, dedup="open"),
             StatusChange("k", "acknowledged", T0 + 2 * MIN), alert_in("k", T0 + 3 * MIN, dedup="open"),
             StatusChange("k", "resolved", T0 + 4 * MIN), alert_in("k", T0 + 5 * MIN, dedup="open")]
    assert [ingest(factory, p, step)[0][:2] for step in steps] == [
        (1, "created"), (1, "redelivered"), (1, "acknowledged"), (1, "redelivered"), (1, "resolved"), (2, "created")]
    assert rows(factory, select(Alert.id, Alert.status, Alert.fired_at, Alert.resolved_at, Alert.delivery_count)
                .order_by(Alert.id)) == [(1, "resolved", T0, T0 + 4 * MIN, 3), (2, "firing", T0 + 5 * MIN, None, 1)]


# --- decisions written: links and timeline ------------------------------------------------------------

def test_auto_create_and_auto_link(factory):
    p = Pipeline(RULES)
    outcomes = [ingest(factory, p, a) for a in (
        alert_in("down", T0, "critical", labels=CHECKOUT),
        alert_in("slow", T0 + 10 * MIN, "high", labels=CHECKOUT),
        alert_in("search", T0 + 11 * MIN, "high", labels={"service": "search", "environment": "production"}))]
    assert outcomes == [[(1, "created", "open")], [(2, "created", "link")], [(3, "created", "open")]]
    assert links(factory) == [(1, 1, "auto_created", "alertlink", "auto_create", RULES.version),
                              (2, 1, "auto_correlated", "alertlink", "auto_link", RULES.version),
                              (3, 2, "auto_created", "alertlink", "auto_create", RULES.version)]
    assert incidents(factory) == [(1, "[Auto] down", "critical", T0, None),
                                  (2, "[Auto] search", "high", T0 + 11 * MIN, None)]
    reason = "severity_in [critical, high], source_not_in [load-tests, synthetic-monitors]"
    linked = "service=checkout, environment=production as in #1"
    assert rows(factory, select(IncidentEvent.incident_id, IncidentEvent.kind, IncidentEvent.at, IncidentEvent.actor,
                                IncidentEvent.data).order_by(IncidentEvent.id)) == [
        (1, "incident_created", T0, "alertlink", {"rule": "auto_create", "reason": reason, "alert_ids": [1]}),
        (1, "alert_linked", T0 + 10 * MIN, "alertlink", {"alert_id": 2, "link_type": "auto_correlated",
                                                         "rule": "auto_link", "reason": linked}),
        (2, "incident_created", T0 + 11 * MIN, "alertlink", {"rule": "auto_create", "reason": reason,
                                                             "alert_ids": [3]})]
    assert rows(factory, select(Incident.id, Incident.last_activity_at).order_by(Incident.id)) == [
        (1, T0 + 10 * MIN), (2, T0 + 11 * MIN)]


# --- pending groups survive a restart -----------------------------------------------------------------

AGGREGATED = ("aggregation:service-alerts",)


def test_a_group_started_before_a_restart_completes_after_it(factory, restart):
    assert ingest(factory, Pipeline(RULES), alert_in("slow", T0, "medium", labels=CART)) == [(1, "created", "pend")]
    factory2, pipeline2 = restart()
    assert ingest(factory2, pipeline2, alert_in("errors", T0 + 2 * MIN, "medium", labels=CART)) == [
        (2, "created", "open")]
    assert (incidents(factory2), links(factory2), counts(factory2)["pending_groups"]) == (
        [(1, "[Aggregated] cart: 2 related alerts", "medium", T0 + 2 * MIN, "cart:production")],
        [(1, 1, "auto_created", "alertlink", *AGGREGATED, RULES.version),
         (2, 1, "auto_created", "alertlink", *AGGREGATED, RULES.version)], 0)


def test_a_group_started_before_a_restart_is_flushed_by_tick_after_it(factory, restart):
    ingest(factory, Pipeline(RULES), alert_in("slow", T0, "medium", labels=CART),
           alert_in("errors", T0 + 3 * MIN, "medium", labels={"service": "search", "environment": "production"}))
    factory2, pipeline2 = restart()
    flushed = []
    for wall_now in (T0 + 4 * MIN, T0 + 6 * MIN):
        with factory2.begin() as session:
            flushed.append(pipeline2.tick(session, wall_now))
    assert flushed == [[], [FlushOutcome(1, "service-alerts", "cart:production", 1, [1])]]
    assert (incidents(factory2), links(factory2), rows(factory2, select(PendingGroup.group_key))) == (
        [(1, "[Aggregated] cart: 1 related alerts", "medium", T0 + 5 * MIN, "cart:production")],
        [(1, 1, "auto_created", "alertlink", *AGGREGATED, RULES.version)],
        [("search:production",)])


# --- removed links do not match -------------------------------------------------------------------------

@pytest.mark.parametrize("removed, facts, refire", [
    pytest.param(False, IncidentFacts(1, None, T0, frozenset({"down"}),
                                      ({"environment": "production", "service": "checkout"},)),
                 [(2, "created", "link")], id="linked"),
    pytest.param(True, IncidentFacts(1, None, T0, frozenset(), ()), [(2, "created", "open")], id="removed"),
])
def test_a_removed_link_does_not_count_for_matching(factory, removed, facts, refire):
    p = Pipeline(RULES)
    ingest(factory, p, alert_in("down", T0, "critical", labels=CHECKOUT))
    if removed:
        with factory.begin() as session:
            session.execute(update(AlertIncidentLink).values(removed_at=T0 + MIN, removed_by="erin"))
    later = alert_in("down", T0 + 10 * MIN, "critical", labels=CHECKOUT)
    with factory() as session:
        matched = repo.active_incidents(session, T0 - timedelta(hours=4), AlertFacts(
            0, later.fingerprint, later.title, later.source, later.severity, later.fired_at, later.labels),
            [RULES.auto_link.match_fields, RULES.auto_create.match_fields])
    assert (matched, ingest(factory, p, later)) == ([facts], refire)


# --- the caller owns the transaction ----------------------------------------------------------------------

def test_a_transaction_that_fails_after_ingest_leaves_nothing(factory):
    p, outcomes = Pipeline(RULES), []
    with pytest.raises(RuntimeError), factory.begin() as session:
        outcomes = p.ingest(session, [alert_in("down", T0, "critical", labels=CHECKOUT),
                                      alert_in("slow", T0, "medium", labels=CART)], RECEIVED)
        raise RuntimeError("after ingest")
    assert ([(o.action, o.decision["kind"]) for o in outcomes], counts(factory)) == (
        [("created", "open"), ("created", "pend")], dict.fromkeys((t.__tablename__ for t in TABLES), 0))


# --- edges that once failed -------------------------------------------------------------------------------------------

def _clock_after_a_rolled_back_ingest(factory):
    p = Pipeline(RULES)
    with pytest.raises(RuntimeError), factory.begin() as session:
        p.ingest(session, [alert_in("late", T0 + timedelta(hours=1))], RECEIVED)
        raise RuntimeError("rolled back")
    return [ingest(factory, p, alert_in(name, at, "medium", labels=CART))[0][1:]
            for name, at in (("slow", T0), ("errors", T0 + MIN))]


def _long_title_and_source(factory):
    return ingest(factory, Pipeline(RULES), alert_in("long", T0, title="t" * 600, source="s" * 150))


EDGES = [
    pytest.param(_clock_after_a_rolled_back_ingest, [("created", "pend"), ("created", "open")],
                 id="event-clock-survives-rollback"),
    pytest.param(_long_title_and_source, [(1, "created", "none")], id="long-title-is-cut"),
]


@pytest.mark.parametrize("scenario, expected", EDGES)
def test_edges(factory, scenario, expected):
    assert scenario(factory) == expected
