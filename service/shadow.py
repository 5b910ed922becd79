"""Shadow mode: a second weights file decides beside the live one and is never acted on.

For every new alert the live scorer's candidates are scored again with the shadow
weights (from the features already computed: `Scored.components["features"]`), and
what each weights file alone would decide (`service.decide.scored_decision`: link, open
a pair, or nothing above its threshold) is stored in `shadow_decisions`, in the deciding
transaction. Data scientists read where the two differ before promoting a file.

Of the shadow file only the link model and `auto_link_at` count: the candidates and
their features (`window_minutes`, the label vocabulary, the co-occurrence statistics)
are the live file's.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.tables import Alert, ShadowDecision
from service.decide import Link, Open, Scored, scored_decision
from service.rules import AlertFacts
from service.weights import Weights

Kind = Literal["link", "open", "none"]


@dataclass(frozen=True)
class Verdict:
    """What one weights file's scorer alone decided for an alert."""

    weights_version: str
    kind: Kind
    incident_id: int | None = None      # link: the incident joined
    pair_alert_id: int | None = None    # open: the unlinked alert the new incident pairs it with
    score: float | None = None          # the best candidate's score; None without candidates

    def same_decision(self, other: Verdict) -> bool:
        return (self.kind, self.incident_id, self.pair_alert_id) == (other.kind, other.incident_id,
                                                                     other.pair_alert_id)


@dataclass(frozen=True)
class ShadowRecord:
    alert_id: int
    decided_at: datetime  # the alert's event time
    live: Verdict
    shadow: Verdict

    @property
    def agree(self) -> bool:
        """The same decision (scores may differ)."""
        return self.live.same_decision(self.shadow)


# ------------------------------------------------------------------ pure

def rescore(scored: Sequence[Scored], weights: Weights) -> list[Scored]:
    """The same candidates, scored by `weights` from the features each one carries."""
    out = []
    for s in scored:
        features = dict(s.components["features"])  # type: ignore[call-overload]
        score, parts = weights.link_score(features)
        out.append(replace(s, score=round(score, 6),
                           components={"intercept": weights.link.intercept, **parts, "features": features}))
    return out


def verdict(alert: AlertFacts, scored: Sequence[Scored], weights: Weights) -> Verdict:
    decision = scored_decision(alert, scored, weights.auto_link_at)
    best = max((s.score for s in scored), default=None)
    if isinstance(decision, Link):
        return Verdict(weights.version, "link", incident_id=decision.incident_id, score=best)
    if isinstance(decision, Open):  # alert_ids: (the candidate alert, this alert)
        return Verdict(weights.version, "open", pair_alert_id=decision.alert_ids[0], score=best)
    return Verdict(weights.version, "none", score=best)


def compare(alert: AlertFacts, scored_live: Sequence[Scored], scored_shadow: Sequence[Scored],
            live: Weights, shadow: Weights) -> ShadowRecord:
    """The live and the shadow scorer's decisions on one alert. `scored_shadow` is
    `rescore(scored_live, shadow)`; `alert` is the alert's facts (a pair's incident is
    made of it, and its time is the record's)."""
    return ShadowRecord(alert.id, alert.fired_at, verdict(alert, scored_live, live),
                        verdict(alert, scored_shadow, shadow))


# ------------------------------------------------------------------ stored

def record_shadow(session: Session, alert: AlertFacts, scored: Sequence[Scored], live: Weights,
                  shadow: Weights) -> ShadowDecision:
    """Called by the pipeline after the live scorer: store the comparison in the
    caller's transaction. It decides nothing."""
    rec = compare(alert, scored, rescore(scored, shadow), live, shadow)
    row = ShadowDecision(
        alert_id=rec.alert_id, decided_at=rec.decided_at, agree=rec.agree,
        live_weights_version=rec.live.weights_version, shadow_weights_version=rec.shadow.weights_version,
        live_kind=rec.live.kind, shadow_kind=rec.shadow.kind,
        live_incident_id=rec.live.incident_id, shadow_incident_id=rec.shadow.incident_id,
        live_pair_alert_id=rec.live.pair_alert_id, shadow_pair_alert_id=rec.shadow.pair_alert_id,
        live_score=rec.live.score, shadow_score=rec.shadow.score,
    )
    session.add(row)
    return row


def _verdicts(row: ShadowDecision) -> tuple[Verdict, Verdict]:
    return (Verdict(row.live_weights_version, row.live_kind, row.live_incident_id,  # type: ignore[arg-type]
                    row.live_pair_alert_id, row.live_score),
            Verdict(row.shadow_weights_version, row.shadow_kind, row.shadow_incident_id,  # type: ignore[arg-type]
                    row.shadow_pair_alert_id, row.shadow_score))


@dataclass(frozen=True)
class Disagreement:
    alert_id: int
    alert_title: str
    decided_at: datetime
    live: Verdict
    shadow: Verdict


def disagreements(session: Session, limit: int = 100, offset: int = 0) -> list[Disagreement]:
    """The recorded decisions where shadow and live differ, newest (event time) first."""
    rows = session.execute(
        select(ShadowDecision, Alert.title).join(Alert, Alert.id == ShadowDecision.alert_id)
        .where(ShadowDecision.agree.is_(False))
        .order_by(ShadowDecision.decided_at.desc(), ShadowDecision.id.desc())
        .limit(limit).offset(offset))
    return [Disagreement(row.alert_id, title, row.decided_at, *_verdicts(row)) for row, title in rows]


class _Counting:
    decisions: int
    agreements: int
    disagreements: int

    def add(self, agree: bool, n: int) -> None:
        self.decisions += n
        if agree:
            self.agreements += n
        else:
            self.disagreements += n


@dataclass
class KindPair:
    live_kind: Kind
    shadow_kind: Kind
    count: int


@dataclass
class VersionCounts(_Counting):
    live_weights_version: str
    shadow_weights_version: str
    decisions: int = 0
    agreements: int = 0
    disagreements: int = 0


@dataclass
class ShadowSummary(_Counting):
    """Every recorded decision counted, with the versions loaded now; `versions` splits
    the counts by the (live, shadow) versions that recorded them."""

    live_weights_version: str    # loaded now
    shadow_weights_version: str  # loaded now
    decisions: int = 0
    agreements: int = 0
    disagreements: int = 0
    disagreements_by_kind: list[KindPair] = field(default_factory=list)
    versions: list[VersionCounts] = field(default_factory=list)


def summary(session: Session, live: Weights, shadow: Weights) -> ShadowSummary:
    t = ShadowDecision
    groups = session.execute(
        select(t.live_weights_version, t.shadow_weights_version, t.live_kind, t.shadow_kind, t.agree,
               func.count())
        .group_by(t.live_weights_version, t.shadow_weights_version, t.live_kind, t.shadow_kind, t.agree))
    out = ShadowSummary(live.version, shadow.version)
    by_kind: dict[tuple[Kind, Kind], int] = {}
    versions: dict[tuple[str, str], VersionCounts] = {}
    for live_version, shadow_version, live_kind, shadow_kind, agree, n in groups:
        out.add(agree, n)
        versions.setdefault((live_version, shadow_version),
                            VersionCounts(live_version, shadow_version)).add(agree, n)
        if not agree:
            by_kind[live_kind, shadow_kind] = by_kind.get((live_kind, shadow_kind), 0) + n
    out.disagreements_by_kind = [KindPair(lk, sk, n) for (lk, sk), n in sorted(by_kind.items())]
    out.versions = [versions[k] for k in sorted(versions)]
    return out
