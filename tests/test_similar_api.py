"""Similar past incidents and suggestions through the HTTP API, with the scorer on (the
shipped rules and weights, a `HashingEmbedder`, in-memory SQLite, no index file).

The wall clock follows event time here, so an incident resolves after it was created."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from helpers import Clock, api, generic, iso
from indexer.embedder import HashingEmbedder
from service.app import create_app
from service.settings import Settings

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
SHIPPED = Path(__file__).resolve().parents[1] / "service" / "defaults" / "weights.yaml"
WEIGHTS_VERSION = yaml.safe_load(SHIPPED.read_text())["version"]
PROD = {"service": "checkout", "environment": "prod"}

# past failures: (alertname, service, root cause), each one incident, 3 hours apart
PAST = [
    ("DiskFull", "postgres", "WAL filled the disk"),
    ("HighLatency", "checkout", "a slow query after the index was dropped"),
    ("PodCrashLoop", "payments", "bad config in the deploy"),
]


def scorer_app(clock: Clock, **settings: Any) -> TestClient:
    base: dict[str, Any] = {"database_url": "sqlite://", "clock": "manual", "scorer": True, "rules_dir": None,
                            "index_path": None}
    return TestClient(create_app(Settings(**(base | settings)), embedder=HashingEmbedder(), wall_clock=clock))


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def client(clock):
    with scorer_app(clock) as c:
        yield c


def post(client: TestClient, clock: Clock, body: dict) -> dict:
    clock.now = max(clock.now, datetime.fromisoformat(body["fired_at"].replace("Z", "+00:00")))
    r = client.post("/alerts", json=body)
    assert r.is_success, r.text
    return r.json()["results"][0]


def alert_on(name: str, service: str, at: datetime, severity: str = "critical", **labels: str) -> dict:
    return generic(name, severity, at, service=service, environment="prod", **labels)


def resolve(client: TestClient, incident_id: int, root_cause: str | None = None) -> None:
    body = {"status": "resolved"} | ({"rootCause": root_cause} if root_cause else {})
    r = client.post(f"/incidents/{incident_id}/status", json=body)
    assert r.is_success, r.text


def history(client: TestClient, clock: Clock) -> list[int]:
    """The past incidents, resolved with their root causes; their ids."""
    out = []
    for k, (name, service, cause) in enumerate(PAST):
        outcome = post(client, clock, alert_on(name, service, T0 + timedelta(hours=3 * k)))
        assert outcome["decision"]["kind"] == "open"
        resolve(client, outcome["decision"]["incident_id"], cause)
        out.append(outcome["decision"]["incident_id"])
    return out


LATER = T0 + timedelta(days=1)


def summary(answer: dict) -> list[tuple]:
    return [(r["incident"]["id"], r["root_cause"], r["match_types"]) for r in answer["results"]]


def timeline(client: TestClient, incident_id: int) -> list[dict]:
    return client.get(f"/incidents/{incident_id}").json()["timeline"]


# ------------------------------------------------------------ similar incidents

def test_an_alert_finds_the_past_incident_of_its_kind_first(client, clock):
    disk, latency, crash = history(client, clock)
    outcome = post(client, clock, alert_on("HighLatency", "checkout", LATER))
    r = client.get(f"/alerts/{outcome['alert_id']}/similar-incidents")
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["weights_version"] == WEIGHTS_VERSION
    first = answer["results"][0]
    assert first == {
        "incident": first["incident"] | {"id": latency, "status": "resolved", "title": "[Auto] HighLatency",
                                         "root_cause": "a slow query after the index was dropped"},
        "score": first["score"], "components": {"kinds": 1.0, "semantic": first["components"]["semantic"]},
        "match_types": ["kinds"],
        "root_cause": "a slow query after the index was dropped",
        "summary": first["incident"]["summary"],
    }
    assert first["score"] > max(r["score"] for r in answer["results"][1:])
    assert {r["incident"]["id"] for r in answer["results"]} <= {disk, latency, crash}


def test_similar_needs_an_existing_alert_or_incident(client, clock):
    history(client, clock)
    assert [client.get(path).status_code for path in
            ("/alerts/99/similar-incidents", "/incidents/99/similar-incidents")] == [404, 404]


def test_an_incident_never_finds_itself(client, clock):
    disk, latency, crash = history(client, clock)
    # ask about a past incident: it is history itself, and still left out
    answer = client.get(f"/incidents/{latency}/similar-incidents").json()
    assert latency not in [r["incident"]["id"] for r in answer["results"]]
    outcome = post(client, clock, alert_on("HighLatency", "checkout", LATER))
    new = outcome["decision"]["incident_id"]
    resolve(client, new, "the same slow query")
    answer = client.get(f"/incidents/{new}/similar-incidents").json()
    assert [r["incident"]["id"] for r in answer["results"]][:1] == [latency]
    assert new not in [r["incident"]["id"] for r in answer["results"]]


def test_an_incident_asks_with_all_its_alerts_but_removed_links(client, clock):
    disk, latency, crash = history(client, clock)
    opened = post(client, clock, alert_on("HighLatency", "checkout", LATER))
    new = opened["decision"]["incident_id"]
    # a disk alert elsewhere (another environment: the scorer leaves it alone), linked by hand
    other = post(client, clock, generic("DiskFull", "warning", LATER + timedelta(minutes=1), service="postgres",
                                        environment="staging"))
    assert client.post(f"/incidents/{new}/links", json={"alertIds": [other["alert_id"]]}).is_success

    def kinds() -> dict[int, float]:
        answer = client.get(f"/incidents/{new}/similar-incidents").json()
        return {r["incident"]["id"]: r["components"]["kinds"] for r in answer["results"]}

    with_disk = kinds()
    assert with_disk[latency] > 0 and with_disk[disk] > 0
    assert client.delete(f"/incidents/{new}/links/{other['alert_id']}").is_success
    without = kinds()
    assert (without[latency] > with_disk[latency], without.get(disk, 0.0)) == (True, 0.0)


def test_asking_about_an_alert_that_is_not_stored(client, clock):
    history(client, clock)
    stored = post(client, clock, alert_on("HighLatency", "checkout", LATER))
    counts = (len(client.get("/alerts").json()), len(client.get("/incidents").json()))
    body = {"title": "HighLatency", "severity": "critical",
            "labels": {"alertname": "HighLatency"} | PROD}
    r = client.post("/similar-incidents", json=body)
    assert r.status_code == 200, r.text
    # the same alert as the stored one: the same answer
    assert r.json() == client.get(f"/alerts/{stored['alert_id']}/similar-incidents").json()
    assert (len(client.get("/alerts").json()), len(client.get("/incidents").json())) == counts


@pytest.mark.parametrize("body, loc", [
    ({"labels": {"alertname": "X"}}, ["body", "title"]),
    ({"title": "X", "colour": "red"}, ["body", "colour"]),
    ({"title": "X", "severity": "dreadful"}, ["body", "severity"]),
], ids=["no title", "unknown field", "unknown severity"])
def test_asking_with_a_bad_alert_is_a_422(client, body, loc):
    r = client.post("/similar-incidents", json=body)
    assert (r.status_code, r.json()["detail"][0]["loc"]) == (422, loc)


def test_limit_and_min_score(client, clock):
    disk, latency, crash = history(client, clock)
    alert_id = post(client, clock, alert_on("HighLatency", "checkout", LATER))["alert_id"]
    path = f"/alerts/{alert_id}/similar-incidents"
    everything = client.get(path).json()["results"]
    assert len(everything) == 3
    assert [r["incident"]["id"] for r in client.get(path, params={"limit": 1}).json()["results"]] == [latency]
    strong = client.get(path, params={"min_score": 0.5}).json()["results"]
    assert [r["incident"]["id"] for r in strong] == [r["incident"]["id"] for r in everything
                                                      if r["score"] >= 0.5] == [latency]
    assert client.get(path, params={"min_score": 1.0}).json()["results"] == []


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"min_score": -0.1}, {"min_score": 1.5}])
def test_limit_and_min_score_out_of_range(client, clock, params):
    alert_id = post(client, clock, alert_on("HighLatency", "checkout", LATER))["alert_id"]
    assert client.get(f"/alerts/{alert_id}/similar-incidents", params=params).status_code == 422


def test_scorer_off_is_a_409(clock):
    with api(clock) as c:  # the seed rules, no scorer
        r = c.post("/alerts", json=generic("HighLatency", "critical", T0, **PROD))
        alert_id = r.json()["alert_ids"][0]
        answers = [c.get(f"/alerts/{alert_id}/similar-incidents"), c.get("/incidents/1/similar-incidents"),
                   c.post("/similar-incidents", json={"title": "HighLatency"})]
    assert [(a.status_code, "scorer" in a.json()["detail"]) for a in answers] == [(409, True)] * 3


def test_a_new_incident_gets_the_root_cause_of_a_similar_one(client, clock):
    disk, latency, crash = history(client, clock)
    new = post(client, clock, alert_on("HighLatency", "checkout", LATER))["decision"]["incident_id"]
    context = [e for e in timeline(client, new) if e["kind"] == "similar_incident"]
    assert [(e["actor"], e["at"], e["data"]["past_incident_id"], e["data"]["root_cause"],
             e["data"]["weights_version"]) for e in context] == [
        ("alertlink", iso(LATER), latency, "a slow query after the index was dropped", WEIGHTS_VERSION)]
    assert context[0]["data"]["score"] >= 0.5  # the shipped context_at


def test_no_context_below_context_at(client, clock):
    history(client, clock)
    new = post(client, clock, alert_on("CertExpiry", "edge", LATER))["decision"]["incident_id"]
    assert [e["kind"] for e in timeline(client, new)] == ["incident_created"]


def test_context_at_comes_from_the_weights_file(clock, tmp_path):
    weights = yaml.safe_load(SHIPPED.read_text()) | {"context_at": 1.0}
    (tmp_path / "weights.yaml").write_text(yaml.safe_dump(weights))
    with scorer_app(clock, weights_path=tmp_path / "weights.yaml") as c:
        history(c, clock)
        # the same alert again, but the title's meaning only partly matches: below 1.0
        new = post(c, clock, alert_on("HighLatency", "checkout", LATER))["decision"]["incident_id"]
        assert [e["kind"] for e in timeline(c, new)] == ["incident_created"]


# ------------------------------------------------------------------ scorer links

def test_every_scorer_link_explains_itself(client, clock):
    post(client, clock, alert_on("HighLatency", "checkout", T0, instance="a"))          # opens #1 (auto_create)
    linked = post(client, clock, alert_on("HighLatency", "checkout", T0 + timedelta(minutes=1), "warning",
                                          instance="b"))                            # joins #1 (scorer)
    post(client, clock, alert_on("QueueBacklog", "orders", T0 + timedelta(hours=2), "warning"))
    paired = post(client, clock, alert_on("QueueBacklog", "orders", T0 + timedelta(hours=2, minutes=1),
                                          "warning", instance="c"))                 # opens a pair (scorer)
    assert [(o["decision"]["kind"], o["decision"]["rule"]) for o in (linked, paired)] == [
        ("link", "scorer"), ("open", "scorer")]
    assert client.get(f"/incidents/{paired['decision']['incident_id']}").json()["title"] == "[Correlated] QueueBacklog"
    links = [x["link"] for i in client.get("/incidents").json()
             for x in client.get(f"/incidents/{i['id']}/alerts").json()]
    scored = [link for link in links if link["rule"] == "scorer"]
    assert len(scored) == 3  # the joined alert, and both alerts of the pair
    assert all(link["score"] is not None and 0 < link["score"] <= 1 and "features" in link["components"]
               and link["decided_by_version"] == f"weights-{WEIGHTS_VERSION}" for link in scored), scored


# ------------------------------------------------------------------ suggestions

@pytest.fixture
def suggesting(clock, tmp_path):
    """An app that suggests instead of linking: auto_link_at 0.99, suggest_at 0.01."""
    weights = yaml.safe_load(SHIPPED.read_text()) | {"auto_link_at": 0.99, "suggest_at": 0.01,
                                                     "version": "test-suggest"}
    (tmp_path / "weights.yaml").write_text(yaml.safe_dump(weights))
    with scorer_app(clock, weights_path=tmp_path / "weights.yaml") as c:
        yield c


def suggested(client: TestClient, clock: Clock) -> tuple[int, int, int]:
    """An incident and two medium alerts suggested for it; (incident, first alert, second alert)."""
    incident = post(client, clock, alert_on("HighLatency", "checkout", T0))["decision"]["incident_id"]
    a = post(client, clock, alert_on("HighErrors", "checkout", T0 + timedelta(minutes=1), "warning"))
    b = post(client, clock, alert_on("HighLatency", "checkout", T0 + timedelta(minutes=2), "warning",
                                     instance="b"))
    assert [(o["decision"]["kind"]) for o in (a, b)] == ["none", "none"]
    return incident, a["alert_id"], b["alert_id"]


def listed(client: TestClient, incident_id: int, **params: str) -> list[tuple]:
    r = client.get(f"/incidents/{incident_id}/suggestions", params=params)
    assert r.status_code == 200, r.text
    return [(s["alert"]["id"], s["status"], s["decided_by"]) for s in r.json()]


def test_suggestions_are_listed_with_their_evidence(suggesting, clock):
    incident, a, b = suggested(suggesting, clock)
    found = suggesting.get(f"/incidents/{incident}/suggestions").json()
    assert sorted(s["alert"]["id"] for s in found) == [a, b]
    assert [s["score"] for s in found] == sorted((s["score"] for s in found), reverse=True)  # best first
    assert all(s["incident_id"] == incident and s["weights_version"] == "test-suggest" and 0.01 <= s["score"] < 0.99
               and "features" in s["components"] and s["created_at"] == s["alert"]["fired_at"]
               and (s["status"], s["decided_by"], s["decided_at"]) == ("open", None, None) for s in found), found
    # nothing was linked
    assert [x["alert"]["id"] for x in suggesting.get(f"/incidents/{incident}/alerts").json()] == [1]


def test_accept_links_the_alert_by_hand(suggesting, clock):
    incident, a, b = suggested(suggesting, clock)
    [sid] = [s["id"] for s in suggesting.get(f"/incidents/{incident}/suggestions").json() if s["alert"]["id"] == a]
    clock.advance(minutes=5)
    r = suggesting.post(f"/suggestions/{sid}/accept", headers={"X-Alertlink-User": "ana"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["suggestion"]["status"], body["suggestion"]["decided_by"], body["suggestion"]["decided_at"]) == (
        "accepted", "ana", iso(clock.now))
    assert body["link"] | {"linked_at": None} == {
        "alert_id": a, "incident_id": incident, "link_type": "manual", "linked_at": None, "linked_by": "ana",
        "rule": None, "score": None, "components": None, "decided_by_version": None, "removed_at": None,
        "removed_by": None}
    assert [(x["alert"]["id"], x["link"]["link_type"], x["link"]["linked_by"])
            for x in suggesting.get(f"/incidents/{incident}/alerts").json()] == [(1, "auto_created", "alertlink"),
                                                                                 (a, "manual", "ana")]
    assert [e for e in timeline(suggesting, incident) if e["kind"] == "alerts_linked"] == [
        {"id": timeline(suggesting, incident)[-1]["id"], "at": iso(clock.now), "kind": "alerts_linked",
         "actor": "ana", "data": {"link_type": "manual", "alert_ids": [a], "count": 1, "suggestion_id": sid}}]
    assert listed(suggesting, incident) == [(b, "open", None)]
    assert listed(suggesting, incident, status="accepted") == [(a, "accepted", "ana")]
    again = suggesting.post(f"/suggestions/{sid}/accept")
    assert (again.status_code, again.json()["detail"]) == (409, f"suggestion {sid} is already accepted")


def test_accept_takes_the_body_before_the_header(suggesting, clock):
    incident, a, b = suggested(suggesting, clock)
    sid = suggesting.get(f"/incidents/{incident}/suggestions").json()[0]["id"]
    r = suggesting.post(f"/suggestions/{sid}/accept", json={"by": "bob"}, headers={"X-Alertlink-User": "ana"})
    assert (r.json()["suggestion"]["decided_by"], r.json()["link"]["linked_by"]) == ("bob", "bob")
    sid2 = suggesting.get(f"/incidents/{incident}/suggestions").json()[0]["id"]
    r = suggesting.post(f"/suggestions/{sid2}/accept")
    assert (r.json()["suggestion"]["decided_by"], r.json()["link"]["linked_by"]) == ("api", "api")


def test_accept_restores_a_removed_link(suggesting, clock):
    incident, a, b = suggested(suggesting, clock)
    assert suggesting.post(f"/incidents/{incident}/links", json={"alertIds": [a]}).is_success
    assert suggesting.delete(f"/incidents/{incident}/links/{a}", headers={"X-Alertlink-User": "eve"}).is_success
    [sid] = [s["id"] for s in suggesting.get(f"/incidents/{incident}/suggestions").json() if s["alert"]["id"] == a]
    r = suggesting.post(f"/suggestions/{sid}/accept", json={"by": "ana"})
    assert r.status_code == 200, r.text
    assert [(x["alert"]["id"], x["link"]["link_type"], x["link"]["linked_by"], x["link"]["removed_at"])
            for x in suggesting.get(f"/incidents/{incident}/alerts", params={"include_removed": True}).json()] == [
        (1, "auto_created", "alertlink", None), (a, "manual", "ana", None)]


def test_accept_when_already_linked_adds_no_second_link(suggesting, clock):
    incident, a, b = suggested(suggesting, clock)
    assert suggesting.post(f"/incidents/{incident}/links", json={"alertIds": [a], "linkedBy": "eve"}).is_success
    [sid] = [s["id"] for s in suggesting.get(f"/incidents/{incident}/suggestions").json() if s["alert"]["id"] == a]
    events = len(timeline(suggesting, incident))
    r = suggesting.post(f"/suggestions/{sid}/accept", json={"by": "ana"})
    assert (r.status_code, r.json()["suggestion"]["status"], r.json()["link"]["linked_by"]) == (200, "accepted", "eve")
    assert len(timeline(suggesting, incident)) == events


def test_dismiss(suggesting, clock):
    incident, a, b = suggested(suggesting, clock)
    [sid] = [s["id"] for s in suggesting.get(f"/incidents/{incident}/suggestions").json() if s["alert"]["id"] == b]
    r = suggesting.post(f"/suggestions/{sid}/dismiss", json={"by": "bob"})
    assert r.status_code == 200, r.text
    assert (r.json()["id"], r.json()["status"], r.json()["decided_by"], r.json()["decided_at"]) == (
        sid, "dismissed", "bob", iso(clock.now))
    assert listed(suggesting, incident) == [(a, "open", None)]
    assert listed(suggesting, incident, status="dismissed") == [(b, "dismissed", "bob")]
    assert sorted(listed(suggesting, incident, status="all")) == sorted([(a, "open", None), (b, "dismissed", "bob")])
    assert [x["alert"]["id"] for x in suggesting.get(f"/incidents/{incident}/alerts").json()] == [1]
    assert [suggesting.post(f"/suggestions/{sid}/{what}").status_code for what in ("dismiss", "accept")] == [409, 409]


def test_suggestions_unknown_ids(suggesting, clock):
    suggested(suggesting, clock)
    assert [suggesting.get("/incidents/99/suggestions").status_code,
            suggesting.post("/suggestions/99/accept").status_code,
            suggesting.post("/suggestions/99/dismiss").status_code,
            suggesting.get("/incidents/1/suggestions", params={"status": "maybe"}).status_code] == [404, 404, 404, 422]


# ------------------------------------------------------------------ known misses

def test_reopened_incident_is_not_similar_after_a_restart(clock, tmp_path):
    """A reopened incident is not history, live or after a restart."""
    db = {"database_url": f"sqlite:///{tmp_path / 'alertlink.db'}"}
    with scorer_app(clock, **db) as c:
        disk, latency, crash = history(c, clock)
        assert c.post(f"/incidents/{latency}/status", json={"status": "open"}).is_success
        alert_id = post(c, clock, alert_on("HighLatency", "checkout", LATER))["alert_id"]
        live = [r["incident"]["id"] for r in c.get(f"/alerts/{alert_id}/similar-incidents").json()["results"]]
    with scorer_app(clock, **db) as c:
        restarted = [r["incident"]["id"] for r in c.get(f"/alerts/{alert_id}/similar-incidents").json()["results"]]
    assert (latency in live, latency in restarted) == (False, False)


def reopened_is_not_past(client: TestClient, clock: Clock) -> None:
    disk, latency, crash = history(client, clock)
    assert client.post(f"/incidents/{latency}/status", json={"status": "open"}).is_success
    alert_id = post(client, clock, alert_on("HighLatency", "checkout", LATER))["alert_id"]
    answer = client.get(f"/alerts/{alert_id}/similar-incidents").json()
    assert latency not in [r["incident"]["id"] for r in answer["results"]]


def postmortem_link_is_learnt(client: TestClient, clock: Clock) -> None:
    disk, latency, crash = history(client, clock)
    # found in the postmortem: a certificate alert belonged to the disk incident
    cert = post(client, clock, generic("CertExpiry", "warning", T0 + timedelta(hours=10), service="edge"))
    assert client.post(f"/incidents/{disk}/links", json={"alertIds": [cert["alert_id"]],
                                                         "linkType": "historical"}).is_success
    alert_id = post(client, clock, generic("CertExpiry", "warning", LATER, service="edge"))["alert_id"]
    answer = client.get(f"/alerts/{alert_id}/similar-incidents").json()
    kinds = {r["incident"]["id"]: r["components"]["kinds"] for r in answer["results"]}
    assert kinds.get(disk, 0.0) > 0  # after a restart it is (learn_history reads the links)


LIVE_EQUALS_RESTART = [
    pytest.param(reopened_is_not_past, id="reopened incident no longer past"),
    pytest.param(postmortem_link_is_learnt, id="link to a resolved incident is learnt"),
]


@pytest.mark.parametrize("case", LIVE_EQUALS_RESTART)
def test_live_history_equals_a_restart(client, clock, case):
    case(client, clock)
