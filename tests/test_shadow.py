"""Shadow mode: a second weights file decides beside the live one and is never acted on.

The pure comparison (`service.shadow.compare`, on toy weights whose scores are easy to
read), the HTTP API with a shadow weights file (the shipped weights, another version,
auto_link_at 0.99) and the migration that adds `shadow_decisions`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import Engine, delete, insert, inspect, select
from sqlalchemy.exc import IntegrityError

from factories import alert
from helpers import Clock, generic
from indexer.embedder import HashingEmbedder
from models.db import current_revision, downgrade, make_engine, make_session_factory, migrate
from models.tables import Alert, ShadowDecision
from service.app import create_app
from service.decide import Scored
from service.settings import Settings
from service.shadow import ShadowRecord, Verdict, compare, rescore
from service.weights import Weights, WeightsError

SHIPPED = Path(__file__).resolve().parents[1] / "service" / "defaults" / "weights.yaml"
LIVE_VERSION = yaml.safe_load(SHIPPED.read_text())["version"]
SHADOW_VERSION = "shadow-0.99"


# ------------------------------------------------------------------ compare (pure)

def toy(version: str, gap_e1: float, shared_label: float, auto_link_at: float = 0.7) -> Weights:
    """score = sigmoid(-2 + gap_e1 * features["gap_e1"] + shared_label * features["shared_label"])."""
    return Weights.model_validate({
        "version": version, "embedding_model": "m", "auto_link_at": auto_link_at,
        "suggest_at": min(0.3, auto_link_at), "context_at": 0.5, "window_minutes": 60,
        "link": {"intercept": -2.0, "coefficients": {"gap_e1": gap_e1, "shared_label": shared_label}},
        "similar": {"weights": {"kinds": 1.0}},
    })


def sigmoid(z: float) -> float:
    return round(1 / (1 + math.exp(-z)), 6)


LIVE = toy("live", gap_e1=5.0, shared_label=1.0)          # recent first
SAME = toy("live-again", gap_e1=5.0, shared_label=1.0)    # another file, the same numbers
STRICT = toy("strict", gap_e1=5.0, shared_label=1.0, auto_link_at=0.99)
LABELS = toy("labels", gap_e1=1.0, shared_label=5.0)      # shared labels first
LENIENT = toy("lenient", gap_e1=5.0, shared_label=1.0, auto_link_at=0.2)

RECENT = {"gap_e1": 1.0, "shared_label": 0.0}    # live: sigmoid(3) = 0.95; labels: sigmoid(-1)
SHARED = {"gap_e1": 0.0, "shared_label": 1.0}    # live: sigmoid(-1) = 0.27; labels: sigmoid(3)
FAINT = {"gap_e1": 0.0, "shared_label": 0.0}     # sigmoid(-2) = 0.12 for every file here
NEWER = alert(20, severity="high")


def candidates(*which: tuple[int | None, int | None, Mapping[str, float]]) -> list[Scored]:
    """Candidates (incident id, alert id, features) as the live pipeline scores them."""
    return rescore([Scored(i, a, 0.0, {"features": dict(f)}, ()) for i, a, f in which], LIVE)


def verdict(kind: str, incident: int | None = None, pair: int | None = None,
            score: float | None = None) -> tuple[Any, ...]:
    return kind, incident, pair, score


def shape(v: Verdict) -> tuple[Any, ...]:
    return v.kind, v.incident_id, v.pair_alert_id, v.score


INCIDENTS = [(7, None, RECENT), (8, None, SHARED)]
PAIR = [(None, 12, RECENT), (8, None, FAINT)]
LOW = [(7, None, SHARED), (None, 12, FAINT)]

COMPARED = [
    # same weights (another file): always the same decision, and the same scores
    ("same weights, a link", INCIDENTS, SAME, verdict("link", 7, score=sigmoid(3)), verdict("link", 7, score=sigmoid(3))),
    ("same weights, a pair", PAIR, SAME, verdict("open", pair=12, score=sigmoid(3)),
     verdict("open", pair=12, score=sigmoid(3))),
    ("same weights, below the threshold", LOW, SAME, verdict("none", score=sigmoid(-1)),
     verdict("none", score=sigmoid(-1))),
    ("same weights, no candidates", [], SAME, verdict("none"), verdict("none")),
    # a very high threshold: live links, the shadow decides nothing (the rules would)
    ("high threshold: live links, shadow none", INCIDENTS, STRICT, verdict("link", 7, score=sigmoid(3)),
     verdict("none", score=sigmoid(3))),
    ("high threshold: live opens a pair, shadow none", PAIR, STRICT, verdict("open", pair=12, score=sigmoid(3)),
     verdict("none", score=sigmoid(3))),
    # a shadow that prefers another candidate
    ("the shadow prefers the other incident", INCIDENTS, LABELS, verdict("link", 7, score=sigmoid(3)),
     verdict("link", 8, score=sigmoid(3))),
    ("the shadow prefers an incident to the pair", PAIR + [(9, None, SHARED)], LABELS,
     verdict("open", pair=12, score=sigmoid(3)), verdict("link", 9, score=sigmoid(3))),
    # a low threshold: the shadow acts where live leaves it to the rules
    ("low threshold: live none, shadow links", LOW, LENIENT, verdict("none", score=sigmoid(-1)),
     verdict("link", 7, score=sigmoid(-1))),
]


@pytest.mark.parametrize("scored, shadow, live_expected, shadow_expected",
                         [c[1:] for c in COMPARED], ids=[c[0] for c in COMPARED])
def test_compare(scored, shadow, live_expected, shadow_expected):
    live_scored = candidates(*scored)
    record = compare(NEWER, live_scored, rescore(live_scored, shadow), LIVE, shadow)
    assert (record.alert_id, record.decided_at, record.live.weights_version, record.shadow.weights_version) == (
        NEWER.id, NEWER.fired_at, "live", shadow.version)
    assert (shape(record.live), shape(record.shadow), record.agree) == (
        live_expected, shadow_expected, live_expected[:3] == shadow_expected[:3])


def test_same_weights_always_agree():
    for _, scored, *_ in COMPARED:
        live_scored = candidates(*scored)
        assert rescore(live_scored, SAME) == live_scored  # the same numbers score the same
        record = compare(NEWER, live_scored, rescore(live_scored, SAME), LIVE, SAME)
        assert record.agree and shape(record.live) == shape(record.shadow)


def test_rescore_keeps_the_candidates_and_their_features():
    live_scored = candidates(*INCIDENTS, (None, 12, FAINT))
    shadow_scored = rescore(live_scored, LABELS)
    assert [(s.incident_id, s.alert_id, s.components["features"], s.score) for s in shadow_scored] == [
        (7, None, RECENT, sigmoid(-1)), (8, None, SHARED, sigmoid(3)), (None, 12, FAINT, sigmoid(-2))]
    assert shadow_scored[1].components == {"intercept": -2.0, "gap_e1": 0.0, "shared_label": 5.0,
                                           "features": SHARED}


def test_agreement_is_the_decision_not_the_score():
    live, shadow = Verdict("a", "link", 7, score=0.8), Verdict("b", "link", 7, score=0.95)
    assert ShadowRecord(1, NEWER.fired_at, live, shadow).agree
    assert not ShadowRecord(1, NEWER.fired_at, live, Verdict("b", "link", 8, score=0.8)).agree
    assert not ShadowRecord(1, NEWER.fired_at, Verdict("a", "open", pair_alert_id=3),
                            Verdict("b", "open", pair_alert_id=4)).agree


# ------------------------------------------------------------------ the API

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)

# (alertname, service, minutes after T0, severity); with the shipped weights the scorer links
# each re-fire at +20..22 to its incident, and pairs the second Warn with the first
ALERTS = [
    ("HighLatency", "checkout", 0, "critical"),
    ("ErrorRate", "checkout", 1, "critical"),
    ("DiskFull", "postgres", 3, "critical"),
    ("HighLatency", "checkout", 20, "critical"),
    ("ErrorRate", "checkout", 21, "critical"),
    ("DiskFull", "postgres", 22, "critical"),
    ("Warn", "checkout", 23, "medium"),
    ("Warn", "checkout", 40, "medium"),
]


@pytest.fixture
def shadow_file(tmp_path: Path) -> Path:
    weights = yaml.safe_load(SHIPPED.read_text()) | {"version": SHADOW_VERSION, "auto_link_at": 0.99}
    path = tmp_path / "shadow-weights.yaml"
    path.write_text(yaml.safe_dump(weights))
    return path


def scorer_app(clock: Clock, **settings: Any) -> TestClient:
    base: dict[str, Any] = {"database_url": "sqlite://", "clock": "manual", "scorer": True, "rules_dir": None,
                            "index_path": None}
    return TestClient(create_app(Settings(**(base | settings)), embedder=HashingEmbedder(), wall_clock=clock))


def post_all(client: TestClient, clock: Clock) -> list[dict[str, Any]]:
    out = []
    for name, service, minutes, severity in ALERTS:
        at = T0 + timedelta(minutes=minutes)
        clock.now = max(clock.now, at)
        r = client.post("/alerts", json=generic(name, severity, at, service=service, environment="prod"))
        assert r.is_success, r.text
        out.append(r.json()["results"][0])
    return out


def links(client: TestClient, alert_ids: list[int]) -> list[list[dict[str, Any]]]:
    return [[{k: x["link"][k] for k in ("incident_id", "link_type", "rule", "score", "decided_by_version")}
             for x in client.get(f"/alerts/{a}/incidents").json()] for a in alert_ids]


def side(kind: str, version: str, score: float, incident: int | None = None,
         pair: int | None = None) -> dict[str, Any]:
    return {"weights_version": version, "kind": kind, "incident_id": incident, "pair_alert_id": pair,
            "score": score}


def test_shadow_records_every_new_alert_and_lists_disagreements(shadow_file):
    clock = Clock(T0)
    with scorer_app(clock, shadow_weights_path=shadow_file) as c:
        outcomes = post_all(c, clock)
        decisions = [(o["decision"]["kind"], o["decision"].get("rule"), o["decision"].get("incident_id"))
                     for o in outcomes]
        # live acts as usual: the scorer links the re-fires and opens the Warn pair
        assert decisions == [("open", "auto_create", 1), ("open", "auto_create", 2), ("open", "auto_create", 3),
                             ("link", "scorer", 1), ("link", "scorer", 2), ("link", "scorer", 3),
                             ("none", None, None), ("open", "scorer", 4)]
        scores = {o["alert_id"]: o["decision"].get("score") for o in outcomes}

        r = c.get("/shadow/summary")
        assert r.status_code == 200, r.text
        assert r.json() == {
            "live_weights_version": LIVE_VERSION, "shadow_weights_version": SHADOW_VERSION,
            "decisions": 8, "agreements": 4, "disagreements": 4,
            "disagreements_by_kind": [{"live_kind": "link", "shadow_kind": "none", "count": 3},
                                      {"live_kind": "open", "shadow_kind": "none", "count": 1}],
            "versions": [{"live_weights_version": LIVE_VERSION, "shadow_weights_version": SHADOW_VERSION,
                          "decisions": 8, "agreements": 4, "disagreements": 4}],
        }

        r = c.get("/shadow/disagreements")
        assert r.status_code == 200, r.text
        listed = r.json()
        # newest first; the same link model, so the same best score on both sides
        assert [(d["alert_id"], d["alert_title"], d["decided_at"]) for d in listed] == [
            (8, "Warn", "2026-12-03T12:40:00Z"), (6, "DiskFull", "2026-12-03T12:22:00Z"),
            (5, "ErrorRate", "2026-12-03T12:21:00Z"), (4, "HighLatency", "2026-12-03T12:20:00Z")]
        best = {d["alert_id"]: d["live"]["score"] for d in listed}
        assert {a: round(s, 4) for a, s in best.items()} == {a: scores[a] for a in best}
        assert [(d["live"], d["shadow"]) for d in listed] == [
            (side("open", LIVE_VERSION, best[8], pair=7), side("none", SHADOW_VERSION, best[8])),
            (side("link", LIVE_VERSION, best[6], incident=3), side("none", SHADOW_VERSION, best[6])),
            (side("link", LIVE_VERSION, best[5], incident=2), side("none", SHADOW_VERSION, best[5])),
            (side("link", LIVE_VERSION, best[4], incident=1), side("none", SHADOW_VERSION, best[4])),
        ]
        assert [d["alert_id"] for d in c.get("/shadow/disagreements?limit=2&offset=1").json()] == [6, 5]
        assert c.get("/shadow/disagreements?limit=0").status_code == 422

        # only a new alert is decided, so only a new alert is recorded: a redelivery is not
        name, service, minutes, severity = ALERTS[-1]
        again = c.post("/alerts", json=generic(name, severity, T0 + timedelta(minutes=minutes), service=service,
                                               environment="prod"))
        assert again.json()["results"][0]["action"] == "redelivered"
        assert c.get("/shadow/summary").json()["decisions"] == 8


def test_live_decisions_are_the_same_as_without_shadow(shadow_file):
    runs = []
    for settings in ({}, {"shadow_weights_path": shadow_file}):
        clock = Clock(T0)
        with scorer_app(clock, **settings) as c:
            outcomes = post_all(c, clock)
            runs.append(([o["decision"] for o in outcomes],
                         links(c, [o["alert_id"] for o in outcomes]),
                         [i["title"] for i in c.get("/incidents").json()]))
    without, with_shadow = runs
    assert with_shadow == without
    assert any(x and x[0]["rule"] == "scorer" for x in without[1])  # the scorer did link


def test_409_without_shadow_weights(shadow_file):
    clock = Clock(T0)
    with scorer_app(clock) as c:
        post_all(c, clock)
        assert [c.get(p).status_code for p in ("/shadow/summary", "/shadow/disagreements")] == [409, 409]
    # with the scorer off there is nothing to shadow: the file is not loaded
    with scorer_app(clock, scorer=False, shadow_weights_path=shadow_file) as c:
        r = c.get("/shadow/summary")
        assert r.status_code == 409 and "ALERTLINK_SHADOW_WEIGHTS_PATH" in r.json()["detail"]


def test_a_bad_shadow_weights_file_fails_at_start(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(yaml.safe_load(SHIPPED.read_text()) | {"auto_link_at": 2}))
    with pytest.raises(WeightsError, match="bad.yaml"), scorer_app(Clock(T0), shadow_weights_path=bad):
        pass


# ------------------------------------------------------------------ migration 0003

def shadow_row(alert_id: int, **kw: Any) -> dict[str, Any]:
    return {"alert_id": alert_id, "decided_at": T0, "live_weights_version": "w1", "shadow_weights_version": "w2",
            "live_kind": "link", "shadow_kind": "none", "live_incident_id": 1, "live_score": 0.9,
            "shadow_score": 0.9, "agree": False, **kw}


def test_0003_adds_shadow_decisions_both_ways(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        migrate(engine, "0002")
        assert "shadow_decisions" not in inspect(engine).get_table_names()
        alerts = [{"id": n, "fingerprint": f"fp{n}", "title": f"disk full {n}", "source": "test",
                   "severity": "high", "status": "firing", "fired_at": T0, "received_at": T0,
                   "last_received_at": T0, "labels": {}, "annotations": {}, "delivery_count": 1}
                  for n in (1, 2, 3)]
        with engine.begin() as conn:  # Core: 0002's columns of alerts are all it has
            conn.execute(insert(Alert.__table__), alerts)

        migrate(engine)
        assert current_revision(engine) == "0003"
        factory = make_session_factory(engine)
        with factory.begin() as s:
            s.add_all([ShadowDecision(**shadow_row(1)),
                       ShadowDecision(**shadow_row(2, live_kind="open", live_incident_id=None,
                                                   live_pair_alert_id=1, agree=True, shadow_kind="open",
                                                   shadow_pair_alert_id=1))])

        def rejected(**kw: Any) -> bool:
            with factory() as s:
                s.add(ShadowDecision(**kw))
                try:
                    s.flush()
                except IntegrityError:
                    return True
                return False

        assert [rejected(**shadow_row(1)), rejected(**shadow_row(3, live_kind="pend")),
                rejected(**shadow_row(3, shadow_kind="maybe")), rejected(**shadow_row(99))] == [True] * 4

        with factory() as s:
            assert [(r.alert_id, r.decided_at, r.agree, r.live_pair_alert_id) for r in
                    s.scalars(select(ShadowDecision).order_by(ShadowDecision.id))] == [
                (1, T0, False, None), (2, T0, True, 1)]
        with factory.begin() as s:  # an alert's record goes with it
            s.execute(delete(Alert).where(Alert.id == 1))
            assert s.scalars(select(ShadowDecision.alert_id)).all() == [2]

        downgrade(engine, "0002")
        assert current_revision(engine) == "0002"
        assert "shadow_decisions" not in inspect(engine).get_table_names()
        with engine.connect() as conn:
            assert conn.execute(select(Alert.__table__.c.id).order_by(Alert.id)).scalars().all() == [2, 3]
        migrate(engine)
        assert inspect(engine).get_table_names().count("shadow_decisions") == 1
    finally:
        engine.dispose()


def test_models_schema_has_the_table(migrated_engine: Engine) -> None:
    insp = inspect(migrated_engine)
    assert [c["name"] for c in insp.get_columns("shadow_decisions")] == [
        "id", "alert_id", "decided_at", "live_weights_version", "shadow_weights_version", "live_kind",
        "shadow_kind", "live_incident_id", "shadow_incident_id", "live_pair_alert_id", "shadow_pair_alert_id",
        "live_score", "shadow_score", "agree"]
    assert sorted(c["name"] for c in insp.get_check_constraints("shadow_decisions")) == [
        "ck_shadow_decisions_live_kind", "ck_shadow_decisions_shadow_kind"]
