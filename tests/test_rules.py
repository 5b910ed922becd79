"""Rules: conditions in both YAML forms, loading the shipped defaults, durations,
errors that name the file and field, the version stamp."""
import re
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from factories import alert, condition
from service.rules import (AggregationRule, AutoCreate, AutoLink, Condition, RulesError, all_hold,
                           load_rules, parse_duration, seed_rules_dir)
from service.settings import DEFAULT_SEVERITY_MAP

WORDS = DEFAULT_SEVERITY_MAP
DEFAULTS_DIR = seed_rules_dir()  # the seed design's files: what the rules grammar was written for

# ------------------------------------------------------------------ conditions

CHECKOUT = {"service": "checkout", "node": "n1"}


CONDITIONS = [
    # severity_in, and rule words normalised through the severity map
    ("severity_in: [critical]",                   alert(severity="critical"), True),
    ("severity_in: [critical]",                   alert(severity="high"), False),
    ("{type: severity_in, values: [critical]}",   alert(severity="critical"), True),
    ("{type: severity_in, values: [critical]}",   alert(severity="high"), False),
    ("severity_in: [warning]",                    alert(severity="medium"), True),
    ("severity_in: [Warning, P1]",                alert(severity="critical"), True),
    ("{type: severity_in, values: [warning]}",    alert(severity="medium"), True),
    ("{type: severity_in, values: [warning]}",    alert(severity="low"), False),
    # source_in / source_not_in
    ("source_in: [prometheus, node-exporter]",    alert(source="prometheus"), True),
    ("source_in: [prometheus, node-exporter]",    alert(source="grafana"), False),
    ("{type: source_in, values: [prometheus]}",   alert(source="prometheus"), True),
    ("{type: source_in, values: [prometheus]}",   alert(source="grafana"), False),
    ("source_not_in: [load-tests]",               alert(source="grafana"), True),
    ("source_not_in: [load-tests]",               alert(source="load-tests"), False),
    ("{type: source_not_in, values: [load-tests]}", alert(source="grafana"), True),
    ("{type: source_not_in, values: [load-tests]}", alert(source="load-tests"), False),
    # label_equals: {type: label_equals, key, value} and {label_equals: {key, value}}
    ("{type: label_equals, key: service, value: checkout}", alert(labels=CHECKOUT), True),
    ("{type: label_equals, key: service, value: payments}", alert(labels=CHECKOUT), False),
    ("{type: label_equals, key: service, value: checkout}", alert(labels={}), False),
    ("{label_equals: {key: service, value: checkout}}",     alert(labels=CHECKOUT), True),
    ("{label_equals: {key: service, value: payments}}",     alert(labels=CHECKOUT), False),
    ("{label_equals: {key: port, value: 8080}}",            alert(labels={"port": "8080"}), True),
    # label_exists
    ("label_exists: node",                        alert(labels=CHECKOUT), True),
    ("label_exists: node",                        alert(labels={"service": "checkout"}), False),
    ("{type: label_exists, key: node}",           alert(labels=CHECKOUT), True),
    ("{type: label_exists, key: node}",           alert(labels={}), False),
]


@pytest.mark.parametrize("yaml_text, facts, expected", CONDITIONS,
                         ids=[f"{y} -> {e}" for y, _, e in CONDITIONS])
def test_condition(yaml_text, facts, expected):
    assert condition(yaml_text).matches(facts) is expected


@pytest.mark.parametrize("yaml_text, expected", [
    ("severity_in: [Warning, P1, high]",
     Condition("severity_in", frozenset({"medium", "critical", "high"}))),
    ("{type: source_not_in, values: [load-tests]}", Condition("source_not_in", frozenset({"load-tests"}))),
    ("{label_equals: {key: port, value: 8080}}",    Condition("label_equals", key="port", value="8080")),
    ("label_exists: node",                          Condition("label_exists", key="node")),
], ids=["severity words", "typed source_not_in", "label_equals value as text", "label_exists"])
def test_parsed_condition(yaml_text, expected):
    assert condition(yaml_text) == expected


ALL_THREE = [condition("severity_in: [critical, high]"), condition("source_not_in: [load-tests]"),
             condition("label_exists: service")]


@pytest.mark.parametrize("conditions, facts, expected", [
    (ALL_THREE, alert(severity="high", source="grafana", labels={"service": "s"}), True),
    (ALL_THREE, alert(severity="medium", source="grafana", labels={"service": "s"}), False),
    (ALL_THREE, alert(severity="high", source="load-tests", labels={"service": "s"}), False),
    (ALL_THREE, alert(severity="high", source="grafana", labels={}), False),
    ([], alert(), True),
], ids=["all hold", "severity fails", "source fails", "label fails", "no conditions hold"])
def test_all_hold(conditions, facts, expected):
    assert all_hold(conditions, facts) is expected


# ------------------------------------------------------------- the defaults

def test_shipped_defaults_leave_grouping_to_the_scorer():
    rules = load_rules(None, WORDS)
    assert (rules.auto_create.enabled, rules.auto_create.match_fields, rules.auto_link.enabled,
            [(r.name, r.group_by, r.min_alerts) for r in rules.aggregation]) == (
        True, (), False, [("deployment-alerts", ("label:deployment_id",), 1)])


def test_seed_rules_load_as_the_seed_wrote_them():
    rules = load_rules(seed_rules_dir(), WORDS)
    match_fields = ("fingerprint", "service", "environment")
    assert (rules.auto_create, rules.auto_link) == (
        AutoCreate(enabled=True,
                   conditions=(Condition("severity_in", frozenset({"critical", "high"})),
                               Condition("source_not_in", frozenset({"synthetic-monitors", "load-tests"}))),
                   dedup_window=timedelta(hours=1), match_fields=match_fields),
        AutoLink(enabled=True,
                 conditions=(Condition("severity_in", frozenset({"critical", "high", "medium"})),),
                 correlation_window=timedelta(hours=4), match_fields=match_fields),
    )
    assert rules.aggregation == (
        AggregationRule(
            "service-alerts", "Group alerts by service within time window",
            (Condition("severity_in", frozenset({"critical", "high", "medium"})),),
            ("label:service", "label:environment"), timedelta(minutes=5), 2, "open"),
        AggregationRule(
            "infrastructure-alerts", "Group infrastructure alerts by node",
            (Condition("source_in", frozenset({"prometheus", "node-exporter"})),
             Condition("label_exists", key="node")),
            ("label:node", "label:datacenter"), timedelta(minutes=3), 3, "open"),
        AggregationRule(
            "deployment-alerts", "Group alerts during deployments",
            (Condition("label_exists", key="deployment_id"),),
            ("label:deployment_id",), timedelta(minutes=10), 1, "open"),
    )


# ---------------------------------------------------------------- durations

@pytest.mark.parametrize("value, default_unit, expected", [
    ("90s", "s", timedelta(seconds=90)),
    ("5m", "s", timedelta(minutes=5)),
    ("1h", "s", timedelta(hours=1)),
    ("1d", "s", timedelta(days=1)),
    ("1.5h", "s", timedelta(minutes=90)),
    (" 5m ", "s", timedelta(minutes=5)),
    (3600, "s", timedelta(hours=1)),
    (300000, "ms", timedelta(minutes=5)),
    ("300000", "ms", timedelta(minutes=5)),
    ("5m", "ms", timedelta(minutes=5)),
], ids=["90s", "5m", "1h", "1d", "1.5h", "spaces", "bare seconds", "timeWindow ms", "ms as text",
        "unit beats default"])
def test_duration(value, default_unit, expected):
    assert parse_duration(value, "here", default_unit=default_unit) == expected


@pytest.mark.parametrize("value", ["1 hour", "-5m", "5x", "", None, True, [5]],
                         ids=["words", "negative", "unknown unit", "empty", "missing", "bool", "list"])
def test_bad_duration(value):
    with pytest.raises(RulesError) as exc:
        parse_duration(value, "incident-rules.yaml: auto_create.dedup_window")
    assert str(exc.value) == (f"incident-rules.yaml: auto_create.dedup_window: "
                              f"expected a duration like 5m or 1h, got {value!r}")


# ------------------------------------------------------------------- loading

INCIDENT = """
auto_create: {enabled: true, conditions: [severity_in: [critical]], dedup_window: 90s}
auto_link: {enabled: true, correlation_window: 1d}
"""
AGGREGATION = """
rules:
  - {name: a, groupBy: [label:service], timeWindow: 60000, minAlerts: 2}
"""


def write_rules(folder: Path, incident: str | None = INCIDENT, aggregation: str | None = AGGREGATION) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("incident-rules.yaml", incident), ("aggregation-rules.yaml", aggregation)):
        if text is not None:
            (folder / name).write_text(text)
    return folder


def test_load_rules_from_a_folder(tmp_path):
    rules = load_rules(write_rules(tmp_path), WORDS)
    assert (rules.auto_create.dedup_window, rules.auto_link.correlation_window,
            rules.auto_link.match_fields, rules.aggregation) == (
        timedelta(seconds=90), timedelta(days=1), ("fingerprint",),
        (AggregationRule("a", "", (), ("label:service",), timedelta(minutes=1), 2, "open"),))


def test_empty_files_load_as_nothing_enabled(tmp_path):
    rules = load_rules(write_rules(tmp_path, incident="", aggregation=""), WORDS)
    assert (rules.auto_create.enabled, rules.auto_link.enabled, rules.aggregation) == (False, False, ())


def agg_rule(**fields) -> str:
    base = {"name": "a", "groupBy": "[label:service]", "timeWindow": "60000"}
    base.update(fields)
    return "rules:\n  - {" + ", ".join(f"{k}: {v}" for k, v in base.items()) + "}\n"


ERRORS = [
    ("unknown condition",
     "auto_create: {conditions: [severity_over: high]}", AGGREGATION,
     "incident-rules.yaml: auto_create.conditions[0]: unknown condition 'severity_over'; "
     "known: severity_in, source_in, source_not_in, label_equals, label_exists"),
    ("unknown typed condition",
     INCIDENT, agg_rule(conditions="[{type: label_missing, key: node}]"),
     "aggregation-rules.yaml: rules[0].conditions[0]: unknown condition 'label_missing'; "
     "known: severity_in, source_in, source_not_in, label_equals, label_exists"),
    ("unknown severity word",
     "auto_link: {conditions: [severity_in: [high, urgent]]}", AGGREGATION,
     "incident-rules.yaml: auto_link.conditions[0].values: unknown severity 'urgent'"),
    ("unknown severity word, typed",
     INCIDENT, agg_rule(conditions="[{type: severity_in, values: [sev9]}]"),
     "aggregation-rules.yaml: rules[0].conditions[0].values: unknown severity 'sev9'"),
    ("label_equals without value",
     "auto_create: {conditions: [label_equals: {key: env}]}", AGGREGATION,
     "incident-rules.yaml: auto_create.conditions[0]: label_equals needs value"),
    ("label_exists without key",
     INCIDENT, agg_rule(conditions="[{type: label_exists}]"),
     "aggregation-rules.yaml: rules[0].conditions[0]: label_exists needs key"),
    ("bad dedup_window",
     "auto_create: {dedup_window: 1 hour}", AGGREGATION,
     "incident-rules.yaml: auto_create.dedup_window: expected a duration like 5m or 1h, got '1 hour'"),
    ("bad correlation_window",
     "auto_link: {correlation_window: 4 hours}", AGGREGATION,
     "incident-rules.yaml: auto_link.correlation_window: expected a duration like 5m or 1h, got '4 hours'"),
    ("bad timeWindow",
     INCIDENT, agg_rule(timeWindow="5 minutes"),
     "aggregation-rules.yaml: rules[0].timeWindow: expected a duration like 5m or 1h, got '5 minutes'"),
    ("missing timeWindow",
     INCIDENT, "rules: [{name: a, groupBy: [label:service]}]",
     "aggregation-rules.yaml: rules[0].timeWindow: expected a duration like 5m or 1h, got None"),
    ("minAlerts 0",
     INCIDENT, agg_rule(minAlerts=0),
     "aggregation-rules.yaml: rules[0].minAlerts: a whole number >= 1, got 0"),
    ("minAlerts 2.5",
     INCIDENT, agg_rule(minAlerts=2.5),
     "aggregation-rules.yaml: rules[0].minAlerts: a whole number >= 1, got 2.5"),
    ("duplicate rule name",
     INCIDENT, agg_rule() + "  - {name: a, groupBy: [label:node], timeWindow: 1000}\n",
     "aggregation-rules.yaml: rules[1]: duplicate rule name 'a'"),
    ("rule without name",
     INCIDENT, "rules: [{groupBy: [label:service], timeWindow: 1000}]",
     "aggregation-rules.yaml: rules[0]: every rule needs a name"),
    ("groupBy missing",
     INCIDENT, "rules: [{name: a, timeWindow: 1000}]",
     "aggregation-rules.yaml: rules[0].groupBy: expected a list of strings, got None"),
    ("bad onExpiry",
     INCIDENT, agg_rule(onExpiry="keep"),
     "aggregation-rules.yaml: rules[0].onExpiry: 'open' or 'drop', got 'keep'"),
    ("rules not a list",
     INCIDENT, "rules: {name: a}",
     "aggregation-rules.yaml: expected a mapping with a list 'rules'"),
    ("incident file a list",
     "[auto_create]", AGGREGATION,
     "incident-rules.yaml: expected a mapping, got ['auto_create']"),
    ("conditions not a list",
     "auto_link: {conditions: {severity_in: [high]}}", AGGREGATION,
     "incident-rules.yaml: auto_link.conditions: conditions is a list"),
]


@pytest.mark.parametrize("incident_yaml, aggregation_yaml, message",
                         [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_rules_error_names_file_and_field(tmp_path, incident_yaml, aggregation_yaml, message):
    with pytest.raises(RulesError) as exc:
        load_rules(write_rules(tmp_path, incident_yaml, aggregation_yaml), WORDS)
    assert str(exc.value) == message


@pytest.mark.parametrize("incident_yaml, aggregation_yaml, file", [
    ("auto_create: {enabled: true", AGGREGATION, "incident-rules.yaml"),
    (INCIDENT, "rules:\n  - name: a\n   bad: indent\n", "aggregation-rules.yaml"),
], ids=["incident file", "aggregation file"])
def test_invalid_yaml_names_the_file(tmp_path, incident_yaml, aggregation_yaml, file):
    with pytest.raises(RulesError, match=rf"^{re.escape(file)}: not valid YAML: "):
        load_rules(write_rules(tmp_path, incident_yaml, aggregation_yaml), WORDS)


@pytest.mark.parametrize("present, missing", [
    (["incident-rules.yaml"], "aggregation-rules.yaml"),
    (["aggregation-rules.yaml"], "incident-rules.yaml"),
    ([], "incident-rules.yaml"),
], ids=["no aggregation file", "no incident file", "empty folder"])
def test_folder_missing_a_file(tmp_path, present, missing):
    write_rules(tmp_path, incident=INCIDENT if "incident-rules.yaml" in present else None,
                aggregation=AGGREGATION if "aggregation-rules.yaml" in present else None)
    with pytest.raises(RulesError) as exc:
        load_rules(tmp_path, WORDS)
    assert str(exc.value) == f"{tmp_path / missing}: no such rules file"


def test_folder_that_does_not_exist(tmp_path):
    with pytest.raises(RulesError) as exc:
        load_rules(tmp_path / "nowhere", WORDS)
    assert str(exc.value) == f"{tmp_path / 'nowhere' / 'incident-rules.yaml'}: no such rules file"


# ------------------------------------------------------------- version stamp

def copy_defaults(folder: Path) -> Path:
    shutil.copytree(DEFAULTS_DIR, folder)
    return folder


def test_version_is_stable_for_the_same_files(tmp_path):
    copy = copy_defaults(tmp_path / "copy")
    versions = {load_rules(DEFAULTS_DIR, WORDS).version, load_rules(DEFAULTS_DIR, WORDS).version,
                load_rules(copy, WORDS).version}
    assert len(versions) == 1 and re.fullmatch(r"rules-[0-9a-f]{12}", versions.pop())


@pytest.mark.parametrize("file, edit", [
    ("incident-rules.yaml", lambda text: text.replace("dedup_window: 1h", "dedup_window: 2h")),
    ("aggregation-rules.yaml", lambda text: text.replace("minAlerts: 3", "minAlerts: 4")),
    ("aggregation-rules.yaml", lambda text: text + "\n# a comment\n"),
], ids=["incident rules changed", "aggregation rules changed", "comment added"])
def test_version_changes_when_a_file_changes(tmp_path, file, edit):
    folder = copy_defaults(tmp_path / "rules")
    before = load_rules(folder, WORDS).version
    path = folder / file
    changed = edit(path.read_text())
    assert changed != path.read_text()
    path.write_text(changed)
    assert load_rules(folder, WORDS).version != before


# -------------------------------------------------- files that must not load

BAD_FILES = [
    pytest.param("auto_create: {conditions: [{type: severity_in}]}", AGGREGATION,
                 id="typed severity_in without values"),
    pytest.param("auto_create: true", AGGREGATION,
                 id="auto_create not a mapping"),
    pytest.param("auto_create: {conditions: [{type: [severity_in]}]}", AGGREGATION,
                 id="condition type a list"),
    pytest.param('auto_create: {enabled: "false"}', AGGREGATION,
                 id="enabled as the string false"),
    pytest.param(INCIDENT, agg_rule(minAlerts="true"),
                 id="minAlerts true"),
    pytest.param(INCIDENT, agg_rule(minAlert=3),
                 id="typo minAlert"),
    pytest.param("auto_create: {enabled: true, dedup_windw: 10m}", AGGREGATION,
                 id="typo dedup_windw"),
]


@pytest.mark.parametrize("incident_yaml, aggregation_yaml", BAD_FILES)
def test_bad_file_is_a_rules_error(tmp_path, incident_yaml, aggregation_yaml):
    with pytest.raises(RulesError):
        load_rules(write_rules(tmp_path, incident_yaml, aggregation_yaml), WORDS)


@pytest.mark.parametrize("value", ["true", "1.10", "on"])
def test_label_equals_refuses_an_ambiguous_yaml_value(value):
    # YAML reads these as a bool or a float: which label text was meant is unclear, so quote it
    with pytest.raises(RulesError, match="quote it"):
        condition(f"{{label_equals: {{key: canary, value: {value}}}}}")
