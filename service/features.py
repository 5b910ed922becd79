"""Features of "does this alert belong with that candidate?", as plain numbers.

A candidate is an active incident or a recent alert that is linked to nothing yet
(a pair of related alerts is how an incident without a critical alert starts).
Everything here is pure: the repository summarises candidates from the database,
`CooccurrenceStats` is built from past incidents, and `link_features` turns one
(alert, candidate) pair into the named numbers that the weights file combines.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from service.rules import AlertFacts

# Labels naming the thing an alert is about, in order of preference, and labels
# that, when equal, say two alerts concern the same thing. Defaults for Prometheus
# conventions; the weights file can override both.
TARGET_LABELS = ("service", "node", "upstream", "datacenter", "instance", "job")
SHARED_LABELS = ("service", "node", "deployment_id", "upstream", "datacenter")
SCOPE_LABELS = ("environment",)


@dataclass(frozen=True)
class Vocabulary:
    """How alerts are reduced to kinds: `alertname|target`."""

    target_labels: tuple[str, ...] = TARGET_LABELS
    shared_labels: tuple[str, ...] = SHARED_LABELS
    scope_labels: tuple[str, ...] = SCOPE_LABELS

    def name(self, labels: Mapping[str, str], title: str) -> str:
        return labels.get("alertname") or title

    def target(self, labels: Mapping[str, str]) -> str:
        return next((labels[k] for k in self.target_labels if labels.get(k)), "")

    def kind(self, labels: Mapping[str, str], title: str) -> str:
        return f"{self.name(labels, title)}|{self.target(labels)}"


@dataclass(frozen=True)
class Member:
    """What a candidate's summary needs of one of its alerts."""

    fingerprint: str
    title: str
    severity: str
    labels: Mapping[str, str]
    fired_at: datetime
    resolved_at: datetime | None  # None: still firing at the time of the decision


@dataclass(frozen=True)
class Candidate:
    """An active incident (`incident_id`) or an unlinked recent alert (`alert_id`)."""

    incident_id: int | None
    alert_id: int | None
    members: tuple[Member, ...]

    @property
    def key(self) -> tuple[str, int]:
        return ("incident", self.incident_id) if self.incident_id is not None else ("alert", self.alert_id or 0)


@dataclass
class CooccurrenceStats:
    """How often kinds of alert were linked to the same past incident, and how
    often they fired linked to nothing (noise). Derived from the database."""

    vocabulary: Vocabulary = field(default_factory=Vocabulary)
    incidents: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    names: Counter[str] = field(default_factory=Counter)
    targets: Counter[str] = field(default_factory=Counter)
    kind_pairs: Counter[tuple[str, str]] = field(default_factory=Counter)
    name_pairs: Counter[tuple[str, str]] = field(default_factory=Counter)
    target_pairs: Counter[tuple[str, str]] = field(default_factory=Counter)
    noise_kinds: Counter[str] = field(default_factory=Counter)

    def add_incident(self, members: Iterable[tuple[Mapping[str, str], str]]) -> None:
        """One past incident, as (labels, title) of its alerts."""
        v = self.vocabulary
        members = list(members)
        if not members:
            return
        self.incidents += 1
        for sets, counts, pairs in (
            ({v.kind(l, t) for l, t in members}, self.kinds, self.kind_pairs),
            ({v.name(l, t) for l, t in members}, self.names, self.name_pairs),
            ({v.target(l) for l, t in members}, self.targets, self.target_pairs),
        ):
            ordered = sorted(sets)
            counts.update(ordered)
            pairs.update((a, b) for i, a in enumerate(ordered) for b in ordered[i + 1:])

    def add_noise(self, labels: Mapping[str, str], title: str) -> None:
        self.noise_kinds[self.vocabulary.kind(labels, title)] += 1

    # Ochiai (cosine) association: 1 for the same kind (history or not: a new install
    # still groups the same alert on two instances), else the share of incidents with both
    @staticmethod
    def _cosine(n: Counter[str], pairs: Counter[tuple[str, str]], a: str, b: str) -> float:
        if a == b:
            return 1.0
        both = pairs[(a, b) if a < b else (b, a)]
        return both / math.sqrt((n[a] + 1.0) * (n[b] + 1.0))

    # pointwise mutual information, smoothed: > 0 when they meet more often than chance
    def _pmi(self, n: Counter[str], pairs: Counter[tuple[str, str]], a: str, b: str) -> float | None:
        if a == b or not n[a] or not n[b]:
            return None  # no evidence either way
        both = pairs[(a, b) if a < b else (b, a)]
        expected = n[a] * n[b] / max(1, self.incidents)
        return math.log((both + 0.5) / (expected + 0.5))

    def association(self, kind: str, name: str, target: str, kinds: set[str], names: set[str],
                    targets: set[str]) -> dict[str, float]:
        def best(values: Iterable[float | None]) -> float:
            found = [v for v in values if v is not None]
            return max(found) if found else 0.0
        return {
            "cooc_kind": best(self._cosine(self.kinds, self.kind_pairs, kind, k) for k in kinds),
            "cooc_name": best(self._cosine(self.names, self.name_pairs, name, k) for k in names),
            "cooc_target": best(self._cosine(self.targets, self.target_pairs, target, k) for k in targets),
            "pmi_kind": best(self._pmi(self.kinds, self.kind_pairs, kind, k) for k in kinds),
            "pmi_name": best(self._pmi(self.names, self.name_pairs, name, k) for k in names),
            "pmi_target": best(self._pmi(self.targets, self.target_pairs, target, k) for k in targets),
        }

    def noise_rate(self, kind: str) -> float:
        noise, linked = self.noise_kinds[kind], self.kinds[kind]
        return (noise + 0.5) / (noise + linked + 1.0)


def _minutes(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() / 60.0


def link_features(alert: AlertFacts, candidate: Candidate, stats: CooccurrenceStats) -> dict[str, float]:
    """The named features of one (alert, candidate) pair at the alert's time."""
    v = stats.vocabulary
    members = candidate.members
    now = alert.fired_at
    first = min(m.fired_at for m in members)
    last = max(m.fired_at for m in members)
    n = len(members)

    gap = max(0.0, _minutes(now, last))
    # the candidate's own pace: a long silence after a fast burst says "that one is over"
    pace = _minutes(last, first) / (n - 1) if n > 1 else 5.0
    ongoing = any(m.resolved_at is None or m.resolved_at > now for m in members)
    last_event = max([last] + [m.resolved_at for m in members if m.resolved_at is not None and m.resolved_at <= now])
    quiet = max(0.0, _minutes(now, last_event))

    def values(label: str) -> set[str]:
        return {m.labels[label] for m in members if m.labels.get(label)}

    scope_ok = all(alert.labels.get(s) is None or not values(s) or alert.labels[s] in values(s)
                   for s in v.scope_labels)
    shared = any(alert.labels.get(s) and alert.labels[s] in values(s) for s in v.shared_labels)
    kind, name, target = v.kind(alert.labels, alert.title), v.name(alert.labels, alert.title), v.target(alert.labels)
    assoc = stats.association(
        kind, name, target,
        {v.kind(m.labels, m.title) for m in members},
        {v.name(m.labels, m.title) for m in members},
        {v.target(m.labels) for m in members},
    )
    return {
        "ended": (0.0 if ongoing else 1.0) * math.log1p(quiet),
        "ongoing": 1.0 if ongoing else 0.0,
        "quiet_e2": math.exp(-quiet / 2.0),
        "relgap": math.log((gap + 0.25) / (pace + 0.25)),
        "log_size": math.log(n),
        "gap_e1": math.exp(-gap),
        "gap_e10": math.exp(-gap / 10.0),
        "same_scope": 1.0 if scope_ok else 0.0,
        "fingerprint": 1.0 if any(m.fingerprint == alert.fingerprint for m in members) else 0.0,
        "shared_label": 1.0 if shared else 0.0,
        **assoc,
        "noise_rate": stats.noise_rate(kind),
    }

