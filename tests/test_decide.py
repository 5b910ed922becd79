"""The pure decision core against the shipped default rules (and a few small
variants): auto_link -> auto_create -> aggregation, window edges, `expired`, `flush`.
Every case asserts the whole decision.

Defaults, for reading the tables: auto_link severity critical/high/medium, 4h;
auto_create critical/high not from synthetic-monitors/load-tests, 1h dedup; both
match on fingerprint, or service+environment. Aggregation, first match wins:
service-alerts (critical/high/medium, service:environment, 5m, 2),
infrastructure-alerts (prometheus/node-exporter with a node, node:datacenter, 3m, 3),
deployment-alerts (a deployment_id, 10m, 1). Alerts fire at 05:00 unless told.
"""
from dataclasses import replace
from datetime import timedelta

import pytest

from factories import alert, group, groups_by_key, incident, rules_from_yaml, t
from service.decide import Drop, Link, NoAction, Open, Pend, decide, expired, flush
from service.rules import load_rules, seed_rules_dir
from service.settings import DEFAULT_SEVERITY_MAP

DEFAULTS = load_rules(seed_rules_dir(), DEFAULT_SEVERITY_MAP)  # the seed design's rules
NO_LINK = replace(DEFAULTS, auto_link=replace(DEFAULTS.auto_link, enabled=False))
NO_CREATE = replace(DEFAULTS, auto_create=replace(DEFAULTS.auto_create, enabled=False))
NEITHER = replace(NO_LINK, auto_create=NO_CREATE.auto_create)

PROD = {"service": "checkout", "environment": "prod"}
STAGING = {"service": "checkout", "environment": "staging"}
NODE = {"node": "n1", "datacenter": "dc1"}
AUTO_REASON = "severity_in [critical, high], source_not_in [load-tests, synthetic-monitors]"


def auto_open(a) -> Open:
    """What auto_create opens for alert `a`."""
    return Open(rule="auto_create", title=f"[Auto] {a.title}", severity=a.severity,
                summary=f"Automatically created from alert: {a.fingerprint}", aggregation_key=None,
                alert_ids=(a.id,), opened_at=a.fired_at, reason=AUTO_REASON)


def new_group(key: str, at: str = "05:00", *, minutes: int = 5, of: int = 2,
              rule: str = "service-alerts") -> Pend:
    """What the first alert of a group that needs `of` alerts decides."""
    return Pend(rule, key, None, t(at), t(at) + timedelta(minutes=minutes), f"1 of {of} alerts for {key}")


def cases(table):
    """parametrize arguments from rows whose first item is the id."""
    return dict(argvalues=[row[1:] for row in table], ids=[row[0] for row in table])


HIGH = alert(severity="high", labels=PROD)                       # fp-1
HIGH_FP2 = alert(fingerprint="fp-2", severity="high", labels=PROD)
HIGH_NO_SERVICE = alert(fingerprint="fp-2", severity="high", labels={"environment": "prod"})

# ------------------------------------------------------------------ auto_link

AUTO_LINK = [
    ("by fingerprint", DEFAULTS, HIGH,
     [incident(7, fingerprints=["fp-1"])],
     Link(7, "auto_link", "fingerprint fp-1 already in #7")),
    ("by service and environment", DEFAULTS, HIGH_FP2,
     [incident(7, labels=[PROD])],
     Link(7, "auto_link", "service=checkout, environment=prod as in #7")),
    ("medium links too", DEFAULTS, alert(fingerprint="fp-2", labels=PROD),
     [incident(7, labels=[PROD])],
     Link(7, "auto_link", "service=checkout, environment=prod as in #7")),
    ("same service, other environment", DEFAULTS, HIGH_FP2,
     [incident(7, labels=[STAGING])],
     auto_open(HIGH_FP2)),
    ("fields split over two linked alerts", DEFAULTS, HIGH_FP2,
     [incident(7, labels=[{"service": "checkout"}, {"environment": "prod"}])],
     auto_open(HIGH_FP2)),
    ("alert without service", DEFAULTS, HIGH_NO_SERVICE,
     [incident(7, labels=[{"environment": "prod"}])],
     auto_open(HIGH_NO_SERVICE)),
    ("most recently active wins", DEFAULTS, HIGH,
     [incident(3, last_active="03:00", fingerprints=["fp-1"]),
      incident(5, last_active="04:30", fingerprints=["fp-1"]),
      incident(4, last_active="04:00", labels=[PROD])],
     Link(5, "auto_link", "fingerprint fp-1 already in #5")),
    ("equal activity: lower id wins", DEFAULTS, HIGH,
     [incident(9, last_active="04:30", fingerprints=["fp-1"]),
      incident(6, last_active="04:30", labels=[PROD])],
     Link(6, "auto_link", "service=checkout, environment=prod as in #6")),
    ("newer but not matching is ignored", DEFAULTS, HIGH,
     [incident(3, last_active="02:00", fingerprints=["fp-1"]),
      incident(8, last_active="04:59", labels=[STAGING])],
     Link(3, "auto_link", "fingerprint fp-1 already in #3")),
    ("severity low is not auto_link's", DEFAULTS, alert(severity="low", labels=PROD),
     [incident(7, fingerprints=["fp-1"], labels=[PROD])],
     NoAction("no rule applies")),
    ("disabled: auto_create dedup links within 1h", NO_LINK, HIGH,
     [incident(7, last_active="04:30", fingerprints=["fp-1"])],
     Link(7, "auto_create.dedup", "fingerprint fp-1 already in #7")),
    ("disabled: 3h old incident is not joined", NO_LINK, HIGH,
     [incident(7, last_active="02:00", fingerprints=["fp-1"])],
     auto_open(HIGH)),
    ("disabled, medium: aggregation", NO_LINK, alert(labels=PROD),
     [incident(7, fingerprints=["fp-1"])],
     new_group("checkout:prod")),
]


@pytest.mark.parametrize("rules, facts, incidents, expected", **cases(AUTO_LINK))
def test_auto_link(rules, facts, incidents, expected):
    assert decide(facts, incidents, {}, rules) == expected


# ---------------------------------------------------------------- window edges
# The alert fires at 05:00; "exactly" = last activity one window before it.

WINDOW_EDGES = [
    ("auto_link 4h: exactly", DEFAULTS, "01:00:00", Link(7, "auto_link", "fingerprint fp-1 already in #7")),
    ("auto_link 4h: 1s more", DEFAULTS, "00:59:59", auto_open(HIGH)),
    ("dedup 1h: exactly", NO_LINK, "04:00:00", Link(7, "auto_create.dedup", "fingerprint fp-1 already in #7")),
    ("dedup 1h: 1s more", NO_LINK, "03:59:59", auto_open(HIGH)),
]


@pytest.mark.parametrize("rules, last_active, expected", **cases(WINDOW_EDGES))
def test_window_edge(rules, last_active, expected):
    assert decide(HIGH, [incident(7, last_active=last_active, fingerprints=["fp-1"])], {}, rules) == expected


# ---------------------------------------------------------------- auto_create

CRITICAL = alert(severity="critical", title="Checkout down", fingerprint="abc123", labels=PROD)
SYNTHETIC = alert(severity="critical", source="synthetic-monitors", labels=PROD)

AUTO_CREATE = [
    ("opens [Auto] with the alert's severity", DEFAULTS, CRITICAL,
     Open(rule="auto_create", title="[Auto] Checkout down", severity="critical",
          summary="Automatically created from alert: abc123", aggregation_key=None,
          alert_ids=(1,), opened_at=t("05:00"), reason=AUTO_REASON)),
    ("source_not_in: synthetic monitors aggregate instead", DEFAULTS, SYNTHETIC, new_group("checkout:prod")),
    ("source_not_in: load tests aggregate instead", DEFAULTS,
     alert(severity="high", source="load-tests", labels=PROD), new_group("checkout:prod")),
    ("medium is not auto_create's", DEFAULTS, alert(labels=PROD), new_group("checkout:prod")),
    ("disabled: aggregation instead", NO_CREATE, CRITICAL, new_group("checkout:prod")),
    ("auto_link and auto_create disabled", NEITHER, CRITICAL, new_group("checkout:prod")),
]


@pytest.mark.parametrize("rules, facts, expected", **cases(AUTO_CREATE))
def test_auto_create(rules, facts, expected):
    assert decide(facts, [], {}, rules) == expected


# ---------------------------------------------------------------- aggregation

FIRST = alert(1, fingerprint="fp-1", severity="critical", source="synthetic-monitors", labels=PROD, at="05:00")
SECOND = alert(2, fingerprint="fp-2", severity="medium", labels=PROD, at="05:02")
PENDING = group(11, key="checkout:prod", started="05:00", expires="05:05", members=[FIRST])
INFRA = dict(source="prometheus", severity="low", labels=NODE)


def aggregated(ids, severity="critical", at="05:02", key="checkout:prod", group_id=11,
               rule="service-alerts", service="checkout", reason=None) -> Open:
    n = len(ids)
    return Open(rule=f"aggregation:{rule}", title=f"[Aggregated] {service}: {n} related alerts",
                severity=severity, summary=f"Aggregated from {n} alerts", aggregation_key=key,
                alert_ids=tuple(ids), opened_at=t(at), reason=reason or f"{n} alerts for {key} within 0:05:00",
                group_id=group_id)


AGGREGATION = [
    # which rule, which key
    ("first rule in file order wins", alert(labels={**PROD, **NODE, "deployment_id": "d-42"},
                                            source="prometheus"), {},
     new_group("checkout:prod")),
    ("second rule when the first does not hold", alert(**INFRA), {},
     new_group("n1:dc1", minutes=3, of=3, rule="infrastructure-alerts")),
    ("missing label is unknown", alert(labels={"service": "checkout"}), {},
     new_group("checkout:unknown")),
    ("no labels at all", alert(), {},
     new_group("unknown:unknown")),
    ("no rule applies", alert(severity="low", source="grafana", labels={**PROD, "node": "n1"}), {},
     NoAction("no rule applies")),
    # minAlerts
    ("minAlerts reached opens with the highest severity", SECOND, groups_by_key(PENDING),
     Open(rule="aggregation:service-alerts", title="[Aggregated] checkout: 2 related alerts",
          severity="critical", summary="Aggregated from 2 alerts", aggregation_key="checkout:prod",
          alert_ids=(1, 2), opened_at=t("05:02"), reason="2 alerts for checkout:prod within 0:05:00",
          group_id=11)),
    ("below minAlerts joins the group, keeping its window",
     alert(2, **INFRA, at="05:02"),
     groups_by_key(group(12, rule="infrastructure-alerts", key="n1:dc1", started="05:00", expires="05:03",
                         members=[alert(1, **INFRA)])),
     Pend("infrastructure-alerts", "n1:dc1", 12, t("05:00"), t("05:03"), "2 of 3 alerts for n1:dc1")),
    ("group of another key is not joined", alert(2, labels=STAGING, at="05:02"), groups_by_key(PENDING),
     new_group("checkout:staging", at="05:02")),
    ("minAlerts 1 opens at once", alert(severity="low", labels={"service": "checkout", "deployment_id": "d-42"}),
     {}, aggregated([1], severity="low", at="05:00", key="d-42", group_id=None, rule="deployment-alerts",
                    reason="minAlerts 1 for d-42")),
    ("minAlerts 1 without a service label", alert(severity="low", labels={"deployment_id": "d-42"}),
     {}, aggregated([1], severity="low", at="05:00", key="d-42", group_id=None, rule="deployment-alerts",
                    service="Unknown Service", reason="minAlerts 1 for d-42")),
    # the group window's edge
    ("exactly at expires_at joins", alert(2, labels=PROD, at="05:05:00"), groups_by_key(PENDING),
     aggregated([1, 2], at="05:05:00")),
    ("1s past expires_at starts a new group", alert(2, labels=PROD, at="05:05:01"), groups_by_key(PENDING),
     new_group("checkout:prod", at="05:05:01")),
]


@pytest.mark.parametrize("facts, groups, expected", **cases(AGGREGATION))
def test_aggregation(facts, groups, expected):
    assert decide(facts, [], groups, DEFAULTS) == expected


def test_aggregated_members_keep_their_order():
    infra = dict(source="prometheus", labels={**NODE, "service": "db"})
    pending = group(12, rule="infrastructure-alerts", key="n1:dc1", expires="05:03",
                    members=[alert(5, severity="info", **infra), alert(3, severity="low", **infra)])
    last = alert(4, severity="info", source="node-exporter", labels=NODE, at="05:01")
    assert decide(last, [], groups_by_key(pending), DEFAULTS) == aggregated(
        [5, 3, 4], severity="low", at="05:01", key="n1:dc1", group_id=12, rule="infrastructure-alerts",
        service="db", reason="3 alerts for n1:dc1 within 0:03:00")


# an open incident with the alert's aggregation key, within auto_link's correlation window

SAME_KEY = [
    ("joined", alert(labels=PROD), [incident(9, key="checkout:prod", last_active="01:00")], {},
     Link(9, "aggregation:service-alerts", "aggregation key checkout:prod of #9")),
    ("joined instead of its pending group", SECOND, [incident(9, key="checkout:prod", last_active="05:01")],
     groups_by_key(PENDING),
     Link(9, "aggregation:service-alerts", "aggregation key checkout:prod of #9")),
    ("the most recent of two", alert(labels=PROD),
     [incident(9, key="checkout:prod", last_active="02:00"), incident(4, key="checkout:prod", last_active="03:00")],
     {}, Link(4, "aggregation:service-alerts", "aggregation key checkout:prod of #4")),
    ("equal activity: lower id wins", alert(labels=PROD),
     [incident(9, key="checkout:prod", last_active="03:00"), incident(4, key="checkout:prod", last_active="03:00")],
     {}, Link(4, "aggregation:service-alerts", "aggregation key checkout:prod of #4")),
    ("low severity joins a deployment's incident", alert(severity="low", labels={"deployment_id": "d-42"}),
     [incident(9, key="d-42")], {},
     Link(9, "aggregation:deployment-alerts", "aggregation key d-42 of #9")),
    ("4h and 1s old: not joined", alert(labels=PROD),
     [incident(9, key="checkout:prod", last_active="00:59:59")], {},
     new_group("checkout:prod")),
    ("other key: not joined", alert(labels=PROD), [incident(9, key="checkout:staging")], {},
     new_group("checkout:prod")),
]


@pytest.mark.parametrize("facts, incidents, groups, expected", **cases(SAME_KEY))
def test_open_incident_with_the_same_aggregation_key(facts, incidents, groups, expected):
    assert decide(facts, incidents, groups, DEFAULTS) == expected


# ------------------------------------------------------------------- expired

EARLY = group(2, expires="05:03")
LATE_A = group(1, key="a", expires="05:05")
LATE_B = group(3, key="b", expires="05:05")
LATER = group(4, key="c", expires="05:10")


@pytest.mark.parametrize("now, expected", [
    ("05:02:59", []),
    ("05:03:00", []),
    ("05:03:01", [EARLY]),
    ("05:05:00", [EARLY]),
    ("05:05:01", [EARLY, LATE_A, LATE_B]),
    ("06:00:00", [EARLY, LATE_A, LATE_B, LATER]),
], ids=["before all", "at first expiry", "1s after first", "at second expiry", "1s after second", "all"])
def test_expired_strictly_before_now_in_expiry_order(now, expected):
    assert expired([LATER, LATE_B, EARLY, LATE_A], t(now)) == expected


# --------------------------------------------------------------------- flush

DROP_RULES = rules_from_yaml("", """
rules:
  - {name: service-alerts, groupBy: [label:service, label:environment], timeWindow: 5m,
     minAlerts: 2, onExpiry: drop}
""")
LONE = group(11, key="checkout:prod", started="05:00", expires="05:05",
             members=[alert(1, severity="low", labels=PROD), alert(2, severity="high", labels=PROD)])
WHY = "window ended with 2 alert(s) for checkout:prod"

FLUSH = [
    ("onExpiry open (the default)", DEFAULTS, LONE,
     aggregated([1, 2], severity="high", at="05:05", reason=WHY)),
    ("onExpiry drop", DROP_RULES, LONE, Drop(11, WHY)),
    ("rule removed from the config still opens", DEFAULTS, replace(LONE, rule="gone"),
     aggregated([1, 2], severity="high", at="05:05", rule="gone", reason=WHY)),
    ("rule removed, drop rules loaded", DROP_RULES, replace(LONE, rule="gone"),
     aggregated([1, 2], severity="high", at="05:05", rule="gone", reason=WHY)),
]


@pytest.mark.parametrize("rules, pending, expected", **cases(FLUSH))
def test_flush(rules, pending, expected):
    assert flush(pending, rules) == expected
