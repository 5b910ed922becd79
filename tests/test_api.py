"""The HTTP API end to end on an in-memory SQLite database, with a wall clock the
tests move by hand and `clock="manual"` (event time moves only with alerts)."""
from datetime import UTC, datetime, timedelta

import pytest

from helpers import REQUESTS, Clock, am_alert, am_webhook, api, endpoint, fixture, generic, iso
from models.db import head_revision
from service.parsers import opsgenie, pagerduty
from service.rules import load_rules, seed_rules_dir
from service.settings import Settings

CAPTURED = datetime(2026, 12, 3, 16, 0, tzinfo=UTC)  # a little after the fixtures were captured
T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
GROUP_KEY = "97510b418c30a6bc221ab8cd7f4d49d287215a8f33fc7173ad6f03934114edfb"  # sha256 of the groupKey
PD_GROUP, OG_GROUP = pagerduty.key(GROUP_KEY), opsgenie.key(GROUP_KEY)  # the same key, apart per vendor
CHECKOUT_1, CHECKOUT_2 = "c6a1950e679c4c03", "a285b018731604c0"
AUTO_CREATE_REASON = "severity_in [critical, high], source_not_in [load-tests, synthetic-monitors]"
RULES_VERSION = load_rules(seed_rules_dir(), Settings().severity_words()).version


@pytest.fixture
def clock() -> Clock:
    return Clock(CAPTURED)


@pytest.fixture
def client(clock):
    with api(clock) as c:
        yield c


def post(client, path, body) -> list[int]:
    r = client.post(path, json=body)
    assert r.is_success, r.text
    return r.json()["alert_ids"]


def post_fixture(client, name) -> list[int]:
    return post(client, endpoint(name), fixture(name))


def alert_rows(client) -> list[tuple]:
    return sorted((a["id"], a["fingerprint"], a["status"], a["delivery_count"]) for a in client.get("/alerts").json())


def incident_links(client, incident_id, **params) -> list[tuple]:
    return [(x["alert"]["id"], x["link"]["link_type"], x["link"]["linked_by"], x["link"]["rule"],
             x["link"]["removed_at"] is not None)
            for x in client.get(f"/incidents/{incident_id}/alerts", params=params).json()]


def timeline(client, incident_id) -> list[tuple]:
    events = client.get(f"/incidents/{incident_id}").json()["timeline"]
    return [(e["kind"], e["at"], e["actor"], e["data"]) for e in events]


# --- every captured fixture, posted where its sender posted it ---------------------------------

# name: (fixtures posted before it, (id, fingerprint, severity, status) of each returned id, alerts stored after)
FIXTURE_CASES = {
    "am_to_opsgenie_create.json": ((), [(1, OG_GROUP, "medium", "firing")], 1),
    "am_to_opsgenie_close.json": (("am_to_opsgenie_create.json",), [(1, OG_GROUP, "medium", "resolved")], 1),
    "am_to_pagerduty_v2_trigger.json": ((), [(1, PD_GROUP, "high", "firing")], 1),
    "am_to_pagerduty_v2_resolve.json": (("am_to_pagerduty_v2_trigger.json",), [(1, PD_GROUP, "high", "resolved")], 1),
    "firing_group_two_alerts.json": (
        (), [(1, CHECKOUT_1, "critical", "firing"), (2, CHECKOUT_2, "critical", "firing")], 2),
    "firing_group_one_firing_one_resolved.json": (
        ("firing_group_two_alerts.json",),
        [(1, CHECKOUT_1, "critical", "firing"), (2, CHECKOUT_2, "critical", "resolved")], 2),
    "resolved_group_last_alert.json": (
        ("firing_group_two_alerts.json", "firing_group_one_firing_one_resolved.json"),
        [(1, CHECKOUT_1, "critical", "resolved")], 2),
    "firing_minimal_labels_only_nanosecond_startsat.json": ((), [(1, "478afe75d8e8aa87", "medium", "firing")], 1),
    "firing_single_critical_high_latency.json": ((), [(1, "fcc3c128424d2450", "critical", "firing")], 1),
    "firing_single_warning_disk_space_low.json": ((), [(1, "4e31b19ecb30a496", "medium", "firing")], 1),
    "resolved_single_disk_space_low.json": (
        ("firing_single_warning_disk_space_low.json",), [(1, "4e31b19ecb30a496", "medium", "resolved")], 1),
    "firing_truncated_max_alerts_1.json": ((), [(1, "814b6b733bdfaf92", "medium", "firing")], 1),
    "prometheus_target_down_firing.json": ((), [(1, "b777404edf8b6837", "critical", "firing")], 1),
    "prometheus_target_down_resolved.json": (
        ("prometheus_target_down_firing.json",), [(1, "b777404edf8b6837", "critical", "resolved")], 1),
    "prometheus_watchdog_firing.json": ((), [(1, "f10120a56278d68d", "info", "firing")], 1),
}


def test_the_table_covers_every_fixture():
    assert sorted(FIXTURE_CASES) == sorted(REQUESTS)


@pytest.mark.parametrize("name", sorted(FIXTURE_CASES))
def test_every_fixture_is_accepted_and_stored(client, name):
    before, expected, stored = FIXTURE_CASES[name]
    for earlier in before:
        post_fixture(client, earlier)
    got = [client.get(f"/alerts/{i}").json() for i in post_fixture(client, name)]
    assert ([(a["id"], a["fingerprint"], a["severity"], a["status"]) for a in got],
            len(client.get("/alerts").json())) == (expected, stored)


def test_truncated_alerts_are_reported(client):
    r = client.post(endpoint("firing_truncated_max_alerts_1.json"), json=fixture("firing_truncated_max_alerts_1.json"))
    assert (r.status_code, r.json()["accepted"], r.json()["truncated_alerts"]) == (200, 1, 2)


# --- idempotency -----------------------------------------------------------------------------------

def test_the_same_firing_payload_twice_is_one_alert(client):
    first = post_fixture(client, "firing_single_critical_high_latency.json")
    second = post_fixture(client, "firing_single_critical_high_latency.json")
    assert (first, second, alert_rows(client)) == ([1], [1], [(1, "fcc3c128424d2450", "firing", 2)])
    assert len(client.get("/incidents").json()) == 1  # decided once


TARGET = {"alertname": "TargetDown", "service": "inventory", "environment": "ci", "severity": "critical"}


def test_a_refire_after_a_resolve_is_a_new_alert(client):
    fired, resolved, refired = (
        post(client, "/integrations/alertmanager", am_webhook(body)) for body in (
            am_alert(TARGET, T0), am_alert(TARGET, T0, T0 + 5 * MIN), am_alert(TARGET, T0 + 20 * MIN)))
    fp = client.get("/alerts/1").json()["fingerprint"]
    assert (fired, resolved, refired, alert_rows(client)) == (
        [1], [1], [2], [(1, fp, "resolved", 2), (2, fp, "firing", 1)])


def test_a_resolve_matches_by_fingerprint_when_startsat_equals_endsat(client):
    post(client, "/integrations/alertmanager", am_webhook(am_alert(TARGET, T0)))
    ids = post(client, "/integrations/alertmanager", am_webhook(am_alert(TARGET, T0 + 9 * MIN, T0 + 9 * MIN)))
    a = client.get("/alerts/1").json()
    assert (ids, a["status"], a["fired_at"], a["resolved_at"], len(client.get("/alerts").json())) == (
        [1], "resolved", iso(T0), iso(T0 + 9 * MIN), 1)


PD_TRIGGER = {"routing_key": "r" * 32, "dedup_key": "db-disk", "event_action": "trigger",
              "payload": {"summary": "disk full on db1", "source": "db1", "severity": "critical"}}
PD_RESOLVE = {"routing_key": "r" * 32, "dedup_key": "db-disk", "event_action": "resolve"}
PD = "/integrations/pagerduty/v2/enqueue"
OG_CREATE = {"alias": "db-disk", "message": "disk full on db1", "priority": "P1"}


@pytest.mark.parametrize("create, resolve, fp", [
    pytest.param((PD, PD_TRIGGER), (PD, PD_RESOLVE), pagerduty.key("db-disk"), id="pagerduty"),
    pytest.param(("/integrations/opsgenie/v2/alerts", OG_CREATE),
                 ("/integrations/opsgenie/v2/alerts/db-disk/close?identifierType=alias", {}), opsgenie.key("db-disk"),
                 id="opsgenie"),
])
def test_a_key_without_start_time_dedups_while_open(client, clock, create, resolve, fp):
    first = client.post(create[0], json=create[1])
    clock.advance(minutes=1)
    second = client.post(create[0], json=create[1])
    clock.advance(minutes=1)
    resolved = client.post(resolve[0], json=resolve[1])
    clock.advance(minutes=1)
    again = client.post(create[0], json=create[1])
    assert [(r.status_code, [(o["alert_id"], o["action"]) for o in r.json()["results"]])
            for r in (first, second, resolved, again)] == [
        (202, [(1, "created")]), (202, [(1, "redelivered")]), (202, [(1, "resolved")]), (202, [(2, "created")])]
    assert alert_rows(client) == [(1, fp, "resolved", 2), (2, fp, "firing", 1)]


# --- known misses: behaviour we expect that the service does not have yet -------------------------

def _resolve_with_startsat_equal_endsat_twice(client):
    post(client, "/integrations/alertmanager", am_webhook(am_alert(TARGET, T0)))
    resolve = am_webhook(am_alert(TARGET, T0 + 9 * MIN, T0 + 9 * MIN))
    return [post(client, "/integrations/alertmanager", resolve) for _ in "12"], len(client.get("/alerts").json())


def _pagerduty_retrigger_with_the_same_timestamp(client):
    trigger = PD_TRIGGER | {"payload": PD_TRIGGER["payload"] | {"timestamp": iso(T0)}}
    client.post(PD, json=trigger)
    client.post(PD, json=PD_RESOLVE)
    code = client.post(PD, json=trigger).status_code
    return code, [(a["fingerprint"], a["status"]) for a in client.get("/alerts", params={"status": "firing"}).json()]


def _acknowledge_after_resolve(client):
    post(client, "/alerts", generic("CheckoutDown", "critical", T0, service="checkout"))
    client.post("/incidents/1/status", json={"status": "resolved"})
    i = client.post("/incidents/1/status", json={"status": "acknowledged"}).json()
    return i["status"], i["resolved_at"]


RETRIES_AND_EDGES = [
    pytest.param(
        _resolve_with_startsat_equal_endsat_twice, ([[1], [1]], 1), id="resolve-redelivered"),
    pytest.param(
        _pagerduty_retrigger_with_the_same_timestamp, (202, [(pagerduty.key("db-disk"), "firing")]),
        id="pagerduty-retrigger-same-timestamp"),
    pytest.param(
        _acknowledge_after_resolve, ("acknowledged", None), id="acknowledge-after-resolve"),
]


@pytest.mark.parametrize("scenario, expected", RETRIES_AND_EDGES)
def test_retries_and_edges(client, scenario, expected):
    assert scenario(client) == expected


# --- decisions, as the API shows them ---------------------------------------------------------------

def checkout(title, severity, at):
    return generic(title, severity, at, service="checkout", environment="production")


def test_a_critical_alert_opens_an_incident_and_a_related_alert_joins_it(client):
    [a] = post(client, "/alerts", checkout("CheckoutDown", "critical", T0))
    [b] = post(client, "/alerts", checkout("CheckoutSlow", "high", T0 + 30 * MIN))
    assert [(x["alert"]["id"], x["link"]["link_type"], x["link"]["linked_by"], x["link"]["rule"],
             x["link"]["decided_by_version"], x["link"]["linked_at"])
            for x in client.get("/incidents/1/alerts").json()] == [
        (a, "auto_created", "alertlink", "auto_create", RULES_VERSION, iso(T0)),
        (b, "auto_correlated", "alertlink", "auto_link", RULES_VERSION, iso(T0 + 30 * MIN))]
    assert [(x["incident"]["id"], x["incident"]["title"], x["link"]["link_type"])
            for x in client.get(f"/alerts/{b}/incidents").json()] == [(1, "[Auto] CheckoutDown", "auto_correlated")]
    detail = client.get("/incidents/1").json()
    assert {k: detail[k] for k in ("title", "status", "severity", "created_at", "last_activity_at", "alert_count")} == {
        "title": "[Auto] CheckoutDown", "status": "open", "severity": "critical", "created_at": iso(T0),
        "last_activity_at": iso(T0 + 30 * MIN), "alert_count": 2}
    assert timeline(client, 1) == [
        ("incident_created", iso(T0), "alertlink", {"rule": "auto_create", "reason": AUTO_CREATE_REASON,
                                                    "alert_ids": [a]}),
        ("alert_linked", iso(T0 + 30 * MIN), "alertlink", {
            "alert_id": b, "link_type": "auto_correlated", "rule": "auto_link",
            "reason": "service=checkout, environment=production as in #1"})]


@pytest.mark.parametrize("later, incidents", [
    (timedelta(minutes=30), [(1, "auto_correlated")]),
    (timedelta(hours=4), [(1, "auto_correlated")]),  # the end of the correlation window still counts
    (timedelta(hours=4, seconds=1), [(2, "auto_created")]),
])
def test_the_correlation_window(client, later, incidents):
    post(client, "/alerts", checkout("CheckoutDown", "critical", T0))
    [b] = post(client, "/alerts", checkout("CheckoutSlow", "high", T0 + later))
    linked = client.get(f"/alerts/{b}/incidents").json()
    assert [(x["incident"]["id"], x["link"]["link_type"]) for x in linked] == incidents


def test_medium_alerts_pend_until_min_alerts(client):
    r = client.post("/alerts", json=generic("CartSlow", "warning", T0, service="cart", environment="production"))
    assert (r.json()["results"][0]["decision"]["kind"], client.get("/incidents").json()) == ("pend", [])
    r = client.post("/alerts", json=generic("CartErrors", "medium", T0 + 2 * MIN, service="cart",
                                             environment="production"))
    assert r.json()["results"][0]["decision"] == {
        "kind": "open", "incident_id": 1, "link_type": "auto_created", "rule": "aggregation:service-alerts",
        "reason": "2 alerts for cart:production within 0:05:00"}
    assert [(i["id"], i["title"], i["severity"], i["aggregation_key"], i["created_at"])
            for i in client.get("/incidents").json()] == [
        (1, "[Aggregated] cart: 2 related alerts", "medium", "cart:production", iso(T0 + 2 * MIN))]
    assert incident_links(client, 1) == [(1, "auto_created", "alertlink", "aggregation:service-alerts", False),
                                         (2, "auto_created", "alertlink", "aggregation:service-alerts", False)]


# --- responders -----------------------------------------------------------------------------------------

@pytest.fixture
def incident(client):
    """Incident 1 holds alerts 1 (auto_created) and 2 (auto_correlated); alert 3 is unrelated and pending."""
    post(client, "/alerts", checkout("CheckoutDown", "critical", T0))
    post(client, "/alerts", checkout("CheckoutSlow", "high", T0 + MIN))
    post(client, "/alerts", generic("SearchSlow", "warning", T0 + 2 * MIN, service="search"))
    return 1


@pytest.mark.parametrize("body, headers, link_type, by", [
    ({"linkedBy": "alice"}, {}, "manual", "alice"),
    ({}, {"X-Alertlink-User": "bob"}, "manual", "bob"),
    ({"linkedBy": "alice"}, {"X-Alertlink-User": "bob"}, "manual", "alice"),
    ({"linkType": "historical"}, {}, "historical", "api"),
])
def test_a_responder_links_alerts(client, incident, body, headers, link_type, by):
    r = client.post("/incidents/1/links", json={"alertIds": [3, 2]} | body, headers=headers)
    assert (r.status_code, r.json()) == (200, {"links": [{
        "alert_id": 3, "incident_id": 1, "link_type": link_type, "linked_at": iso(CAPTURED), "linked_by": by,
        "rule": None, "score": None, "components": None, "decided_by_version": None, "removed_at": None,
        "removed_by": None}], "already_linked": [2]})
    assert incident_links(client, 1)[-1] == (3, link_type, by, None, False)
    assert timeline(client, 1)[-1] == ("alerts_linked", iso(CAPTURED), by,
                                       {"link_type": link_type, "alert_ids": [3], "count": 1})


@pytest.mark.parametrize("path, body, status, detail", [
    ("/incidents/1/links", {"alertIds": [3, 99]}, 422,
     [{"loc": ["body", "alertIds"], "msg": "no such alerts: [99]", "type": "value_error"}]),
    ("/incidents/99/links", {"alertIds": [3]}, 404, "no incident 99"),
])
def test_linking_what_does_not_exist(client, incident, path, body, status, detail):
    r = client.post(path, json=body)
    assert (r.status_code, r.json()["detail"], incident_links(client, 1)) == (status, detail, [
        (1, "auto_created", "alertlink", "auto_create", False),
        (2, "auto_correlated", "alertlink", "auto_link", False)])


@pytest.mark.parametrize("body, loc", [
    ({"alertIds": []}, ["body", "alertIds"]),
    ({"alertIds": [3], "linkType": "auto_created"}, ["body", "linkType"]),
])
def test_a_bad_link_request_names_the_field(client, incident, body, loc):
    r = client.post("/incidents/1/links", json=body)
    assert (r.status_code, [d["loc"] for d in r.json()["detail"]]) == (422, [loc])


def test_a_removed_link_is_kept_and_never_restored_automatically(client, clock, incident):
    clock.advance(minutes=5)
    r = client.delete("/incidents/1/links/2", headers={"X-Alertlink-User": "erin"})
    assert (r.status_code, r.json()["removed_at"], r.json()["removed_by"]) == (200, iso(clock.now), "erin")
    post(client, "/alerts", checkout("CheckoutSlow", "high", T0 + MIN))          # alert 2 again
    post(client, "/alerts", checkout("CheckoutErrors", "high", T0 + 10 * MIN))   # alert 4, same service
    assert incident_links(client, 1) == [(1, "auto_created", "alertlink", "auto_create", False),
                                         (4, "auto_correlated", "alertlink", "auto_link", False)]
    assert incident_links(client, 1, include_removed="true") == [
        (1, "auto_created", "alertlink", "auto_create", False),
        (2, "auto_correlated", "alertlink", "auto_link", True),
        (4, "auto_correlated", "alertlink", "auto_link", False)]
    assert (client.get("/alerts/2/incidents").json(),
            [x["incident"]["id"] for x in client.get("/alerts/2/incidents", params={"include_removed": True}).json()],
            client.get("/incidents/1").json()["alert_count"]) == ([], [1], 2)
    assert timeline(client, 1)[-1] == ("alert_unlinked", iso(clock.now), "erin",
                                      {"alert_id": 2, "link_type": "auto_correlated"})
    assert client.delete("/incidents/1/links/2").status_code == 404  # already removed


def test_status_changes_set_times_and_the_timeline(client, clock, incident):
    post(client, "/alerts", generic("PaymentsDown", "critical", T0 + 3 * MIN, service="payments"))
    t1, steps = clock.advance(minutes=10), []
    steps.append(client.post("/incidents/1/status", json={"status": "acknowledged"},
                             headers={"X-Alertlink-User": "carol"}).json())
    t2 = clock.advance(minutes=10)
    steps.append(client.post("/incidents/1/status", json={"status": "resolved", "by": "dave",
                                                           "rootCause": "bad deploy", "summary": "rolled back"}).json())
    t3 = clock.advance(minutes=10)
    steps.append(client.post("/incidents/1/status", json={"status": "open"}).json())
    auto_summary = f"Automatically created from alert: {client.get('/alerts/1').json()['fingerprint']}"
    assert [(s["status"], s["acknowledged_at"], s["resolved_at"], s["root_cause"], s["summary"]) for s in steps] == [
        ("acknowledged", iso(t1), None, None, auto_summary),
        ("resolved", iso(t1), iso(t2), "bad deploy", "rolled back"),
        ("open", iso(t1), None, "bad deploy", "rolled back")]
    assert timeline(client, 1)[-3:] == [
        ("status_changed", iso(t1), "carol", {"before": "open", "after": "acknowledged"}),
        ("status_changed", iso(t2), "dave", {"before": "acknowledged", "after": "resolved"}),
        ("status_changed", iso(t3), "api", {"before": "resolved", "after": "open"})]


def test_incidents_by_status(client, incident):
    post(client, "/alerts", generic("PaymentsDown", "critical", T0 + 3 * MIN, service="payments"))
    client.post("/incidents/2/status", json={"status": "acknowledged"})
    assert {s: [i["id"] for i in client.get("/incidents", params={"status": s}).json()]
            for s in ("open", "acknowledged", "resolved")} == {"open": [1], "acknowledged": [2], "resolved": []}
    assert client.get("/incidents", params={"status": "closed"}).status_code == 422


# --- bad input: a 4xx naming the field, and nothing stored ----------------------------------------------

BAD_ALERT = {"labels": {"alertname": "B", "severity": "urgent"}, "startsAt": "2026-12-03T11:00:00Z"}


@pytest.mark.parametrize("path, body, loc", [
    pytest.param("/alerts", b'{"title": "t",', ["body", 14], id="malformed-json"),
    pytest.param("/alerts", {"severity": "info"}, ["body", "title"], id="missing-title"),
    pytest.param("/alerts", {"title": "t", "severity": "urgent"}, ["body", "severity"], id="unknown-severity"),
    pytest.param("/alerts", {"title": "t", "fired_at": "yesterday"}, ["body", "fired_at"], id="bad-time"),
    pytest.param("/alerts", {"title": "t", "labels": {"team": 7}}, ["body", "labels", "team"], id="label-not-string"),
    pytest.param("/alerts", {"title": "t", "labels": ["team"]}, ["body", "labels"], id="labels-not-object"),
    pytest.param("/alerts", [], ["body"], id="empty-list"),
    pytest.param("/alerts", [{"title": "a"}, {"title": "b", "severity": "urgent"}, {"title": "c"}],
                 ["body", 1, "severity"], id="one-bad-severity-of-three"),
    pytest.param("/alerts", [{"title": "a"}, {"title": "b", "labels": {"x": 1}}, {"title": "c"}],
                 ["body", 1, "labels", "x"], id="one-bad-label-of-three"),
    pytest.param("/integrations/alertmanager",
                 {"alerts": [{"labels": {"alertname": "A"}}, BAD_ALERT, {"labels": {"alertname": "C"}}]},
                 ["body", "alerts", 1, "labels", "severity"], id="alertmanager-one-bad-of-three"),
    pytest.param(PD, PD_TRIGGER | {"payload": PD_TRIGGER["payload"] | {"timestamp": "now"}},
                 ["body", "payload", "timestamp"], id="pagerduty-bad-time"),
])
def test_bad_input_names_the_field_and_stores_nothing(client, path, body, loc):
    post(client, "/alerts", checkout("CheckoutDown", "critical", T0))
    before = (client.get("/alerts").json(), client.get("/incidents").json())
    r = (client.post(path, content=body, headers={"Content-Type": "application/json"}) if isinstance(body, bytes)
         else client.post(path, json=body))
    assert (r.status_code, [d["loc"] for d in r.json()["detail"]]) == (422, [loc])
    assert (client.get("/alerts").json(), client.get("/incidents").json()) == before


# --- health and event time ---------------------------------------------------------------------------------

def test_health(client):
    first = client.get("/health").json()
    post(client, "/alerts", checkout("CheckoutDown", "critical", T0))
    assert (first, client.get("/health").json()["event_time"]) == (
        {"status": "ok", "database": "sqlite", "schema_revision": head_revision(), "rules_version": RULES_VERSION, "weights_version": None,
         "event_time": None}, iso(T0))


def test_a_pending_group_is_flushed_by_a_later_alert_not_by_the_wall_clock(client, clock):
    clock.advance(days=1)  # the wall clock is far past every window: it must not matter
    post(client, "/alerts", generic("CartSlow", "warning", T0, service="cart", environment="production"))
    post(client, "/alerts", generic("SearchSlow", "warning", T0 + 4 * MIN, service="search"))
    assert client.get("/incidents").json() == []  # cart's window (to T0+5m) is still open in event time
    post(client, "/alerts", generic("Heartbeat", "info", T0 + 6 * MIN))  # opens nothing, but moves event time
    assert [(i["id"], i["title"], i["created_at"], i["aggregation_key"]) for i in client.get("/incidents").json()] == [
        (1, "[Aggregated] cart: 1 related alerts", iso(T0 + 5 * MIN), "cart:production")]
    assert incident_links(client, 1) == [(1, "auto_created", "alertlink", "aggregation:service-alerts", False)]
    assert client.get("/health").json()["event_time"] == iso(T0 + 6 * MIN)
