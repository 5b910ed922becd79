"""Incident and aggregation rules, read from the seed's two YAML files as they are.

`incident-rules.yaml` writes conditions as one-key mappings (`- severity_in: [...]`),
`aggregation-rules.yaml` as typed mappings (`- type: severity_in, values: [...]`);
both forms are accepted in both files. Each condition is a small named predicate
over plain alert facts, so a rule reads like the YAML it came from.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from service.domain import SEVERITY_ORDER

INCIDENT_RULES_FILE = "incident-rules.yaml"
AGGREGATION_RULES_FILE = "aggregation-rules.yaml"


def seed_rules_dir() -> Path:
    """The seed design's two rule files, shipped for comparison (`--rules` this folder)."""
    return Path(str(resources.files("service").joinpath("defaults", "seed")))


class RulesError(ValueError):
    """A rules file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class AlertFacts:
    """What rules and decisions see of an alert."""

    id: int
    fingerprint: str
    title: str
    source: str
    severity: str
    fired_at: datetime
    labels: Mapping[str, str]

    def field(self, name: str) -> str | None:
        """A match or group-by field: an alert attribute, or `label:x` / a bare label name."""
        if name.startswith("label:"):
            return self.labels.get(name[len("label:"):])
        if name in ("fingerprint", "source", "severity", "title"):
            return getattr(self, name)
        return self.labels.get(name)


# ------------------------------------------------------------------ conditions

def _severity_in(alert: AlertFacts, c: Condition) -> bool:
    return alert.severity in c.values


def _source_in(alert: AlertFacts, c: Condition) -> bool:
    return alert.source in c.values


def _source_not_in(alert: AlertFacts, c: Condition) -> bool:
    return alert.source not in c.values


def _label_equals(alert: AlertFacts, c: Condition) -> bool:
    return c.key is not None and alert.labels.get(c.key) == c.value


def _label_exists(alert: AlertFacts, c: Condition) -> bool:
    return c.key is not None and c.key in alert.labels


PREDICATES: dict[str, Callable[[AlertFacts, Condition], bool]] = {
    "severity_in": _severity_in,
    "source_in": _source_in,
    "source_not_in": _source_not_in,
    "label_equals": _label_equals,
    "label_exists": _label_exists,
}


@dataclass(frozen=True)
class Condition:
    kind: str
    values: frozenset[str] = frozenset()
    key: str | None = None
    value: str | None = None

    def matches(self, alert: AlertFacts) -> bool:
        return PREDICATES[self.kind](alert, self)

    def __str__(self) -> str:
        if self.kind in ("label_equals",):
            return f"{self.kind} {self.key}={self.value}"
        if self.kind == "label_exists":
            return f"{self.kind} {self.key}"
        return f"{self.kind} [{', '.join(sorted(self.values))}]"


def all_hold(conditions: Sequence[Condition], alert: AlertFacts) -> bool:
    return all(c.matches(alert) for c in conditions)


# ----------------------------------------------------------------------- rules

@dataclass(frozen=True)
class AutoCreate:
    enabled: bool
    conditions: tuple[Condition, ...]
    dedup_window: timedelta
    match_fields: tuple[str, ...]


@dataclass(frozen=True)
class AutoLink:
    enabled: bool
    conditions: tuple[Condition, ...]
    correlation_window: timedelta
    match_fields: tuple[str, ...]


@dataclass(frozen=True)
class AggregationRule:
    name: str
    description: str
    conditions: tuple[Condition, ...]
    group_by: tuple[str, ...]
    time_window: timedelta
    min_alerts: int
    # what a group that missed min_alerts becomes when its window ends:
    # "open" an incident anyway (the seed's behaviour) or "drop" the group
    on_expiry: Literal["open", "drop"] = "open"

    def group_key(self, alert: AlertFacts) -> str:
        # as the seed: the group-by values joined by ':', a missing one is 'unknown'
        return ":".join(alert.field(f) or "unknown" for f in self.group_by)


@dataclass(frozen=True)
class Rules:
    auto_create: AutoCreate
    auto_link: AutoLink
    aggregation: tuple[AggregationRule, ...]
    # a digest of both files: stamped on every link the rules decide
    version: str

    def aggregation_rule(self, name: str) -> AggregationRule | None:
        return next((r for r in self.aggregation if r.name == name), None)

    def first_aggregation_rule(self, alert: AlertFacts) -> AggregationRule | None:
        return next((r for r in self.aggregation if all_hold(r.conditions, alert)), None)


# ---------------------------------------------------------------------- parsing

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any, where: str, *, default_unit: str = "s") -> timedelta:
    """'90s', '5m', '1h', '1d' (or a bare number in `default_unit`)."""
    if isinstance(value, bool) or value is None:
        raise RulesError(f"{where}: expected a duration like 5m or 1h, got {value!r}")
    m = _DURATION.match(str(value))
    if not m:
        raise RulesError(f"{where}: expected a duration like 5m or 1h, got {value!r}")
    seconds = float(m.group(1)) * _UNITS[m.group(2) or default_unit]
    return timedelta(seconds=seconds)


def _mapping(raw: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    """A mapping with only known keys: a typo fails at load, not silently at 3 a.m."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: expected a mapping, got {raw!r}")
    if unknown := sorted(set(map(str, raw)) - allowed):
        raise RulesError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
    return raw


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise RulesError(f"{where}: true or false, got {value!r}")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RulesError(f"{where}: expected text (quote it in YAML), got {value!r}")
    return value


def _string_list(values: Any, where: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise RulesError(f"{where}: expected a list of strings, got {values!r}")
    return values


def _normalise_severities(values: Any, where: str, words: Mapping[str, str]) -> frozenset[str]:
    out = set()
    for v in _string_list(values, where):
        level = words.get(v.lower(), v.lower())
        if level not in SEVERITY_ORDER:
            raise RulesError(f"{where}: unknown severity {v!r}")
        out.add(level)
    return frozenset(out)


_CONDITION_KEYS = {"severity_in": {"values"}, "source_in": {"values"}, "source_not_in": {"values"},
                   "label_exists": {"key"}, "label_equals": {"key", "value"}}


def parse_condition(raw: Any, where: str, words: Mapping[str, str]) -> Condition:
    """`{severity_in: [...]}` (incident-rules style) or `{type: severity_in, values: [...]}`
    (aggregation-rules style); label_exists takes a label name, label_equals a key and a value."""
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: a condition is a mapping, got {raw!r}")
    if "type" in raw:
        kind = _string(raw["type"], f"{where}.type")
        if kind not in PREDICATES:
            raise RulesError(f"{where}: unknown condition {kind!r}; known: {', '.join(PREDICATES)}")
        spec = _mapping(raw, where, {"type"} | _CONDITION_KEYS[kind])
        if missing := sorted(_CONDITION_KEYS[kind] - set(spec)):
            raise RulesError(f"{where}: {kind} needs {', '.join(missing)}")
    elif len(raw) == 1:
        kind, arg = next(iter(raw.items()))
        if kind not in PREDICATES:
            raise RulesError(f"{where}: unknown condition {kind!r}; known: {', '.join(PREDICATES)}")
        if kind == "label_equals":
            spec = _mapping(arg, f"{where}.label_equals", {"key", "value"})
            if missing := sorted({"key", "value"} - set(spec)):
                raise RulesError(f"{where}: label_equals needs {', '.join(missing)}")
        else:
            spec = {"key": arg} if kind == "label_exists" else {"values": arg}
    else:
        raise RulesError(f"{where}: a condition has one key (e.g. severity_in) or a 'type', got {raw!r}")

    if kind == "severity_in":
        return Condition(kind, _normalise_severities(spec["values"], f"{where}.values", words))
    if kind in ("source_in", "source_not_in"):
        return Condition(kind, frozenset(_string_list(spec["values"], f"{where}.values")))
    if kind == "label_exists":
        return Condition(kind, key=_string(spec["key"], f"{where}.key"))
    value = spec["value"]
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # `value: 8080` means the text 8080; true/1.10 are ambiguous and refused
    return Condition(kind, key=_string(spec["key"], f"{where}.key"), value=_string(value, f"{where}.value"))


def _conditions(raw: Any, where: str, words: Mapping[str, str]) -> tuple[Condition, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise RulesError(f"{where}: conditions is a list")
    return tuple(parse_condition(c, f"{where}[{i}]", words) for i, c in enumerate(raw))


def parse_incident_rules(doc: Any, words: Mapping[str, str], where: str = INCIDENT_RULES_FILE
                         ) -> tuple[AutoCreate, AutoLink]:
    doc = _mapping(doc, where, {"auto_create", "auto_link"})
    ac = _mapping(doc.get("auto_create"), f"{where}: auto_create",
                  {"enabled", "conditions", "dedup_window", "match_fields"})
    al = _mapping(doc.get("auto_link"), f"{where}: auto_link",
                  {"enabled", "conditions", "correlation_window", "match_fields"})
    match_fields = tuple(_string_list(ac.get("match_fields", ["fingerprint"]), f"{where}: auto_create.match_fields"))
    auto_create = AutoCreate(
        enabled=_bool(ac.get("enabled", False), f"{where}: auto_create.enabled"),
        conditions=_conditions(ac.get("conditions"), f"{where}: auto_create.conditions", words),
        dedup_window=parse_duration(ac.get("dedup_window", "1h"), f"{where}: auto_create.dedup_window"),
        match_fields=match_fields,
    )
    auto_link = AutoLink(
        enabled=_bool(al.get("enabled", False), f"{where}: auto_link.enabled"),
        conditions=_conditions(al.get("conditions"), f"{where}: auto_link.conditions", words),
        correlation_window=parse_duration(al.get("correlation_window", "4h"),
                                          f"{where}: auto_link.correlation_window"),
        # auto_link matches on the same fields as auto_create unless it names its own
        match_fields=tuple(_string_list(al.get("match_fields", list(match_fields)),
                                        f"{where}: auto_link.match_fields")),
    )
    return auto_create, auto_link


_RULE_KEYS = {"name", "description", "conditions", "groupBy", "timeWindow", "minAlerts", "onExpiry"}


def parse_aggregation_rules(doc: Any, words: Mapping[str, str], where: str = AGGREGATION_RULES_FILE
                            ) -> tuple[AggregationRule, ...]:
    raw_rules = _mapping(doc, where, {"rules"}).get("rules", [])
    if not isinstance(raw_rules, list):
        raise RulesError(f"{where}: expected a mapping with a list 'rules'")
    rules, names = [], set()
    for i, raw in enumerate(raw_rules):
        at = f"{where}: rules[{i}]"
        r = _mapping(raw, at, _RULE_KEYS)
        if not isinstance(r.get("name"), str):
            raise RulesError(f"{at}: every rule needs a name")
        if r["name"] in names:
            raise RulesError(f"{at}: duplicate rule name {r['name']!r}")
        names.add(r["name"])
        group_by = _string_list(r.get("groupBy"), f"{at}.groupBy")
        min_alerts = r.get("minAlerts", 1)
        if isinstance(min_alerts, bool) or not isinstance(min_alerts, int) or min_alerts < 1:
            raise RulesError(f"{at}.minAlerts: a whole number >= 1, got {min_alerts!r}")
        on_expiry = r.get("onExpiry", "open")
        if on_expiry not in ("open", "drop"):
            raise RulesError(f"{at}.onExpiry: 'open' or 'drop', got {on_expiry!r}")
        rules.append(AggregationRule(
            name=r["name"],
            description=str(r.get("description", "")),
            conditions=_conditions(r.get("conditions"), f"{at}.conditions", words),
            group_by=tuple(group_by),
            # timeWindow is in milliseconds, as in the seed
            time_window=parse_duration(r.get("timeWindow"), f"{at}.timeWindow", default_unit="ms"),
            min_alerts=min_alerts,
            on_expiry=on_expiry,
        ))
    return tuple(rules)


def load_rules(rules_dir: Path | None, words: Mapping[str, str]) -> Rules:
    """Read both files from `rules_dir`, or the shipped defaults (the seed's files)."""
    texts = {}
    for name in (INCIDENT_RULES_FILE, AGGREGATION_RULES_FILE):
        if rules_dir is not None:
            path = Path(rules_dir) / name
            if not path.is_file():
                raise RulesError(f"{path}: no such rules file")
            texts[name] = path.read_text()
        else:
            texts[name] = resources.files("service").joinpath("defaults", name).read_text()
    docs = {}
    for name, text in texts.items():
        try:
            docs[name] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RulesError(f"{name}: not valid YAML: {exc}") from exc
    auto_create, auto_link = parse_incident_rules(docs[INCIDENT_RULES_FILE], words)
    digest = hashlib.sha256("\0".join(texts[n] for n in sorted(texts)).encode()).hexdigest()[:12]
    return Rules(auto_create, auto_link, parse_aggregation_rules(docs[AGGREGATION_RULES_FILE], words),
                 version=f"rules-{digest}")
