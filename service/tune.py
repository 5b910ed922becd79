"""Tune the scorer's weights file from labelled data sets (`../shared/bench/DATASET.md`).

How a weights file is made:

1. Training pairs. Each data set's stream is replayed online in event time by a pure-Python
   copy of the pipeline's scorer path (`_Replay`: no database, so a week of alerts takes
   about a second). At each stream alert every candidate the scorer considers (incidents not
   resolved with activity within `window_minutes`, and recent alerts linked to nothing) gives
   one pair: the features `link_features` computes, label 1 when most of the candidate's
   alerts come from the alert's true failure (noise is never a positive), and group = that
   failure (the alert's own id for noise), so cross-validation never splits a failure.
   The first pass grows the groups from the truth (oracle clustering); each further round
   replays again with the current model (a logistic regression fit on all pairs so far,
   deciding with the default rules exactly as the live pipeline does) and adds the pairs
   that grouping meets: the mistakes online grouping really makes.
   A data set without truth.json (or named in `history`) is used by replaying the second
   half of its history against the first half, with `incident_id` as the truth.
2. `fit`: logistic regression and gradient boosting under GroupKFold by failure, scores
   calibrated out of fold (Platt for the logistic model, so it stays a logistic model;
   isotonic for boosting). The thresholds come from the out-of-fold curve of the *decisions*,
   not of the pairs: only each alert's best candidate is acted on, so each alert of a replay
   round gives one decision (its best-scoring candidate; right when that candidate is a
   positive), and an alert "needs a link" when any of its candidates is a positive.
   `auto_link_at` = the lowest threshold whose decision precision (right decisions scored
   >= t / decisions scored >= t) reaches the target, so `target_precision` 0.97 means 97% of
   the links the scorer makes are right; `suggest_at` = the lowest with decision precision 0.5
   over the band below it (never above it). The pair curve's numbers stay in the metrics.
3. `write_weights`: the weights file, with the logistic model (the only one the file format
   carries) and every model's metrics in `provenance`. Deterministic for a given seed:
   nothing depends on the wall clock (the date is the newest alert time of the data).
"""
from __future__ import annotations

import bisect
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from models.tables import Alert as AlertRow
from service.decide import (Decision, Drop, GroupFacts, IncidentFacts, Link, NoAction, Open, Pend, Scored,
                            decide, expired, flush, label_name)
from service.features import (SCOPE_LABELS, SHARED_LABELS, TARGET_LABELS, Candidate, CooccurrenceStats, Member,
                              link_features)
from service.replay import _alert_in, read_jsonl
from service.repository import cut_to_column
from service.rules import AlertFacts, Rules, load_rules
from service.settings import Settings
from service.weights import LINK_FEATURES, LinkModel, Weights

MODELS = ("logistic_regression", "gradient_boosting")
SUGGEST_PRECISION = 0.5
N_SPLITS = 5
DECIMALS = 4  # of coefficients and thresholds in the file


# ------------------------------------------------------------------ data sets

@dataclass(frozen=True)
class _Alert:
    """One alert of a replay: `key` orders alerts as the database's ids would."""

    key: int
    ext: str
    facts: AlertFacts
    resolved_at: datetime | None
    failure: str | None   # the truth: a failure (scenario, or past incident) id, None for noise
    history: bool         # loaded as history: resolved from the start (its resolve is known)
    firing: Member        # as a member while it still fires
    resolved: Member      # as a member once it resolved


@dataclass
class DataSet:
    """A data set ready to replay: history (for statistics and unlinked alerts) and stream."""

    name: str
    stats: CooccurrenceStats
    history: list[_Alert]          # loaded alerts, in file order
    linked_history: set[int]       # keys of history alerts linked to a past incident
    stream: list[_Alert]           # in the order the replay feeds them (fired_at, then file order)
    past_incidents: int            # the database ids of the stream's new incidents start after these
    newest: datetime               # newest alert time of the data (the tuned file's date)
    split: bool = False            # built from its history alone
    # past incidents not resolved (no resolved_at): open, so candidates like the stream's own;
    # (database id, external id, created_at, keys of their alerts)
    open_past: list[tuple[int, str, datetime, list[int]]] = field(default_factory=list)


def _alert(key: int, row: dict[str, Any], settings: Settings, *, history: bool, failure: str | None) -> _Alert:
    a = _alert_in(row, settings, resolved=history)
    title, source = cut_to_column(a.title, AlertRow.title), cut_to_column(a.source, AlertRow.source)
    facts = AlertFacts(id=key, fingerprint=a.fingerprint, title=title, source=source, severity=a.severity,
                       fired_at=a.fired_at, labels=dict(a.labels))
    resolved_at = a.resolved_at if history else (
        datetime.fromisoformat(row["resolved_at"]) if row.get("resolved_at") else None)
    firing = Member(a.fingerprint, title, a.severity, facts.labels, a.fired_at, None)
    # a history alert without resolved_at is stored firing, and fires for good
    done = Member(a.fingerprint, title, a.severity, facts.labels, a.fired_at, resolved_at) \
        if resolved_at is not None else firing
    return _Alert(key, row["id"], facts, resolved_at, failure, history, firing, done)


def load_dataset(data: Path, weights: Weights, *, split_history: bool | None = None,
                 settings: Settings | None = None) -> DataSet:
    """Read a data set. `split_history` (default: when it has no truth.json) replays the
    second half of its past incidents (by creation time) and the unlinked alerts after the
    first of them against the first half; the truth is then each alert's `incident_id`."""
    data = Path(data)
    settings = settings or Settings()
    split = not (data / "truth.json").is_file() if split_history is None else split_history
    incidents = list(read_jsonl(data / "history" / "incidents.jsonl"))
    rows = list(read_jsonl(data / "history" / "alerts.jsonl"))
    if split:
        ordered = sorted(incidents, key=lambda i: (datetime.fromisoformat(i["created_at"]), i["id"]))
        if len(ordered) < 2:
            raise ValueError(f"{data}: {len(ordered)} past incident(s): too few to split its history")
        kept = ordered[: len(ordered) // 2]
        later = {i["id"] for i in ordered[len(ordered) // 2:]}
        cut = datetime.fromisoformat(ordered[len(ordered) // 2]["created_at"])

        def goes_on(r: dict[str, Any]) -> bool:
            if r.get("incident_id") in later:
                return True
            return not r.get("incident_id") and datetime.fromisoformat(r["fired_at"]) >= cut
        stream_rows = sorted((r for r in rows if goes_on(r)), key=lambda r: datetime.fromisoformat(r["fired_at"]))
        truth = {r["id"]: r.get("incident_id") or None for r in stream_rows}
        stream_rows = [{k: v for k, v in r.items() if k != "incident_id"} for r in stream_rows]
        rows = [r for r in rows if not goes_on(r)]
        incidents = kept
    else:
        stream_rows = list(read_jsonl(data / "stream" / "alerts.jsonl"))
        truth_file = data / "truth.json"
        truth = json.loads(truth_file.read_text())["alerts"] if truth_file.is_file() else {}
        # the replay's order: by fired_at, file order among equals (replay.stream_events)
        stream_rows = [r for _, r in sorted(enumerate(stream_rows),
                                            key=lambda e: (datetime.fromisoformat(e[1]["fired_at"]), e[0]))]

    resolved_incidents = {i["id"] for i in incidents if i.get("resolved_at")}
    known = {i["id"] for i in incidents}
    history = [_alert(k + 1, r, settings, history=True, failure=r.get("incident_id")) for k, r in enumerate(rows)]
    linked = {a.key for a, r in zip(history, rows) if r.get("incident_id") in known}
    stream = [_alert(len(history) + k + 1, r, settings, history=False, failure=truth.get(r["id"]))
              for k, r in enumerate(stream_rows)]

    # co-occurrence statistics exactly as pipeline.learn_history builds them from the database
    stats = CooccurrenceStats(weights.vocabulary)
    members: dict[str, list[_Alert]] = {i["id"]: [] for i in incidents if i["id"] in resolved_incidents}
    for a, r in zip(history, rows):
        if r.get("incident_id") in members:
            members[r["incident_id"]].append(a)
    for alerts in members.values():
        stats.add_incident((dict(a.facts.labels), a.facts.title) for a in alerts)
    for a in history:
        if a.key not in linked and a.resolved_at is not None:
            stats.add_noise(dict(a.facts.labels), a.facts.title)

    open_past = [(n + 1, i["id"], datetime.fromisoformat(i["created_at"]),
                  [a.key for a, r in zip(history, rows) if r.get("incident_id") == i["id"]])
                 for n, i in enumerate(incidents) if i["id"] not in resolved_incidents]
    times = [a.facts.fired_at for a in history + stream] + [a.resolved_at for a in history + stream if a.resolved_at]
    name = data.name + ("#history" if split else "")
    return DataSet(name, stats, history, linked, stream, len(incidents), max(times), split, open_past)


# ------------------------------------------------------------------ the online replay

@dataclass
class _Incident:
    id: int
    last_activity_at: datetime
    aggregation_key: str | None
    members: list[_Alert] = field(default_factory=list)


@dataclass
class _Group:
    id: int
    rule: str
    group_key: str
    started_at: datetime
    expires_at: datetime
    members: list[_Alert] = field(default_factory=list)


# how a pass decides: (the replay state, the alert, its candidates with their score and label)
Policy = Callable[["_Replay", _Alert, list[tuple[Candidate, float, bool]]], Decision]


class _Replay:
    """The pipeline's decisions (`Pipeline.decide`, `apply`, `flush_expired`) on plain
    Python state; `repository.scorer_candidates` and `active_incidents` as list scans."""

    def __init__(self, ds: DataSet, weights: Weights, rules: Rules | None) -> None:
        self.ds, self.weights, self.rules = ds, weights, rules
        self.by_key = {a.key: a for a in ds.history + ds.stream}
        self.incidents: dict[int, _Incident] = {
            i: _Incident(i, created, None, [self.by_key[k] for k in keys]) for i, _, created, keys in ds.open_past}
        self.next_incident = ds.past_incidents + 1
        self.groups: dict[int, _Group] = {}
        self.next_group = 1
        self.linked: dict[int, int] = {k: 0 for k in ds.linked_history}  # alert key -> incident (0: the past)
        self.linked.update({k: i for i, _, _, keys in ds.open_past for k in keys})
        # alerts that can be candidates by themselves, by (fired_at, key)
        self.loose: list[tuple[datetime, int]] = sorted((a.facts.fired_at, a.key) for a in ds.history
                                                        if a.key not in ds.linked_history)
        self.seen: dict[tuple[str, datetime], int] = {(a.facts.fingerprint, a.facts.fired_at): a.key
                                                      for a in ds.history}
        self.alias: dict[int, int] = {}  # a delivery of an alert already stored -> that alert

    # ---------------------------------------------------------- candidates
    def member(self, a: _Alert, now: datetime) -> Member:
        # a resolve at the very second of a firing is fed after it (replay.stream_events)
        return a.resolved if a.history or (a.resolved_at is not None and a.resolved_at < now) else a.firing

    def candidates(self, a: _Alert) -> list[Candidate]:
        now = a.facts.fired_at
        since = now - timedelta(minutes=self.weights.window_minutes)
        out = [Candidate(i.id, None, tuple(self.member(m, now) for m in sorted(
                   i.members, key=lambda m: (m.facts.fired_at, m.key))))
               for i in self.incidents.values() if i.last_activity_at >= since and i.members]
        lo = bisect.bisect_left(self.loose, (since, -1))
        hi = bisect.bisect_right(self.loose, (now, math.inf))
        out += [Candidate(None, key, (self.member(self.by_key[key], now),))
                for _, key in self.loose[lo:hi] if key not in self.linked and key != a.key]
        return out

    def members_of(self, c: Candidate) -> list[_Alert]:
        if c.incident_id is not None:
            return self.incidents[c.incident_id].members
        assert c.alert_id is not None
        return [self.by_key[c.alert_id]]

    def positive(self, a: _Alert, c: Candidate) -> bool:
        """Most of the candidate's alerts come from the alert's failure (noise: never)."""
        if a.failure is None:
            return False
        members = self.members_of(c)
        return 2 * sum(m.failure == a.failure for m in members) > len(members)

    # ---------------------------------------------------------- the rules' view
    def incident_facts(self, a: _Alert) -> list[IncidentFacts]:
        assert self.rules is not None
        link, create = self.rules.auto_link, self.rules.auto_create
        since = a.facts.fired_at - max(link.correlation_window, create.dedup_window)
        field_sets = [fs for fs in (link.match_fields, create.match_fields) if fs]
        checks = {tuple(sorted({label_name(f) for f in fs} - {"fingerprint"})) for fs in field_sets}
        out = []
        for i in self.incidents.values():
            if i.last_activity_at < since:
                continue
            fps = frozenset({a.facts.fingerprint}) if any("fingerprint" in fs for fs in field_sets) and any(
                m.facts.fingerprint == a.facts.fingerprint for m in i.members) else frozenset()
            label_sets = []
            for names in sorted(checks):
                wanted = {n: a.facts.labels.get(n) for n in names}
                if names and None not in wanted.values() and any(
                        all(m.facts.labels.get(n) == v for n, v in wanted.items()) for m in i.members):
                    label_sets.append(wanted)
            out.append(IncidentFacts(i.id, i.aggregation_key, i.last_activity_at, fps, tuple(label_sets)))
        return out

    def group_facts(self) -> dict[tuple[str, str], GroupFacts]:
        return {(g.rule, g.group_key): GroupFacts(g.id, g.rule, g.group_key, g.started_at, g.expires_at,
                                                  tuple(m.facts for m in g.members))
                for g in self.groups.values()}

    # ---------------------------------------------------------- apply
    def link(self, alert: _Alert, incident: _Incident) -> None:
        incident.members.append(alert)
        self.linked.setdefault(alert.key, incident.id)
        if alert.facts.fired_at > incident.last_activity_at:
            incident.last_activity_at = alert.facts.fired_at

    def apply(self, decision: Decision | Drop, alert: _Alert | None) -> None:
        if isinstance(decision, Link):
            assert alert is not None
            self.link(alert, self.incidents[decision.incident_id])
        elif isinstance(decision, Open):
            incident = _Incident(self.next_incident, decision.opened_at, decision.aggregation_key)
            self.incidents[incident.id] = incident
            self.next_incident += 1
            for key in decision.alert_ids:
                self.link(self.by_key[key], incident)
            if decision.group_id is not None:
                self.groups.pop(decision.group_id, None)
            for g in list(self.groups.values()):  # repository.drop_from_groups
                g.members = [m for m in g.members if m.key not in decision.alert_ids]
                if not g.members:
                    del self.groups[g.id]
        elif isinstance(decision, Pend):
            assert alert is not None
            if decision.group_id is None:
                group = _Group(self.next_group, decision.rule, decision.group_key, decision.started_at,
                               decision.expires_at)
                self.groups[group.id] = group
                self.next_group += 1
            else:
                group = self.groups[decision.group_id]
            group.members.append(alert)
        elif isinstance(decision, Drop):
            self.groups.pop(decision.group_id, None)

    def flush_expired(self, now: datetime) -> None:
        if self.rules is None:
            return
        for g in expired(self.group_facts().values(), now):
            self.apply(flush(g, self.rules), None)

    # ---------------------------------------------------------- the stream
    def run(self, policy: Policy, on_pair: Callable[[_Alert, Candidate, dict[str, float], bool], None]
            ) -> dict[str, int | None]:
        """Feed the stream; returns stream alert id -> the incident it ends in (database ids)."""
        last = None
        for a in self.ds.stream:
            now = a.facts.fired_at
            last = max(last or now, now, a.resolved_at or now)
            occurrence = (a.facts.fingerprint, now)
            if occurrence in self.seen:  # the same alert again: the pipeline stores nothing new
                self.alias[a.key] = self.seen[occurrence]
                continue
            self.seen[occurrence] = a.key
            self.flush_expired(now)
            scored = []
            for c in self.candidates(a):
                features = link_features(a.facts, c, self.ds.stats)
                label = self.positive(a, c)
                on_pair(a, c, features, label)
                score = round(self.weights.link_score(features)[0], 6)
                scored.append((c, score, label))
            self.apply(policy(self, a, scored), a)
            bisect.insort(self.loose, (now, a.key))
        if last is not None and self.rules is not None:  # time goes on: pending groups flush
            longest = max((r.time_window for r in self.rules.aggregation), default=timedelta(0))
            self.flush_expired(last + longest + timedelta(seconds=1))
        return {a.ext: self.linked.get(self.alias.get(a.key, a.key)) for a in self.ds.stream}


def _scored(c: Candidate, score: float) -> Scored:
    first = c.members[0]
    return Scored(c.incident_id, c.alert_id, score, {}, (), first.title, first.severity)


def model_policy(state: _Replay, a: _Alert, scored: list[tuple[Candidate, float, bool]]) -> Decision:
    """What the live pipeline decides: the scorer first, then the rules."""
    assert state.rules is not None
    return decide(a.facts, state.incident_facts(a), state.group_facts(), state.rules,
                  [_scored(c, s) for c, s, _ in scored], state.weights.auto_link_at)


def oracle_policy(state: _Replay, a: _Alert, scored: list[tuple[Candidate, float, bool]]) -> Decision:
    """Groups grown from the truth: join the failure's active incident (the largest, then the
    most recent), else pair with its newest unlinked alert, else stay alone."""
    incidents = [c for c, _, ok in scored if ok and c.incident_id is not None]
    if incidents:
        best = max(incidents, key=lambda c: (len(c.members), state.incidents[c.incident_id].last_activity_at,
                                             -c.incident_id))
        assert best.incident_id is not None
        return Link(best.incident_id, "oracle", "truth")
    alerts = [c for c, _, ok in scored if ok and c.alert_id is not None]
    if alerts:
        best = alerts[-1]  # candidates come in (fired_at, key) order
        assert best.alert_id is not None
        return Open("oracle", a.facts.title, a.facts.severity, "truth", None, (best.alert_id, a.key),
                    a.facts.fired_at, "truth")
    return NoAction("truth: the first alert of its failure, or noise")


def default_rules(settings: Settings | None = None) -> Rules:
    settings = settings or Settings()
    return load_rules(settings.rules_dir, settings.severity_words())


def online_grouping(data: Path | DataSet, weights: Weights, *, rules: Rules | None = None,
                    settings: Settings | None = None) -> dict[str, str | None]:
    """Stream alert id -> the incident it ends in, named as `alertlink replay` names it (a new
    incident's database id), from the pure replay with `weights` and the rules."""
    settings = settings or Settings()
    ds = data if isinstance(data, DataSet) else load_dataset(data, weights, settings=settings)
    state = _Replay(ds, weights, rules or default_rules(settings))
    linked = state.run(model_policy, lambda *_: None)
    past = {i: ext for i, ext, _, _ in ds.open_past}
    return {k: None if v is None else past.get(v, str(v)) for k, v in linked.items()}


# ------------------------------------------------------------------ pairs

@dataclass(frozen=True)
class PairSet:
    """Training pairs: `features` (n x len(LINK_FEATURES), in that order), `labels` (0/1),
    `groups` (data set/failure: what a fold keeps together) and, per pair, the data set and
    the round it came from (0: the oracle pass), and `alerts`: which alert's decision the pair
    is a candidate of (one id per data set, round and stream alert; None: each pair alone)."""

    features: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    datasets: np.ndarray
    rounds: np.ndarray
    newest: datetime | None = None  # newest alert time of the data
    alerts: np.ndarray | None = None

    @property
    def name(self) -> str:
        return "+".join(dict.fromkeys(self.datasets.tolist()))

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def concat(cls, sets: Sequence[PairSet]) -> PairSet:
        newest = max((s.newest for s in sets if s.newest is not None), default=None)
        if not sets:
            return cls(np.zeros((0, len(LINK_FEATURES))), np.zeros(0, np.int8), np.zeros(0, object),
                       np.zeros(0, object), np.zeros(0, np.int16))
        alerts = None if any(s.alerts is None for s in sets) else np.concatenate([s.alerts for s in sets])
        return cls(np.vstack([s.features for s in sets]), np.concatenate([s.labels for s in sets]),
                   np.concatenate([s.groups for s in sets]), np.concatenate([s.datasets for s in sets]),
                   np.concatenate([s.rounds for s in sets]), newest, alerts)


def replay_pairs(ds: DataSet, weights: Weights, *, oracle: bool = False, rules: Rules | None = None,
                 round_: int = 0) -> PairSet:
    """One pass over a data set: the oracle grows the groups from the truth, else `weights`
    with the rules decide, as live. Every candidate scored at a stream alert is a pair."""
    rows: list[list[float]] = []
    labels: list[int] = []
    groups: list[str] = []
    alerts: list[str] = []

    def on_pair(a: _Alert, c: Candidate, features: dict[str, float], label: bool) -> None:
        rows.append([features[f] for f in LINK_FEATURES])
        labels.append(int(label))
        groups.append(f"{ds.name}/{a.failure if a.failure is not None else 'noise:' + a.ext}")
        alerts.append(f"{ds.name}@{round_}/{a.key}")

    if oracle:
        _Replay(ds, weights, None).run(oracle_policy, on_pair)
    else:
        _Replay(ds, weights, rules or default_rules()).run(model_policy, on_pair)
    n = len(labels)
    return PairSet(np.array(rows, dtype=np.float64).reshape(n, len(LINK_FEATURES)), np.array(labels, np.int8),
                   np.array(groups, dtype=object), np.array([ds.name] * n, dtype=object),
                   np.full(n, round_, np.int16), ds.newest, np.array(alerts, dtype=object))


def collect_pairs(datasets: Sequence[DataSet], base: Weights, *, rounds: int = 2, seed: int = 0,
                  target_precision: float = 0.97, rules: Rules | None = None,
                  log: Callable[[str], None] | None = None) -> PairSet:
    """The oracle pass over every data set, then `rounds` passes grouped by the current model:
    a logistic regression fit on all the pairs so far, linking at `target_precision`."""
    rules = rules or default_rules()
    sets = [replay_pairs(ds, base, oracle=True) for ds in datasets]
    for r in range(1, rounds + 1):
        pairs = PairSet.concat(sets)
        current = as_weights(fit(pairs, seed=seed, target_precision=target_precision,
                                 models=("logistic_regression",)), base, version=f"round-{r}")
        if log:
            log(f"round {r}: grouping by a model fit on {len(pairs)} pairs (links at {current.auto_link_at})")
        sets += [replay_pairs(ds, current, rules=rules, round_=r) for ds in datasets]
    return PairSet.concat(sets)


def training_pairs(data: Path, weights: Weights, *, rounds: int = 2, seed: int = 0,
                   target_precision: float = 0.97, split_history: bool | None = None) -> PairSet:
    """The training pairs of one data set: the oracle pass, then `rounds` passes grouped by the
    current model (refit on this data set's pairs so far). `weights` gives the vocabulary, the
    window and the numbers the tuned file does not learn."""
    ds = load_dataset(data, weights, split_history=split_history)
    return collect_pairs([ds], weights, rounds=rounds, seed=seed, target_precision=target_precision)


# ------------------------------------------------------------------ fitting

@dataclass(frozen=True)
class TuneResult:
    """The fitted logistic model (in raw feature space, calibrated), its thresholds, and
    every model's out-of-fold metrics (`metrics[model]`) and calibrated scores (`oof`)."""

    link: LinkModel
    auto_link_at: float
    suggest_at: float
    metrics: dict[str, dict[str, Any]]
    best: str                      # the model with the higher out-of-fold PR-AUC
    oof: dict[str, np.ndarray]     # calibrated out-of-fold scores per model
    labels: np.ndarray
    seed: int
    target_precision: float
    pairs: dict[str, Any]          # counts: total, positives, per data set, per round
    date: str | None               # newest alert time of the data (YYYY-MM-DD)


def folds(pairs: PairSet, seed: int, n_splits: int = N_SPLITS) -> list[tuple[np.ndarray, np.ndarray]]:
    """GroupKFold by failure: every pair of one failure (or one noise alert) in one fold."""
    from sklearn.model_selection import GroupKFold

    _, codes = np.unique(pairs.groups.astype(str), return_inverse=True)
    k = min(n_splits, int(codes.max()) + 1 if len(codes) else 0)
    if k < 2:
        raise ValueError(f"{k} group(s) of pairs: too few to cross-validate")
    splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(splitter.split(pairs.features, pairs.labels, codes))


def _logistic(seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000, random_state=seed))


def _boosting(seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, max_leaf_nodes=31,
                                          l2_regularization=1.0, early_stopping=False, random_state=seed)


class _Platt:
    """p = sigmoid(a * z + b) of a logistic model's log-odds z: still a logistic model."""

    def __init__(self, z: np.ndarray, y: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression

        m = LogisticRegression(C=1e6, max_iter=1000).fit(z.reshape(-1, 1), y)
        self.a, self.b = float(m.coef_[0, 0]), float(m.intercept_[0])

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.clip(self.a * z + self.b, -50, 50)))


class _Isotonic:
    def __init__(self, p: np.ndarray, y: np.ndarray) -> None:
        from sklearn.isotonic import IsotonicRegression

        self.m = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)

    def __call__(self, p: np.ndarray) -> np.ndarray:
        return self.m.predict(p)


def _cross_calibrated(raw: np.ndarray, y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]],
                      calibrator: type) -> np.ndarray:
    """Out-of-fold calibrated scores: fold k's scores through a calibrator fit on the others'."""
    out = np.zeros_like(raw)
    for _, test in splits:
        rest = np.ones(len(raw), bool)
        rest[test] = False
        out[test] = calibrator(raw[rest], y[rest])(raw[test])
    return out


def _grid(scores: np.ndarray) -> np.ndarray:
    """The scores rounded down to the file's grid: every set of pairs a threshold can cut."""
    return np.unique(np.clip(np.floor(scores * 10 ** DECIMALS + 1e-9) / 10 ** DECIMALS, 0.0, 1.0))


def precision_recall_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float, int]:
    """Precision, recall and count of the pairs scored at or above `threshold`."""
    above = scores >= threshold
    n, tp = int(above.sum()), int(labels[above].sum())
    return (tp / n if n else math.nan), (tp / max(1, int(labels.sum()))), n


def threshold_at(scores: np.ndarray, labels: np.ndarray, precision: float, *,
                 below: float | None = None) -> float | None:
    """The lowest threshold t whose precision on these scores, over the pairs scored >= t (and
    < `below`, if given), is at least `precision`; None when no threshold reaches it. The
    thresholds tried are the scores rounded down to the file's grid (10^-DECIMALS), and the
    precision is that of the rounded threshold."""
    grid = _grid(scores)
    if below is not None:
        grid = grid[grid < below]
    order = np.sort(scores)
    positives_from = np.concatenate([np.cumsum(labels[np.argsort(scores, kind="stable")][::-1])[::-1], [0]])
    starts = np.searchsorted(order, grid, side="left")
    counts, positives = len(scores) - starts, positives_from[starts]
    if below is not None:
        end = int(np.searchsorted(order, below, side="left"))
        counts, positives = counts - (len(scores) - end), positives - positives_from[end]
    with np.errstate(invalid="ignore", divide="ignore"):
        precisions = positives / counts
    ok = np.flatnonzero((counts > 0) & (precisions >= precision))
    return float(grid[ok[0]]) if len(ok) else None


@dataclass(frozen=True)
class Decisions:
    """One decision per alert: its best candidate's `scores`, whether that candidate is a
    positive (`correct`), and whether any of its candidates is (`needs_link`)."""

    scores: np.ndarray
    correct: np.ndarray
    needs_link: np.ndarray

    def precision_recall_at(self, threshold: float) -> tuple[float, float, int]:
        """Precision and recall of the decisions scored at or above `threshold`, and their count:
        recall over the alerts that need a link."""
        precision, _, n = precision_recall_at(self.scores, self.correct, threshold)
        hits = int(self.correct[self.scores >= threshold].sum())
        return precision, hits / max(1, int(self.needs_link.sum())), n


def decisions(scores: np.ndarray, labels: np.ndarray, alerts: np.ndarray | None) -> Decisions:
    """Each alert's decision: its best-scoring candidate (the first of equals in candidate
    order, incidents first, as `decide.scorer_decision` takes it). `alerts` names each pair's
    alert; None makes every pair its own alert (the pair curve)."""
    labels = np.asarray(labels).astype(bool)
    if alerts is None:
        return Decisions(np.asarray(scores, float), labels, labels)
    _, codes = np.unique(np.asarray(alerts).astype(str), return_inverse=True)
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores), codes))
    first = np.ones(len(order), bool)
    first[1:] = codes[order][1:] != codes[order][:-1]
    best = order[first]  # in alert-code order
    needs = np.zeros(int(codes.max()) + 1 if len(codes) else 0, bool)
    np.logical_or.at(needs, codes, labels)
    return Decisions(np.asarray(scores, float)[best], labels[best], needs[codes[best]])


def _thresholds(scores: np.ndarray, labels: np.ndarray, target: float) -> tuple[float, float, bool]:
    """(auto_link_at, suggest_at, whether the target precision is reached) on a curve (the
    decisions' scores and correctness, or pairs'). Suggestions are the ones scored in
    [suggest_at, auto_link_at): their precision is what a responder sees, so suggest_at is the
    lowest threshold at which that band is right half the time."""
    auto = threshold_at(scores, labels, target)
    met = auto is not None
    if auto is None:  # the most precise threshold there is
        auto = float(max(_grid(scores), key=lambda t: (precision_recall_at(scores, labels, t)[0], -t)))
    suggest = threshold_at(scores, labels, SUGGEST_PRECISION, below=auto)
    return auto, min(auto, suggest if suggest is not None else auto), met


def band_precision(scores: np.ndarray, labels: np.ndarray, low: float, high: float) -> float:
    band = (scores >= low) & (scores < high)
    return float(labels[band].mean()) if band.any() else math.nan


def fit(pairs: PairSet, *, seed: int, target_precision: float,
        models: Sequence[str] = MODELS) -> TuneResult:
    """Cross-validate each model by failure, calibrate out of fold, pick the thresholds on the
    logistic model's out-of-fold decision curve (each alert's best candidate; see `decisions`)
    and refit it on every pair. Deterministic per seed."""
    from sklearn.metrics import average_precision_score, brier_score_loss

    if unknown := sorted(set(models) - set(MODELS)):
        raise ValueError(f"unknown models {unknown}; known: {', '.join(MODELS)}")
    if "logistic_regression" not in models:
        raise ValueError("the weights file carries a logistic regression: it must be among the models")
    X, y = pairs.features, pairs.labels.astype(int)
    if len(np.unique(y)) < 2:
        raise ValueError(f"{len(y)} pairs with labels {sorted(set(y.tolist()))}: both classes are needed")
    splits = folds(pairs, seed)

    raw: dict[str, np.ndarray] = {}
    for name in models:
        out = np.zeros(len(y))
        for train, test in splits:
            if name == "logistic_regression":
                out[test] = _logistic(seed).fit(X[train], y[train]).decision_function(X[test])
            else:
                out[test] = _boosting(seed).fit(X[train], y[train]).predict_proba(X[test])[:, 1]
        raw[name] = out
    oof = {name: _cross_calibrated(raw[name], y, splits, _Platt if name == "logistic_regression" else _Isotonic)
           for name in models}

    metrics: dict[str, dict[str, Any]] = {}
    for name in models:
        s = oof[name]
        d = decisions(s, y, pairs.alerts)
        auto, suggest, met = _thresholds(d.scores, d.correct, target_precision)
        precision, recall, n = d.precision_recall_at(auto)
        # the pair curve, for comparison: its own thresholds, and its precision at the decisions'
        p_auto, p_suggest, p_met = _thresholds(s, y, target_precision)
        p_precision, p_recall, _ = precision_recall_at(s, y, p_auto)
        at_auto, _, _ = precision_recall_at(s, y, auto)
        metrics[name] = {
            "pr_auc": round(float(average_precision_score(y, s)), 4),
            "brier": round(float(brier_score_loss(y, s)), 5),
            "auto_link_at": auto, "precision": round(precision, 4), "recall": round(recall, 4),
            "links": n,
            "suggest_at": suggest,
            "suggest_precision": round(band_precision(d.scores, d.correct, suggest, auto), 4),
            "suggest_at_cumulative": threshold_at(d.scores, d.correct, SUGGEST_PRECISION), "target_met": met,
            "decisions": {"alerts": len(d.scores), "need_a_link": int(d.needs_link.sum()),
                          "best_is_right": int(d.correct.sum())},
            "pair_curve": {
                "auto_link_at": p_auto, "precision": round(p_precision, 4), "recall": round(p_recall, 4),
                "suggest_at": p_suggest, "suggest_precision": round(band_precision(s, y, p_suggest, p_auto), 4),
                "target_met": p_met, "precision_at_auto_link_at": round(at_auto, 4),
            },
        }
    best = max(models, key=lambda m: (metrics[m]["pr_auc"], m == "logistic_regression"))

    # the shipped model: the logistic regression on every pair, then Platt on its out-of-fold
    # log-odds, folded into one intercept and coefficients over the raw features
    final = _logistic(seed).fit(X, y)
    scaler, lr = final[0], final[-1]
    platt = _Platt(raw["logistic_regression"], y)
    w = lr.coef_[0] / scaler.scale_
    b = float(lr.intercept_[0] - np.dot(w, scaler.mean_))
    coefficients = {f: round(float(platt.a * c), DECIMALS) for f, c in zip(LINK_FEATURES, w)}
    link = LinkModel(intercept=round(platt.a * b + platt.b, DECIMALS), coefficients=coefficients)
    lr_metrics = metrics["logistic_regression"]

    counts = {
        "total": len(y), "positives": int(y.sum()), "failures": len(set(pairs.groups.tolist())),
        "by_data_set": {d: int((pairs.datasets == d).sum()) for d in dict.fromkeys(pairs.datasets.tolist())},
        "by_round": {str(r): int((pairs.rounds == r).sum()) for r in sorted(set(pairs.rounds.tolist()))},
    }
    return TuneResult(link, lr_metrics["auto_link_at"], lr_metrics["suggest_at"], metrics, best, oof, y, seed,
                      target_precision, counts, pairs.newest.date().isoformat() if pairs.newest else None)


# ------------------------------------------------------------------ the weights file

def _labels_differ(base: Weights) -> dict[str, list[str]]:
    out = {}
    for key, default in (("target_labels", TARGET_LABELS), ("shared_labels", SHARED_LABELS),
                         ("scope_labels", SCOPE_LABELS)):
        if tuple(getattr(base, key)) != tuple(default):
            out[key] = list(getattr(base, key))
    return out


def _document(result: TuneResult, base: Weights, version: str, provenance: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": version,
        "embedding_model": base.embedding_model,
        "provenance": provenance,
        "link": {"intercept": result.link.intercept,
                 "coefficients": {f: result.link.coefficients.get(f, 0.0) for f in LINK_FEATURES}},
        "auto_link_at": result.auto_link_at,
        "suggest_at": result.suggest_at,
        "context_at": base.context_at,
        "window_minutes": base.window_minutes,
        **_labels_differ(base),
        "similar": base.similar.model_dump(),
    }


def as_weights(result: TuneResult, base: Weights, *, version: str = "tuned") -> Weights:
    """The tuned model as a `Weights` (base: everything the tuning does not learn)."""
    return Weights.model_validate(_document(result, base, version, {}))


def model_hash(result: TuneResult) -> str:
    text = json.dumps({"intercept": result.link.intercept, "coefficients": result.link.coefficients,
                       "auto_link_at": result.auto_link_at, "suggest_at": result.suggest_at}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


HEADER = """\
# alertlink scorer weights, written by `service/tune.py` (see its provenance). Every automatic
# link is stamped with `version` and with its score components; change `version` whenever a
# number here changes.
"""


def write_weights(result: TuneResult, base: Weights, out: Path, *, training: list[str],
                  date: str | None = None, rounds: int | None = None) -> Weights:
    """Write the weights file (the shipped file's keys; the numbers it does not learn come from
    `base`) and return it as loaded back. `date` defaults to the newest alert time of the data."""
    date = date or result.date or "undated"
    version = f"{date}.{model_hash(result)}"
    lr, best = result.metrics["logistic_regression"], result.best
    provenance: dict[str, Any] = {
        "tool": "service/tune.py",
        "model": "logistic regression (standardised features, C=1) on (alert, candidate) pairs from an online "
                 "replay: the oracle grouping, then rounds grouped by the current model; Platt-calibrated on "
                 "out-of-fold log-odds",
        "training_data": list(training),
        "rounds": rounds,
        "pairs": result.pairs,
        "cross_validation": f"GroupKFold({N_SPLITS}, shuffled) by failure",
        "threshold": f"auto_link_at {result.auto_link_at}: the lowest threshold with out-of-fold decision precision "
                     f">= {result.target_precision} (reached: {lr['target_met']}; a decision: each alert's best-scoring "
                     f"candidate, right when it is a positive); suggest_at {result.suggest_at}: the lowest with "
                     f"decision precision >= {SUGGEST_PRECISION} over the decisions in [suggest_at, auto_link_at); "
                     f"the pair curve's thresholds are in metrics.*.pair_curve",
        "target_precision": result.target_precision,
        "seed": result.seed,
        "metrics": result.metrics,
        "best_model": best,
        "date": date,
    }
    if rounds is None:
        del provenance["rounds"]
    if best != "logistic_regression":
        provenance["note"] = (f"{best} has the higher out-of-fold PR-AUC ({result.metrics[best]['pr_auc']} against "
                              f"{lr['pr_auc']}); this file format carries a logistic model only")
    doc = _document(result, base, version, provenance)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(HEADER + yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True))
    return Weights.load(out)


# ------------------------------------------------------------------ the command

def main(datasets: list[Path], out: Path, *, target_precision: float = 0.97, seed: int = 0,
         base: Path | None = None, history: Sequence[Path] = (), rounds: int = 2, date: str | None = None) -> int:
    """Tune a weights file on `datasets` (their streams and truth; one without truth.json by
    its history split) and `history` (data sets used by their history split only, such as
    one whose stream is for evaluation). A short report goes to stderr; returns the exit code."""
    started = time.perf_counter()

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        start = Weights.load(base)
        settings = Settings()
        loaded = [load_dataset(Path(d), start, settings=settings) for d in datasets]
        loaded += [load_dataset(Path(d), start, split_history=True, settings=settings) for d in history]
        if not loaded:
            raise ValueError("no data sets to tune on")
        names = [ds.name for ds in loaded]
        if len(set(names)) != len(names):
            raise ValueError(f"data sets with the same name: {names}")
        pairs = collect_pairs(loaded, start, rounds=rounds, seed=seed, target_precision=target_precision,
                              log=say)
        result = fit(pairs, seed=seed, target_precision=target_precision)
        written = write_weights(result, start, out, training=names, date=date, rounds=rounds)
    except (OSError, ValueError) as exc:
        say(f"alertlink tune: {exc}")
        return 1
    say(f"{len(pairs)} pairs ({result.pairs['positives']} positive) from {', '.join(names)}")
    for name, m in result.metrics.items():
        say(f"  {name:20s} PR-AUC {m['pr_auc']:.4f}  Brier {m['brier']:.4f}  at {m['auto_link_at']:.4f}: "
            f"decision precision {m['precision']:.4f} recall {m['recall']:.4f}"
            + ("" if m["target_met"] else f"  (precision {target_precision} not reached)")
            + f"  [pair curve: at {m['pair_curve']['auto_link_at']:.4f}]")
    if result.best != "logistic_regression":
        say(f"  {result.best} is better; the file carries the logistic regression")
    say(f"auto_link_at {written.auto_link_at}, suggest_at {written.suggest_at}, version {written.version} "
        f"-> {out} ({time.perf_counter() - started:.1f}s)")
    return 0
