"""Small builders for the pure rule and decision tests: alerts, incidents, groups, rules.

Times are written as "HH:MM[:SS]" on 2026-01-01 (UTC), or as a full ISO time.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

import yaml

from service.decide import GroupFacts, IncidentFacts
from service.rules import (AlertFacts, Rules, parse_aggregation_rules, parse_condition,
                           parse_incident_rules)
from service.settings import DEFAULT_SEVERITY_MAP

UTC = timezone.utc
DAY = "2026-01-01"


def t(when: str | datetime) -> datetime:
    """`t("05:00")`, `t("05:00:01")`, `t("2026-01-02T00:00:00Z")` -> an aware UTC datetime."""
    if isinstance(when, datetime):
        return when
    text = when if "T" in when else f"{DAY}T{when}"
    return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=UTC)


def alert(id: int = 1, *, fingerprint: str = "fp-1", title: str = "High latency",
          source: str = "alertmanager", severity: str = "medium",
          labels: Mapping[str, str] | None = None, at: str | datetime = "05:00") -> AlertFacts:
    return AlertFacts(id=id, fingerprint=fingerprint, title=title, source=source,
                      severity=severity, fired_at=t(at), labels=dict(labels or {}))


def incident(id: int = 7, *, last_active: str | datetime = "04:00", fingerprints: Sequence[str] = (),
             labels: Sequence[Mapping[str, str]] = (), key: str | None = None) -> IncidentFacts:
    """An active incident; `labels` are the label sets of its linked alerts."""
    return IncidentFacts(id=id, aggregation_key=key, last_activity_at=t(last_active),
                         fingerprints=frozenset(fingerprints), label_sets=tuple(dict(s) for s in labels))


def group(id: int = 11, *, rule: str = "service-alerts", key: str = "checkout:prod",
          started: str | datetime = "05:00", expires: str | datetime = "05:05",
          members: Sequence[AlertFacts] = ()) -> GroupFacts:
    return GroupFacts(id=id, rule=rule, group_key=key, started_at=t(started), expires_at=t(expires),
                      members=tuple(members))


def groups_by_key(*gs: GroupFacts) -> dict[tuple[str, str], GroupFacts]:
    """What `decide` is given: pending groups by (rule name, group key)."""
    return {(g.rule, g.group_key): g for g in gs}


def condition(text: str, words: Mapping[str, str] = DEFAULT_SEVERITY_MAP):
    """One condition from its YAML text, e.g. `condition("severity_in: [critical]")`."""
    return parse_condition(yaml.safe_load(text), "test", words)


def rules_from_yaml(incident_yaml: str = "", aggregation_yaml: str = "",
                    words: Mapping[str, str] = DEFAULT_SEVERITY_MAP) -> Rules:
    """Rules from the two files' texts, without touching the disk."""
    auto_create, auto_link = parse_incident_rules(yaml.safe_load(incident_yaml), words)
    aggregation = parse_aggregation_rules(yaml.safe_load(aggregation_yaml), words)
    return Rules(auto_create, auto_link, aggregation, version="test")
