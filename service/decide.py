"""The pure decision core: given one alert, the active incidents, the pending
aggregation groups and the rules, say what happens to the alert. No database,
no clock: every time compared is an alert's own (event time).

Order, as the spine asks: auto-link -> auto-create (with its dedup window) ->
aggregation. Each decision says why (`rule`, `reason`), and that is stored
with the link it makes.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.domain import highest_severity
from service.rules import AggregationRule, AlertFacts, Rules, all_hold


def label_name(field: str) -> str:
    return field.removeprefix("label:")


@dataclass(frozen=True)
class IncidentFacts:
    """What matching needs of an active incident: fingerprints and match-field
    label values of its linked alerts. The repository fills in only those that
    matter for the alert being decided (see `repository.active_incidents`)."""

    id: int
    aggregation_key: str | None
    last_activity_at: datetime
    fingerprints: frozenset[str] = frozenset()
    label_sets: tuple[Mapping[str, str], ...] = ()


@dataclass(frozen=True)
class GroupFacts:
    id: int
    rule: str
    group_key: str
    started_at: datetime
    expires_at: datetime
    members: tuple[AlertFacts, ...]


# ---------------------------------------------------------------- decisions

@dataclass(frozen=True)
class Scored:
    """The scorer's verdict on one candidate: an active incident or an unlinked alert."""

    incident_id: int | None
    alert_id: int | None
    score: float
    components: Mapping[str, float]  # each feature's share of the log-odds, and the raw features
    match_types: tuple[str, ...]
    title: str = ""      # of an alert candidate: what a pair incident is called
    severity: str = "info"

    def describe(self) -> str:
        target = f"#{self.incident_id}" if self.incident_id is not None else f"alert {self.alert_id}"
        return f"score {self.score:.2f} for {target} ({', '.join(self.match_types) or 'no single strong match'})"


@dataclass(frozen=True)
class Link:
    incident_id: int
    rule: str
    reason: str
    score: float | None = None
    components: Mapping[str, float] | None = None
    kind: str = "link"


@dataclass(frozen=True)
class Open:
    rule: str
    title: str
    severity: str
    summary: str
    aggregation_key: str | None
    alert_ids: tuple[int, ...]
    opened_at: datetime
    reason: str
    group_id: int | None = None  # the pending group this incident closes
    score: float | None = None   # a pair the scorer related: its score, stamped on the links
    components: Mapping[str, float] | None = None
    kind: str = "open"


@dataclass(frozen=True)
class Pend:
    rule: str  # the aggregation rule's name
    group_key: str
    group_id: int | None  # None: start a new group
    started_at: datetime
    expires_at: datetime
    reason: str
    kind: str = "pend"


@dataclass(frozen=True)
class Drop:
    """An expired group that opens nothing (onExpiry: drop)."""

    group_id: int
    reason: str
    kind: str = "drop"


@dataclass(frozen=True)
class NoAction:
    reason: str
    kind: str = "none"


Decision = Link | Open | Pend | NoAction


# ------------------------------------------------------------------ matching

def shares_fingerprint(alert: AlertFacts, incident: IncidentFacts) -> bool:
    return alert.fingerprint in incident.fingerprints


def shares_label_values(alert: AlertFacts, incident: IncidentFacts, fields: Sequence[str]) -> bool:
    """All the label match fields are present on the alert and equal on one linked alert."""
    names = [label_name(f) for f in fields if f != "fingerprint"]
    if not names:
        return False
    wanted = {n: alert.labels.get(n) for n in names}
    if any(v is None for v in wanted.values()):
        return False  # an alert without `service` is not "the same service" as anything
    return any(all(ls.get(n) == v for n, v in wanted.items()) for ls in incident.label_sets)


def matches(alert: AlertFacts, incident: IncidentFacts, fields: Sequence[str]) -> str | None:
    """Why `incident` matches `alert` on `fields`, or None. `fingerprint` in the
    fields means a re-fire of an alert already in the incident; the other fields
    must all agree with one linked alert."""
    if "fingerprint" in fields and shares_fingerprint(alert, incident):
        return f"fingerprint {alert.fingerprint} already in #{incident.id}"
    if shares_label_values(alert, incident, fields):
        named = ", ".join(f"{label_name(f)}={alert.field(f)}" for f in fields if f != "fingerprint")
        return f"{named} as in #{incident.id}"
    return None


def active_within(incident: IncidentFacts, at: datetime, window: timedelta) -> bool:
    """Last activity no more than `window` before `at` (the boundary itself counts)."""
    return incident.last_activity_at >= at - window


def best_match(alert: AlertFacts, incidents: Iterable[IncidentFacts], fields: Sequence[str],
               window: timedelta) -> tuple[IncidentFacts, str] | None:
    found = [(i, why) for i in incidents
             if active_within(i, alert.fired_at, window) and (why := matches(alert, i, fields))]
    # the most recently active incident wins; ties go to the older (lower) id
    found.sort(key=lambda f: (-f[0].last_activity_at.timestamp(), f[0].id))
    return found[0] if found else None


# ------------------------------------------------------------------ the rules

def aggregated_title(members: Sequence[AlertFacts]) -> str:
    service = members[0].labels.get("service") or "Unknown Service"
    return f"[Aggregated] {service}: {len(members)} related alerts"


def open_from_group(rule: AggregationRule, key: str, members: Sequence[AlertFacts], at: datetime,
                    reason: str, group_id: int | None) -> Open:
    return Open(
        rule=f"aggregation:{rule.name}",
        title=aggregated_title(members),
        severity=highest_severity([m.severity for m in members]),
        summary=f"Aggregated from {len(members)} alerts",
        aggregation_key=key,
        alert_ids=tuple(m.id for m in members),
        opened_at=at,
        reason=reason,
        group_id=group_id,
    )


def scored_decision(alert: AlertFacts, scored: Sequence[Scored], auto_link_at: float) -> Link | Open | None:
    """The scorer's decision, when its best candidate reaches `auto_link_at`: join
    that incident, or open one from this alert and a related unlinked alert."""
    best = max(scored, key=lambda s: (s.score, s.incident_id is not None), default=None)
    if best is None or best.score < auto_link_at:
        return None
    if best.incident_id is not None:
        return Link(best.incident_id, "scorer", best.describe(), best.score, best.components)
    assert best.alert_id is not None
    return Open(
        rule="scorer",
        title=f"[Correlated] {best.title}",
        severity=highest_severity([best.severity, alert.severity]),
        summary=f"Opened from two related alerts ({best.describe()})",
        aggregation_key=None,
        alert_ids=(best.alert_id, alert.id),
        opened_at=alert.fired_at,
        reason=best.describe(),
        score=best.score,
        components=best.components,
    )


def decide(alert: AlertFacts, incidents: Sequence[IncidentFacts],
           groups: Mapping[tuple[str, str], GroupFacts], rules: Rules,
           scored: Sequence[Scored] = (), auto_link_at: float = 1.0) -> Decision:
    """What to do with one new firing alert. `incidents` are the active (not
    resolved) ones; `groups` the pending groups by (rule name, group key),
    already flushed up to the alert's time; `scored` the scorer's candidates.
    The scorer decides first when it is sure; below its threshold the rules do."""
    if (by_score := scored_decision(alert, scored, auto_link_at)) is not None:
        return by_score
    link = rules.auto_link
    if link.enabled and all_hold(link.conditions, alert):
        if found := best_match(alert, incidents, link.match_fields, link.correlation_window):
            return Link(found[0].id, "auto_link", found[1])

    create = rules.auto_create
    if create.enabled and all_hold(create.conditions, alert):
        if found := best_match(alert, incidents, create.match_fields, create.dedup_window):
            return Link(found[0].id, "auto_create.dedup", found[1])
        return Open(
            rule="auto_create",
            title=f"[Auto] {alert.title}",
            severity=alert.severity,
            summary=f"Automatically created from alert: {alert.fingerprint}",
            aggregation_key=None,
            alert_ids=(alert.id,),
            opened_at=alert.fired_at,
            reason=", ".join(str(c) for c in create.conditions) or "auto_create",
        )

    rule = rules.first_aggregation_rule(alert)
    if rule is None:
        return NoAction("no rule applies")
    key = rule.group_key(alert)
    same_key = [i for i in incidents if i.aggregation_key == key
                and active_within(i, alert.fired_at, link.correlation_window)]
    if same_key:
        target = max(same_key, key=lambda i: (i.last_activity_at, -i.id))
        return Link(target.id, f"aggregation:{rule.name}", f"aggregation key {key} of #{target.id}")

    group = groups.get((rule.name, key))
    if group is not None and alert.fired_at <= group.expires_at:
        members = (*group.members, alert)
        if len(members) >= rule.min_alerts:
            return open_from_group(rule, key, members, alert.fired_at,
                                   f"{len(members)} alerts for {key} within {rule.time_window}", group.id)
        return Pend(rule.name, key, group.id, group.started_at, group.expires_at,
                    f"{len(members)} of {rule.min_alerts} alerts for {key}")
    if rule.min_alerts <= 1:
        return open_from_group(rule, key, (alert,), alert.fired_at, f"minAlerts 1 for {key}", None)
    return Pend(rule.name, key, None, alert.fired_at, alert.fired_at + rule.time_window,
                f"1 of {rule.min_alerts} alerts for {key}")


def expired(groups: Iterable[GroupFacts], now: datetime) -> list[GroupFacts]:
    """Groups whose window ended before `now` (an alert exactly at the end still joins)."""
    return sorted((g for g in groups if g.expires_at < now), key=lambda g: (g.expires_at, g.id))


def flush(group: GroupFacts, rules: Rules) -> Open | Drop:
    """A group that missed minAlerts, at the end of its window: the seed opens an
    incident anyway; `onExpiry: drop` leaves its alerts unlinked."""
    rule = rules.aggregation_rule(group.rule)
    reason = f"window ended with {len(group.members)} alert(s) for {group.group_key}"
    if rule is not None and rule.on_expiry == "drop":
        return Drop(group.id, reason)
    if rule is None:  # the rule was removed since the group started: still do not lose the alerts
        rule = AggregationRule(group.rule, "", (), (), group.expires_at - group.started_at, 1)
    return open_from_group(rule, group.group_key, group.members, group.expires_at, reason, group.id)
