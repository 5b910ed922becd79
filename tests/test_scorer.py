"""The scorer's pure parts: `link_features` for one (alert, candidate) pair, the weights
file (`Weights.load`, `link_score`) and `scored_decision`. No database.

Alerts fire at 05:00 (factories' day) unless told; a candidate's members are written as
`member(at, resolved, ...)`. Feature values are written as the formulas in
`service/features.py` would compute them, so a changed formula fails here by name.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import yaml

from factories import alert, t
from service.decide import Link, Open, Scored, scored_decision
from service.features import Candidate, CooccurrenceStats, Member, Vocabulary, link_features
from service.weights import LINK_FEATURES, Weights, WeightsError

PROD = {"alertname": "HighLatency", "service": "checkout", "environment": "prod"}
SHIPPED = Path(__file__).resolve().parents[1] / "service" / "defaults" / "weights.yaml"


def member(at: str = "04:50", resolved: str | None = None, *, fingerprint: str = "fp-9",
           title: str = "HighLatency", labels: Mapping[str, str] | None = None) -> Member:
    return Member(fingerprint, title, "high", dict(PROD if labels is None else labels), t(at),
                  t(resolved) if resolved else None)


def incident_of(*members: Member) -> Candidate:
    return Candidate(7, None, tuple(members))


def stats_of(*incidents: Sequence[str], noise: Sequence[str] = ()) -> CooccurrenceStats:
    """Statistics of past incidents given as lists of alertnames (all on service checkout)."""
    stats = CooccurrenceStats(Vocabulary())
    for names in incidents:
        stats.add_incident(({"alertname": n, "service": "checkout"}, n) for n in names)
    for n in noise:
        stats.add_noise({"alertname": n, "service": "checkout"}, n)
    return stats


EMPTY = stats_of()


def recency(gap: float, pace: float, quiet: float, ongoing: bool, size: int = 1) -> dict[str, float]:
    """The time features as features.py defines them, from minutes."""
    return {
        "ended": 0.0 if ongoing else math.log1p(quiet),
        "ongoing": 1.0 if ongoing else 0.0,
        "quiet_e2": math.exp(-quiet / 2),
        "relgap": math.log((gap + 0.25) / (pace + 0.25)),
        "log_size": math.log(size),
        "gap_e1": math.exp(-gap),
        "gap_e10": math.exp(-gap / 10),
    }


def subset(features: Mapping[str, float], keys: Sequence[str]) -> dict[str, float]:
    return {k: features[k] for k in keys}


# ------------------------------------------------------------ link_features: whole dict

def test_features_of_a_close_related_incident_whole_dict():
    features = link_features(alert(labels=PROD), incident_of(member("04:50")), EMPTY)
    assert features == pytest.approx({
        **recency(gap=10, pace=5, quiet=10, ongoing=True),
        "same_scope": 1.0, "fingerprint": 0.0, "shared_label": 1.0,
        # same kind (alertname|target), name and target: 1 even with no history; pmi has no evidence
        "cooc_kind": 1.0, "cooc_name": 1.0, "cooc_target": 1.0,
        "pmi_kind": 0.0, "pmi_name": 0.0, "pmi_target": 0.0,
        "noise_rate": 0.5,  # (0 + 0.5) / (0 + 0 + 1): never seen
    })
    assert set(features) == set(LINK_FEATURES) - {"semantic"}


# ------------------------------------------------------------ link_features: time

TIME = [
    ("still firing, 10 min ago", [member("04:50")], recency(gap=10, pace=5, quiet=10, ongoing=True)),
    ("same minute", [member("05:00")], recency(gap=0, pace=5, quiet=0, ongoing=True)),
    ("candidate newer than the alert: gap 0", [member("05:03")], recency(gap=0, pace=5, quiet=0, ongoing=True)),
    ("ended 20 min ago", [member("04:30", "04:40")], recency(gap=30, pace=5, quiet=20, ongoing=False)),
    ("resolved later than the alert: still ongoing then", [member("04:30", "05:10")],
     recency(gap=30, pace=5, quiet=30, ongoing=True)),
    ("one of two still firing", [member("04:30", "04:40"), member("04:50", fingerprint="fp-8")],
     recency(gap=10, pace=20, quiet=10, ongoing=True, size=2)),
    ("a fast burst then silence: its own pace 1 min", [member("04:20"), member("04:21", fingerprint="fp-8"),
                                                         member("04:22", fingerprint="fp-7")],
     recency(gap=38, pace=1, quiet=38, ongoing=True, size=3)),
    ("both ended: quiet since the last resolve", [member("04:00", "04:10"), member("04:20", "04:45",
                                                                                     fingerprint="fp-8")],
     recency(gap=40, pace=20, quiet=15, ongoing=False, size=2)),
]


@pytest.mark.parametrize("members, expected", [r[1:] for r in TIME], ids=[r[0] for r in TIME])
def test_time_features(members, expected):
    features = link_features(alert(labels=PROD), incident_of(*members), EMPTY)
    assert subset(features, list(expected)) == pytest.approx(expected)


# ------------------------------------------------------- link_features: labels and scope

STAGING = PROD | {"environment": "staging"}
LABELS = [
    ("same service and environment", PROD, [PROD], {"same_scope": 1.0, "shared_label": 1.0}),
    ("other environment: scope mismatch", PROD, [STAGING], {"same_scope": 0.0, "shared_label": 1.0}),
    ("alert without environment: scope unknown, ok", {"alertname": "HighLatency", "service": "checkout"},
     [STAGING], {"same_scope": 1.0, "shared_label": 1.0}),
    ("candidate without environment: ok", PROD, [{"alertname": "X", "service": "checkout"}],
     {"same_scope": 1.0, "shared_label": 1.0}),
    ("environment among the candidate's", PROD, [STAGING, PROD], {"same_scope": 1.0, "shared_label": 1.0}),
    ("only environment equal: not a shared label", PROD, [{"alertname": "X", "service": "cart",
                                                           "environment": "prod"}],
     {"same_scope": 1.0, "shared_label": 0.0}),
    ("node equal", {"alertname": "A", "node": "n1"}, [{"alertname": "B", "node": "n1"}],
     {"same_scope": 1.0, "shared_label": 1.0}),
    ("alert lacks the label", {"alertname": "A"}, [PROD], {"same_scope": 1.0, "shared_label": 0.0}),
]


@pytest.mark.parametrize("labels, member_labels, expected", [r[1:] for r in LABELS], ids=[r[0] for r in LABELS])
def test_label_features(labels, member_labels, expected):
    members = [member("04:50", fingerprint=f"fp-{i}", labels=ls) for i, ls in enumerate(member_labels)]
    assert subset(link_features(alert(labels=labels), incident_of(*members), EMPTY), list(expected)) == expected


@pytest.mark.parametrize("fingerprints, expected", [
    (["fp-1"], 1.0), (["fp-2", "fp-1"], 1.0), (["fp-2"], 0.0),
], ids=["seen", "seen in one of two", "not seen"])
def test_fingerprint_seen(fingerprints, expected):
    members = [member("04:50", fingerprint=f) for f in fingerprints]  # the alert's is fp-1
    assert link_features(alert(labels=PROD), incident_of(*members), EMPTY)["fingerprint"] == expected


# ------------------------------------------------------------- link_features: co-occurrence

COOC = ("cooc_kind", "cooc_name", "pmi_kind", "pmi_name")


def on_checkout(name: str) -> dict[str, str]:
    return {"alertname": name, "service": "checkout"}


COOCCURRENCE = [
    ("same kind: cosine 1 with no history, pmi no evidence", stats_of(), "A", "A",
     {"cooc_kind": 1.0, "cooc_name": 1.0, "pmi_kind": 0.0, "pmi_name": 0.0}),
    ("unknown kinds: 0", stats_of(["C"], ["D"]), "A", "B",
     {"cooc_kind": 0.0, "cooc_name": 0.0, "pmi_kind": 0.0, "pmi_name": 0.0}),
    ("one kind unknown: 0", stats_of(["A"], ["A"]), "A", "B",
     {"cooc_kind": 0.0, "cooc_name": 0.0, "pmi_kind": 0.0, "pmi_name": 0.0}),
    # A and B in 2 of 4 incidents each, never together: log(0.5 / (2*2/4 + 0.5)) = -log 3
    ("never together, both common: negative pmi", stats_of(["A"], ["A"], ["B"], ["B"]), "A", "B",
     {"cooc_kind": 0.0, "cooc_name": 0.0, "pmi_kind": -math.log(3), "pmi_name": -math.log(3)}),
    # together in 2 of 3: Ochiai 2 / sqrt(3 * 3); pmi log(2.5 / (2*2/3 + 0.5))
    ("often together: positive", stats_of(["A", "B"], ["A", "B"], ["C"]), "A", "B",
     {"cooc_kind": 2 / 3, "cooc_name": 2 / 3, "pmi_kind": math.log(2.5 / (4 / 3 + 0.5)),
      "pmi_name": math.log(2.5 / (4 / 3 + 0.5))}),
]


@pytest.mark.parametrize("stats, alert_name, member_name, expected", [r[1:] for r in COOCCURRENCE],
                         ids=[r[0] for r in COOCCURRENCE])
def test_cooccurrence_features(stats, alert_name, member_name, expected):
    features = link_features(alert(labels=on_checkout(alert_name), title=alert_name),
                             incident_of(member(title=member_name, labels=on_checkout(member_name))), stats)
    assert subset(features, COOC) == pytest.approx(expected)


def test_cooccurrence_takes_the_best_member():
    stats = stats_of(["A", "B"], ["A", "B"], ["C"])
    members = [member(title="C", labels=on_checkout("C")), member(title="B", labels=on_checkout("B"))]
    features = link_features(alert(labels=on_checkout("A"), title="A"), incident_of(*members), stats)
    assert features["cooc_kind"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("noise, linked, expected", [
    (0, 0, 0.5), (3, 0, 3.5 / 4), (0, 3, 0.5 / 4), (1, 1, 1.5 / 3),
], ids=["never seen", "only noise", "only in incidents", "half and half"])
def test_noise_rate(noise, linked, expected):
    stats = stats_of(*[["A"]] * linked, noise=["A"] * noise)
    features = link_features(alert(labels=on_checkout("A"), title="A"), incident_of(member()), stats)
    assert features["noise_rate"] == pytest.approx(expected)


# ------------------------------------------------------------------ the weights file

def shipped() -> dict:
    return yaml.safe_load(SHIPPED.read_text())


def test_shipped_weights_load():
    w = Weights.load()
    assert (w.version, w.suggest_at <= w.auto_link_at, set(w.link.coefficients) <= set(LINK_FEATURES),
            set(w.similar.weights)) == (shipped()["version"], True, True, {"kinds", "semantic"})
    assert Weights.load(SHIPPED) == w


def test_link_score_ranks_a_close_related_candidate_first():
    w = Weights.load()
    close = link_features(alert(labels=PROD), incident_of(member("04:59")), EMPTY)
    distant = link_features(
        alert(labels=PROD),
        incident_of(member("03:10", "03:20", fingerprint="fp-5", title="DiskFull",
                           labels={"alertname": "DiskFull", "service": "db", "environment": "staging"})),
        EMPTY)
    (close_score, close_parts), (distant_score, _) = w.link_score(close), w.link_score(distant)
    assert close_score > distant_score
    assert set(close_parts) == set(w.link.coefficients)  # every coefficient explains its share


def change(data: dict, path: str, value: object) -> dict:
    """`data` with the value at a dotted path set (or deleted, for value DELETE)."""
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()
BAD_WEIGHTS = [
    ("unknown link feature", "link.coefficients.gap_e5", 1.0, "gap_e5"),
    ("unknown similarity feature", "similar.weights.colour", 1.0, "colour"),
    ("suggest_at above auto_link_at", "suggest_at", 0.8, "suggest_at"),
    ("unknown top-level key", "auto_link", 0.5, "auto_link"),
    ("unknown key in link", "link.intercep", 1.0, "intercep"),
    ("a probability above 1", "context_at", 1.5, "context_at"),
    ("missing field", "window_minutes", DELETE, "window_minutes"),
    ("window of 0 minutes", "window_minutes", 0, "window_minutes"),
    ("empty version", "version", "", "version"),
    ("a coefficient that is no number", "link.coefficients.gap_e1", "high", "gap_e1"),
]


@pytest.mark.parametrize("path, value, named", [r[1:] for r in BAD_WEIGHTS], ids=[r[0] for r in BAD_WEIGHTS])
def test_bad_weights_file_fails_naming_the_field(tmp_path, path, value, named):
    bad = tmp_path / "weights.yaml"
    bad.write_text(yaml.safe_dump(change(shipped(), path, value)))
    with pytest.raises(WeightsError) as exc:
        Weights.load(bad)
    assert str(bad) in str(exc.value) and named in str(exc.value)


@pytest.mark.parametrize("text", ["link: [unclosed", "just a string", ""], ids=["bad yaml", "not a mapping", "empty"])
def test_unreadable_weights_file(tmp_path, text):
    bad = tmp_path / "weights.yaml"
    bad.write_text(text)
    with pytest.raises(WeightsError, match=str(bad)):
        Weights.load(bad)


# ------------------------------------------------------------------ scored_decision

ALERT = alert(id=20, severity="medium", labels=PROD, at="05:00")
PARTS = {"gap_e1": 4.0}


def to_incident(incident_id: int, score: float) -> Scored:
    return Scored(incident_id, None, score, PARTS, ("labels",))


def to_alert(alert_id: int, score: float, title: str = "DiskFull", severity: str = "high") -> Scored:
    return Scored(None, alert_id, score, PARTS, ("co-occurrence",), title, severity)


def link(s: Scored) -> Link:
    return Link(s.incident_id, "scorer", s.describe(), s.score, PARTS)


def pair(s: Scored, severity: str = "high") -> Open:
    return Open(rule="scorer", title=f"[Correlated] {s.title}", severity=severity,
                summary=f"Opened from two related alerts ({s.describe()})", aggregation_key=None,
                alert_ids=(s.alert_id, 20), opened_at=t("05:00"), reason=s.describe(), score=s.score,
                components=PARTS)


SCORED = [
    ("nothing scored", [], None),
    ("best incident at the threshold: link", [to_incident(7, 0.6), to_incident(8, 0.4)], link(to_incident(7, 0.6))),
    ("the best incident wins", [to_incident(7, 0.7), to_incident(8, 0.9)], link(to_incident(8, 0.9))),
    ("an unlinked alert: open the pair, older alert first", [to_alert(12, 0.8), to_incident(7, 0.5)],
     pair(to_alert(12, 0.8))),
    ("the pair takes the higher severity (the new alert's medium)", [to_alert(12, 0.8, severity="low")],
     pair(to_alert(12, 0.8, severity="low"), severity="medium")),
    ("below the threshold: none", [to_incident(7, 0.59), to_alert(12, 0.5)], None),
    ("tie: an incident is preferred", [to_alert(12, 0.8), to_incident(7, 0.8)], link(to_incident(7, 0.8))),
    ("tie, incident first: still the incident", [to_incident(7, 0.8), to_alert(12, 0.8)],
     link(to_incident(7, 0.8))),
]


@pytest.mark.parametrize("scored, expected", [r[1:] for r in SCORED], ids=[r[0] for r in SCORED])
def test_scored_decision(scored, expected):
    assert scored_decision(ALERT, scored, 0.6) == expected


def test_describe_names_target_and_evidence():
    assert (to_incident(7, 0.61).describe(), to_alert(12, 0.8).describe(),
            Scored(7, None, 0.6, {}, ()).describe()) == (
        "score 0.61 for #7 (labels)", "score 0.80 for alert 12 (co-occurrence)",
        "score 0.60 for #7 (no single strong match)")
