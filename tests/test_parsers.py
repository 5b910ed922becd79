"""Intake parsers against the captured Alertmanager fixtures, plus bad-input tables."""
import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.domain import AlertIn, InputError
from service.parsers import alertmanager, generic, opsgenie, pagerduty
from service.parsers.common import StatusChange, alertmanager_fingerprint, normalize_severity, parse_time
from service.settings import DEFAULT_SEVERITY_MAP

FIXTURES = Path(__file__).parents[2] / "shared" / "fixtures" / "alertmanager"
REQUESTS = json.loads((FIXTURES / "_http_requests.json").read_text())
UTC = timezone.utc
RECEIVED = datetime(2026, 12, 3, 16, 0, tzinfo=UTC)
KW = {"received_at": RECEIVED, "severity_words": DEFAULT_SEVERITY_MAP, "default_severity": "medium"}
GROUP_KEY_SHA = "97510b418c30a6bc221ab8cd7f4d49d287215a8f33fc7173ad6f03934114edfb"
# Alertmanager sends the same sha256(groupKey) to both: our fingerprints keep them apart
PD_KEY, OG_KEY = f"pagerduty:{GROUP_KEY_SHA}", f"opsgenie:{GROUP_KEY_SHA}"
T_GROUP = datetime(2026, 12, 3, 15, 33, 43, 967000, tzinfo=UTC)


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def parse(name: str) -> list:
    """Parse a fixture the way the route it was sent to would (by its captured path)."""
    body, url = load(name), urlsplit(REQUESTS[name]["path"])
    if url.path.startswith("/pagerduty/"):
        return pagerduty.to_alerts(pagerduty.PagerDutyEvent.model_validate(body), **KW)
    if url.path.startswith("/opsgenie/"):
        *_, identifier, action = url.path.split("/")
        if action in ("close", "acknowledge"):
            opsgenie.OpsgenieAction.model_validate(body)
            return opsgenie.status_change(identifier, action, received_at=RECEIVED,
                                          identifier_type=parse_qs(url.query)["identifierType"][0])
        return opsgenie.to_alerts(opsgenie.OpsgenieCreate.model_validate(body), **KW)
    return alertmanager.to_alerts(alertmanager.AlertmanagerWebhook.model_validate(body), **KW)


def am_alert(name: str, i: int, **fields) -> AlertIn:
    """The expected AlertIn for alerts[i] of a fixture whose alert has a summary; `fields` fill the rest."""
    a = load(name)["alerts"][i]
    return AlertIn(fingerprint=a["fingerprint"], title=a["annotations"]["summary"], source="prometheus",
                   labels=a["labels"], annotations=a["annotations"], **fields)


# --- every fixture: (kind, fingerprint, status, severity) of each item -------------------------

SUMMARIES = {
    "am_to_opsgenie_close.json": [("StatusChange", OG_KEY, "resolved", None)],
    "am_to_opsgenie_create.json": [("AlertIn", OG_KEY, "firing", "medium")],  # no priority: P3
    "am_to_pagerduty_v2_resolve.json": [("StatusChange", PD_KEY, "resolved", None)],
    "am_to_pagerduty_v2_trigger.json": [("AlertIn", PD_KEY, "firing", "high")],  # "error"
    "firing_group_one_firing_one_resolved.json": [("AlertIn", "c6a1950e679c4c03", "firing", "critical"),
                                                  ("AlertIn", "a285b018731604c0", "resolved", "critical")],
    "firing_group_two_alerts.json": [("AlertIn", "c6a1950e679c4c03", "firing", "critical"),
                                     ("AlertIn", "a285b018731604c0", "firing", "critical")],
    "firing_minimal_labels_only_nanosecond_startsat.json": [("AlertIn", "478afe75d8e8aa87", "firing", "medium")],
    "firing_single_critical_high_latency.json": [("AlertIn", "fcc3c128424d2450", "firing", "critical")],
    "firing_single_warning_disk_space_low.json": [("AlertIn", "4e31b19ecb30a496", "firing", "medium")],
    "firing_truncated_max_alerts_1.json": [("AlertIn", "814b6b733bdfaf92", "firing", "medium")],
    "prometheus_target_down_firing.json": [("AlertIn", "b777404edf8b6837", "firing", "critical")],
    "prometheus_target_down_resolved.json": [("AlertIn", "b777404edf8b6837", "resolved", "critical")],
    "prometheus_watchdog_firing.json": [("AlertIn", "f10120a56278d68d", "firing", "info")],
    "resolved_group_last_alert.json": [("AlertIn", "c6a1950e679c4c03", "resolved", "critical")],
    "resolved_single_disk_space_low.json": [("AlertIn", "4e31b19ecb30a496", "resolved", "medium")],
}


def test_table_covers_every_fixture():
    assert sorted(SUMMARIES) == sorted(REQUESTS)


@pytest.mark.parametrize("name", sorted(SUMMARIES))
def test_every_fixture_parses(name):
    items = parse(name)
    assert [(type(x).__name__, x.fingerprint, x.status, getattr(x, "severity", None)) for x in items] == SUMMARIES[name]
    for x in items:  # resolved iff resolved_at; times aware UTC
        if isinstance(x, AlertIn):
            assert (x.status == "resolved") == (x.resolved_at is not None)
            assert x.fired_at.tzinfo == UTC


G = "firing_group_two_alerts.json"
MIXED = "firing_group_one_firing_one_resolved.json"
WHOLE = {
    G: [am_alert(G, 0, severity="critical", fired_at=T_GROUP),
        am_alert(G, 1, severity="critical", fired_at=T_GROUP)],
    MIXED: [am_alert(MIXED, 0, severity="critical", fired_at=T_GROUP),
            am_alert(MIXED, 1, severity="critical", fired_at=T_GROUP, status="resolved",
                     resolved_at=datetime(2026, 12, 3, 15, 35, 47, 150000, tzinfo=UTC))],
    "prometheus_watchdog_firing.json": [AlertIn(
        fingerprint="f10120a56278d68d", title="Alerting pipeline heartbeat", source="prometheus", severity="info",
        fired_at=datetime(2026, 12, 3, 15, 35, 56, 689000, tzinfo=UTC),
        labels={"alertname": "Watchdog", "cluster": "ci-cluster-1", "environment": "ci",
                "service": "monitoring", "severity": "none"},
        annotations=load("prometheus_watchdog_firing.json")["alerts"][0]["annotations"])],
    "firing_minimal_labels_only_nanosecond_startsat.json": [AlertIn(
        fingerprint="478afe75d8e8aa87", title="NowAlert1", source="prometheus", severity="medium",
        fired_at=datetime(2026, 12, 3, 15, 40, 54, 492610, tzinfo=UTC),  # .492610886 truncated
        labels={"alertname": "NowAlert1", "service": "s"}, annotations={})],
    "firing_truncated_max_alerts_1.json": [am_alert(
        "firing_truncated_max_alerts_1.json", 0, severity="medium",
        fired_at=datetime(2026, 12, 3, 15, 33, 16, tzinfo=UTC))],
    "am_to_pagerduty_v2_trigger.json": [AlertIn(
        fingerprint=PD_KEY, title="[FIRING:2] HighErrorRate checkout (production shop critical)",
        source="pagerduty", severity="high", fired_at=RECEIVED,
        labels={**load("am_to_pagerduty_v2_trigger.json")["payload"]["custom_details"],
                "pagerduty_source": "Alertmanager"},
        annotations={"client": "Alertmanager",
                     "client_url": "http://alertmanager.example:9093/#/alerts?receiver=all-formats"},
        dedup="open")],
    "am_to_pagerduty_v2_resolve.json": [StatusChange(PD_KEY, "resolved", RECEIVED)],
    "am_to_opsgenie_create.json": [AlertIn(
        fingerprint=OG_KEY, title="[FIRING:2] HighErrorRate checkout (production shop critical)",
        source="opsgenie", severity="medium", fired_at=RECEIVED,
        labels={**load("am_to_opsgenie_create.json")["details"],
                "opsgenie_source": "http://alertmanager.example:9093/#/alerts?receiver=all-formats"},
        annotations={"description": load("am_to_opsgenie_create.json")["description"]}, dedup="open")],
    "am_to_opsgenie_close.json": [StatusChange(OG_KEY, "resolved", RECEIVED)],
}


@pytest.mark.parametrize("name", sorted(WHOLE))
def test_whole_result(name):
    assert parse(name) == WHOLE[name]


def test_truncated_count_is_on_the_body():
    assert alertmanager.AlertmanagerWebhook.model_validate(load("firing_truncated_max_alerts_1.json")).truncatedAlerts == 2


def _grafana(**label_extra) -> dict:
    body = load("firing_single_warning_disk_space_low.json") | {"version": "1", "orgId": 1, "state": "alerting",
                                                               "title": "[FIRING:1] DiskSpaceLow"}
    alert = body["alerts"][0]
    alert |= {"values": {"A": 0.082}, "silenceURL": "http://grafana.example/s", "dashboardURL": ""}
    alert["labels"] = alert["labels"] | label_extra
    return body


@pytest.mark.parametrize(("body", "source"), [
    (_grafana(), "grafana"),
    (_grafana(source="node-exporter"), "node-exporter"),  # a `source` label wins
])
def test_grafana_source(body, source):
    items = alertmanager.to_alerts(alertmanager.GrafanaWebhook.model_validate(body), **KW, default_source="grafana")
    assert [(x.source, x.severity, x.fingerprint) for x in items] == [(source, "medium", "4e31b19ecb30a496")]


@pytest.mark.parametrize(("alert", "status", "resolved_at"), [
    ({"endsAt": "0001-01-01T00:00:00Z"}, "firing", None),
    ({"endsAt": "2026-12-03T15:50:00Z"}, "resolved", datetime(2026, 12, 3, 15, 50, tzinfo=UTC)),
    ({"endsAt": "2026-12-03T16:05:00Z"}, "firing", None),  # a lease in the future: still firing
    ({"status": "resolved"}, "resolved", RECEIVED),
])
def test_alertmanager_status_without_fixture(alert, status, resolved_at):
    body = alertmanager.AlertmanagerWebhook.model_validate({"alerts": [{"labels": {"alertname": "X"}} | alert]})
    [a] = alertmanager.to_alerts(body, **KW)
    assert (a.status, a.resolved_at, a.fingerprint, a.fired_at) == (
        status, resolved_at, alertmanager_fingerprint({"alertname": "X"}), RECEIVED)


# --- PagerDuty and Opsgenie beyond the fixtures -------------------------------------------------

def test_pagerduty_trigger_without_dedup_key_is_deterministic():
    event = {"routing_key": "r" * 32, "event_action": "trigger",
             "payload": {"summary": "disk", "source": "db1", "severity": "warning",
                         "timestamp": "2015-07-17T08:42:58.315+0000", "component": "pg", "class": "disk",
                         "custom_details": {"free": 3.5, "mounts": ["/"], "note": "x"}}}
    first, second = (pagerduty.to_alerts(pagerduty.PagerDutyEvent.model_validate(event), **KW) for _ in "12")
    assert first == second == [AlertIn(
        fingerprint="pagerduty:" + hashlib.sha256(("r" * 32 + "\0disk\0db1").encode()).hexdigest(), title="disk", source="pagerduty", severity="medium",
        fired_at=datetime(2015, 7, 17, 8, 42, 58, 315000, tzinfo=UTC),
        labels={"free": "3.5", "mounts": '["/"]', "note": "x", "component": "pg", "class": "disk",
                "pagerduty_source": "db1"}, dedup="open")]


@pytest.mark.parametrize(("action", "status"), [("acknowledge", "acknowledged"), ("resolve", "resolved")])
def test_pagerduty_status_change(action, status):
    event = pagerduty.PagerDutyEvent.model_validate({"routing_key": "r", "dedup_key": "k", "event_action": action})
    assert pagerduty.to_alerts(event, **KW) == [StatusChange("pagerduty:k", status, RECEIVED)]


def test_opsgenie_create_minimal_and_tags():
    body = opsgenie.OpsgenieCreate.model_validate(
        {"message": "m", "tags": ["a", "b"], "entity": "e", "priority": "P1", "details": {"k": "v"}})
    assert opsgenie.to_alerts(body, received_at=RECEIVED, severity_words=DEFAULT_SEVERITY_MAP) == [AlertIn(
        fingerprint="opsgenie:" + hashlib.sha256(b"m").hexdigest(),  # no alias: derived from the message
        title="m", source="opsgenie", severity="critical", fired_at=RECEIVED,
        labels={"k": "v", "tags": "a,b", "entity": "e"}, dedup="open")]


def test_opsgenie_acknowledge():
    assert opsgenie.status_change("al", "acknowledge", received_at=RECEIVED) == [
        StatusChange("opsgenie:al", "acknowledged", RECEIVED)]


# --- generic format -----------------------------------------------------------------------------

def _g(**fields) -> AlertIn:
    base = {"fingerprint": alertmanager_fingerprint({"alertname": "t"}), "title": "t", "source": "api",
            "severity": "medium", "fired_at": RECEIVED}
    return AlertIn(**(base | fields))


T1 = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)


@pytest.mark.parametrize(("body", "expected"), [
    ({"title": "t"}, [_g()]),
    ({"title": " t ", "severity": "CRIT", "source": "cron", "external_id": "e1"},
     [_g(severity="critical", source="cron", external_id="e1")]),
    ({"title": "t", "labels": {"alertname": "X"}, "annotations": {"a": "b"}, "fired_at": "2026-12-03T17:00:00+02:00"},
     [_g(fingerprint=alertmanager_fingerprint({"alertname": "X"}), labels={"alertname": "X"},
         annotations={"a": "b"}, fired_at=T1)]),
    ({"title": "t", "fingerprint": "f", "resolved_at": "2026-12-03T15:00:00Z"},  # fired_at not after resolved_at
     [_g(fingerprint="f", status="resolved", fired_at=T1, resolved_at=T1)]),
    ({"title": "t", "status": "resolved", "fired_at": "2026-12-03T15:00:00Z"},
     [_g(status="resolved", fired_at=T1, resolved_at=RECEIVED)]),
    ([{"title": "t"}, {"title": "t", "severity": "p5"}], [_g(), _g(severity="info")]),
])
def test_generic(body, expected):
    assert generic.to_alerts(generic.GenericBody.model_validate(body), **KW) == expected


# --- bad input: every error names the field ----------------------------------------------------

AM, GEN, PD, OG = (alertmanager.AlertmanagerWebhook, alertmanager.to_alerts), (generic.GenericBody, generic.to_alerts), \
    (pagerduty.PagerDutyEvent, pagerduty.to_alerts), (opsgenie.OpsgenieCreate, opsgenie.to_alerts)


def _am(**alert) -> dict:
    return {"alerts": [{"labels": {"alertname": "A"}}, {"labels": {"alertname": "B"}} | alert]}


PD_OK = {"routing_key": "r", "event_action": "trigger", "payload": {"summary": "s", "source": "x", "severity": "info"}}


@pytest.mark.parametrize(("fmt", "body", "loc"), [
    # malformed times
    pytest.param(GEN, {"title": "t", "fired_at": "yesterday"}, ("body", "fired_at"), id="time-word"),
    pytest.param(GEN, {"title": "t", "fired_at": "2026-12-03T15:33:16"}, ("body", "fired_at"), id="time-naive"),
    pytest.param(GEN, {"title": "t", "fired_at": 1764775996}, ("body", "fired_at"), id="time-number"),
    pytest.param(GEN, [{"title": "t"}, {"title": "t", "resolved_at": "2026-02-30T00:00:00Z"}],
                 ("body", 1, "resolved_at"), id="time-feb30"),
    pytest.param(AM, _am(startsAt="2026-12-03T15:33:43.1234567890Z"), ("body", "alerts", 1, "startsAt"),
                 id="time-10-digits"),
    pytest.param(PD, PD_OK | {"payload": PD_OK["payload"] | {"timestamp": "now"}}, ("body", "payload", "timestamp"),
                 id="time-pd"),
    # missing title
    pytest.param(GEN, {"severity": "info"}, ("body", "title"), id="no-title"),
    pytest.param(GEN, [{"title": "t"}, {"title": "  "}], ("body", 1, "title"), id="blank-title"),
    pytest.param(PD, PD_OK | {"payload": {"source": "x"}}, ("body", "payload", "summary"), id="no-summary"),
    pytest.param(OG, {"message": ""}, ("body", "message"), id="empty-message"),
    # unknown severity words
    pytest.param(GEN, {"title": "t", "severity": "xyz"}, ("body", "severity"), id="sev-generic"),
    pytest.param(AM, _am(labels={"alertname": "B", "severity": "xyz"}), ("body", "alerts", 1, "labels", "severity"),
                 id="sev-am"),
    pytest.param(PD, PD_OK | {"payload": PD_OK["payload"] | {"severity": "xyz"}}, ("body", "payload", "severity"),
                 id="sev-pd"),
    pytest.param(OG, {"message": "m", "priority": "P7"}, ("body", "priority"), id="sev-og"),
    # labels that are not string -> string
    pytest.param(GEN, {"title": "t", "labels": {"team": 7}}, ("body", "labels", "team"), id="labels-generic"),
    pytest.param(GEN, {"title": "t", "labels": ["a"]}, ("body", "labels"), id="labels-list"),
    pytest.param(AM, _am(labels={"alertname": "B", "up": None}), ("body", "alerts", 1, "labels", "up"),
                 id="labels-am"),
    pytest.param(AM, _am(annotations={"n": 1.5}), ("body", "alerts", 1, "annotations", "n"), id="annotations-am"),
    pytest.param(OG, {"message": "m", "details": {"k": True}}, ("body", "details", "k"), id="details-og"),
    # shape
    pytest.param(GEN, [], ("body",), id="empty-list"),
    pytest.param(GEN, "t", ("body",), id="not-an-object"),
    pytest.param(GEN, {"title": "t", "titel": "x"}, ("body", "titel"), id="unknown-field"),
    pytest.param(GEN, {"title": "t", "status": "open"}, ("body", "status"), id="bad-status"),
    pytest.param(GEN, {"title": "t", "status": "firing", "resolved_at": "2026-12-03T15:00:00Z"}, ("body", "status"),
                 id="firing-with-resolved_at"),
    pytest.param(GEN, {"title": "t", "fired_at": "2026-12-03T15:00:00Z", "resolved_at": "2026-12-03T14:00:00Z"},
                 ("body", "resolved_at"), id="resolved-before-fired"),
    pytest.param(AM, {"alerts": [], "truncatedAlerts": -1}, ("body", "truncatedAlerts"), id="truncated-negative"),
    pytest.param(PD, {"routing_key": "r", "event_action": "trigger"}, ("body", "payload"), id="pd-no-payload"),
    pytest.param(PD, {"routing_key": "r", "event_action": "resolve"}, ("body", "dedup_key"), id="pd-no-dedup_key"),
    pytest.param(PD, PD_OK | {"event_action": "snooze"}, ("body", "event_action"), id="pd-bad-action"),
])
def test_bad_input_names_the_field(fmt, body, loc):
    model, to_alerts = fmt
    try:
        parsed = model.model_validate(body)
    except ValidationError as exc:  # FastAPI prefixes "body" to pydantic's loc
        assert [("body", *e["loc"]) for e in exc.errors()][:1] == [loc]
        return
    with pytest.raises(InputError) as exc:
        to_alerts(parsed, **KW)
    assert exc.value.loc == loc


@pytest.mark.parametrize(("identifier", "identifier_type", "loc"), [
    ("al", "id", ("query", "identifierType")),
    (" ", "alias", ("path", "identifier")),
])
def test_opsgenie_status_change_rejects(identifier, identifier_type, loc):
    with pytest.raises(InputError) as exc:
        opsgenie.status_change(identifier, "close", received_at=RECEIVED, identifier_type=identifier_type)
    assert exc.value.loc == loc


def test_fastapi_reports_the_loc():
    app = FastAPI()

    @app.post("/alerts")
    def post_generic(body: generic.GenericBody) -> None: ...

    @app.post("/am")
    def post_am(body: alertmanager.AlertmanagerWebhook) -> None: ...

    client = TestClient(app)
    responses = [client.post("/alerts", json=[{"title": "t"}, {"title": "t", "labels": {"x": 1}}]),
                 client.post("/alerts", json=[]),
                 client.post("/am", json=_am(labels={"alertname": "B", "x": 1}))]
    assert [(r.status_code, [d["loc"] for d in r.json()["detail"]]) for r in responses] == [
        (422, [["body", 1, "labels", "x"]]), (422, [["body"]]), (422, [["body", "alerts", 1, "labels", "x"]])]


# --- the common helpers ------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-03T15:33:16Z", datetime(2026, 12, 3, 15, 33, 16, tzinfo=UTC)),
    ("2026-12-03T15:35:47.15Z", datetime(2026, 12, 3, 15, 35, 47, 150000, tzinfo=UTC)),
    ("2026-12-03T15:40:54.492610886Z", datetime(2026, 12, 3, 15, 40, 54, 492610, tzinfo=UTC)),
    ("2026-12-03t17:33:16.5+02:00", datetime(2026, 12, 3, 15, 33, 16, 500000, tzinfo=UTC)),
    ("2015-07-17T08:42:58.315+0000", datetime(2015, 7, 17, 8, 42, 58, 315000, tzinfo=UTC)),
    ("2026-12-03 10:33:16-05", datetime(2026, 12, 3, 15, 33, 16, tzinfo=UTC)),
    ("0001-01-01T00:00:00Z", None),
    (None, None),
])
def test_parse_time(text, expected):
    assert parse_time(text, ("f",)) == expected


@pytest.mark.parametrize("text", ["", "2026-12-03", "2026-12-03T15:33Z", "2026-12-03T15:33:16", "1764775996",
                                  "2026-13-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "2026-12-03T15:33:16+24:00"])
def test_parse_time_rejects(text):
    with pytest.raises(InputError) as exc:
        parse_time(text, ("body", "fired_at"))
    assert exc.value.loc == ("body", "fired_at")


@pytest.mark.parametrize(("raw", "default", "expected"), [
    ("Critical", "medium", "critical"), (" warning ", "medium", "medium"), ("none", "medium", "info"),
    (None, "medium", "medium"), ("", "low", "low"), (None, "P3", "medium"),
])
def test_normalize_severity(raw, default, expected):
    assert normalize_severity(raw, DEFAULT_SEVERITY_MAP, default, ("s",)) == expected


def test_unknown_severity_message():
    with pytest.raises(InputError) as exc:
        normalize_severity("xyz", {"crit": "critical", "warn": "medium"}, "medium", ("body", "severity"))
    assert (exc.value.loc, exc.value.msg) == (("body", "severity"), "unknown severity 'xyz'; known: crit, warn")
