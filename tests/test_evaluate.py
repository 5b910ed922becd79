"""`service.evaluate`: the project's own metrics against hand-computed values and against the
reference scorer (`../shared/bench/score.py`), the baselines, and the report."""
from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers import load_score, simulate

from service import evaluate as ev
from service.replay import replay
from service.rules import load_rules
from service.settings import Settings
from service.weights import Weights

SHARED = Path(__file__).resolve().parents[2] / "shared"
BENCH = SHARED / "bench"
DEV_SHOP = SHARED / "data" / "dev-shop"
EXTRA_KEYS = {"all_alerts_hit1", "all_alerts_hit5"}  # score.py reports hit@k for first alerts only




@pytest.fixture(scope="session")
def score() -> ModuleType:
    return load_score()


@pytest.fixture(scope="session")
def settings() -> Settings:
    # explicit values win over the developer's own ALERTLINK_* variables
    return Settings(rules_dir=None, weights_path=None, model_path=None, severity_map={}, default_severity="medium")


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated data set: 40 past incidents, 6 failures over a day."""
    return simulate(tmp_path_factory.mktemp("sim") / "small", seed=3, history=40, scenarios=6, days=1)


@pytest.fixture(scope="session")
def small_predictions(small_data: Path, settings: Settings) -> list[dict[str, Any]]:
    """alertlink's own replay of the small set (default rules and weights)."""
    return replay(small_data, settings, load_rules(None, settings.severity_words()), Weights.load(None)).predictions


@pytest.fixture(scope="session")
def small_reports(small_data: Path, settings: Settings) -> list[ev.DatasetReport]:
    return ev.evaluate([small_data], weights=None, rules=None, semantic=False, settings=settings)


def assert_same_scores(ours: dict[str, Any], reference: dict[str, Any]) -> None:
    """Every key of score.py's output, equal to 3 decimals; ours adds hit@k for all alerts."""
    assert set(ours) - set(reference) == (EXTRA_KEYS if "all_alerts_mrr" in reference else set())
    assert set(reference) <= set(ours)
    for key, want in reference.items():
        got = ours[key]
        if isinstance(want, int):
            assert got == want, (key, got, want)
        elif math.isnan(want):
            assert math.isnan(got), (key, got, want)
        else:
            assert abs(got - want) < 5e-4, (key, got, want)


# ---------------------------------------------------------------------------- B-cubed

TRUTH3 = {"a": "s1", "b": "s1", "c": "s2"}

BCUBED_CASES = [
    # (pred, truth, ids, (precision, recall, F1)) computed by hand
    pytest.param({"a": "X", "b": "X", "c": "Y"}, TRUTH3, ["a", "b", "c"], (1.0, 1.0, 1.0), id="perfect"),
    # per alert precision 2/3, 2/3, 1/3; recall 1 each
    pytest.param({"a": "X", "b": "X", "c": "X"}, TRUTH3, ["a", "b", "c"], (5 / 9, 1.0, 5 / 7), id="one-cluster"),
    # nothing linked: every alert a singleton; recall 1/2, 1/2, 1
    pytest.param({}, TRUTH3, ["a", "b", "c"], (1.0, 2 / 3, 4 / 5), id="nothing-linked"),
    pytest.param({"a": None, "b": None, "c": None}, TRUTH3, ["a", "b", "c"], (1.0, 2 / 3, 4 / 5), id="all-none"),
    # noise (truth None) is its own singleton: linking it costs precision only
    pytest.param({"a": "X", "b": "X", "c": "X"}, {"a": "s1", "b": None, "c": None}, ["a", "b", "c"],
                 (1 / 3, 1.0, 1 / 2), id="noise-linked"),
    # one failure split in three: recall 2/4, 2/4, 1/4, 1/4
    pytest.param({"a": "X", "b": "X", "c": "Y"}, {"a": "s", "b": "s", "c": "s", "d": "s"}, ["a", "b", "c", "d"],
                 (1.0, 3 / 8, 6 / 11), id="split"),
    # two singletons never share a cluster, even though both are None
    pytest.param({"a": None, "b": None}, {"a": None, "b": None}, ["a", "b"], (1.0, 1.0, 1.0), id="none-none"),
    # only `ids` count (d is left out): predicted {a, b} {c}, true {a} {b} {c}; precision 1/2, 1/2, 1
    pytest.param({"a": "X", "b": "X", "c": "Y", "d": "Y"}, {"a": "s1", "b": "s2", "c": "s3", "d": "s3"},
                 ["a", "b", "c"], (2 / 3, 1.0, 4 / 5), id="subset-of-ids"),
    # predicted and true labels live apart: a predicted "s1" is not the true "s1"
    pytest.param({"a": "s2", "b": "s1"}, {"a": "s1", "b": "s2"}, ["a", "b"], (1.0, 1.0, 1.0), id="label-names"),
    pytest.param({}, {}, [], (0.0, 0.0, 0.0), id="empty"),
]


@pytest.mark.parametrize(("pred", "truth", "ids", "want"), BCUBED_CASES)
def test_bcubed_hand_computed(pred: dict, truth: dict, ids: list[str], want: tuple[float, float, float],
                              score: ModuleType) -> None:
    assert ev.bcubed(pred, truth, ids) == pytest.approx(want, abs=1e-12)
    assert score.bcubed(pred, truth, ids) == pytest.approx(want, abs=1e-12)


def test_bcubed_equals_score_py_on_random_clusterings(score: ModuleType) -> None:
    rng = random.Random(11)
    for _ in range(200):
        ids = [f"a{i}" for i in range(rng.randint(1, 40))]
        pred = {i: rng.choice([None, "x", "y", "z", 1, 2]) for i in ids if rng.random() < 0.9}
        truth = {i: rng.choice([None, "s1", "s2", "s3"]) for i in ids}
        assert ev.bcubed(pred, truth, ids) == pytest.approx(score.bcubed(pred, truth, ids), abs=1e-12)


# ---------------------------------------------------------------------------- ranking

GRADES = {"h1": 2, "h2": 1, "h3": 1}
L2_3 = math.log2(3)

RANKING_CASES = [
    # (ranked, grades, (reciprocal rank, hit@1, hit@5, nDCG@5)) computed by hand; ideal gains 3, 1, 1
    pytest.param(["h1", "h2", "h3"], GRADES, (1.0, 1.0, 1.0, 1.0), id="ideal"),
    # a grade-1 incident first is no hit: only the best grade available counts
    pytest.param(["h2", "h1"], GRADES, (1 / 2, 0.0, 1.0, (1 + 3 / L2_3) / (3 + 1 / L2_3 + 1 / 2)),
                 id="best-grade-only"),
    pytest.param(["x", "h2", "h3"], GRADES, (0.0, 0.0, 0.0, (1 / L2_3 + 1 / 2) / (3 + 1 / L2_3 + 1 / 2)),
                 id="no-best-grade"),
    pytest.param([], GRADES, (0.0, 0.0, 0.0, 0.0), id="empty-list"),
    # the best grade at rank 6: in MRR (the whole list), not in hit@5 or nDCG@5
    pytest.param(["x1", "x2", "x3", "x4", "x5", "h1"], GRADES, (1 / 6, 0.0, 0.0, 0.0), id="rank-6"),
    # the ideal holds every graded incident, retrieved or not: one grade-2 of two found first
    pytest.param(["h1"], {"h1": 2, "h4": 2}, (1.0, 1.0, 1.0, 3 / (3 + 3 / L2_3)), id="full-ideal"),
    # only grade 1 exists: then grade 1 is the best, and a hit
    pytest.param(["x", "h2"], {"h2": 1}, (1 / 2, 0.0, 1.0, (1 / L2_3) / 1), id="grade-1-best"),
    # an incident listed twice counts twice (as score.py does): above 1
    pytest.param(["h1", "h1"], {"h1": 2, "h2": 1}, (1.0, 1.0, 1.0, (3 + 3 / L2_3) / (3 + 1 / L2_3)),
                 id="duplicate"),
    pytest.param([{"incident_id": "h1"}, {"incident_id": "h2"}], GRADES,
                 (1.0, 1.0, 1.0, (3 + 1 / L2_3) / (3 + 1 / L2_3 + 1 / 2)), id="dict-items"),
    pytest.param(["h1"], {}, (math.nan,) * 4, id="nothing-graded"),
]


@pytest.mark.parametrize(("ranked", "grades", "want"), RANKING_CASES)
def test_ranking_hand_computed(ranked: list, grades: dict, want: tuple, score: ModuleType) -> None:
    got = (ev.reciprocal_rank(ranked, grades), ev.hit_at(ranked, grades, 1), ev.hit_at(ranked, grades, 5),
           ev.ndcg_at_5(ranked, grades))
    assert got == pytest.approx(want, abs=1e-12, nan_ok=True)
    assert ev.ranking_row(ranked, grades) == pytest.approx(got, nan_ok=True)
    assert score.ranking(ranked, grades) == pytest.approx(want, abs=1e-12, nan_ok=True)


def test_ranking_equals_score_py_on_random_lists(score: ModuleType) -> None:
    rng = random.Random(5)
    pool = [f"h{i}" for i in range(12)]
    for _ in range(500):
        grades = {h: rng.choice([1, 2]) for h in rng.sample(pool, rng.randint(0, 8))}
        ranked = [rng.choice(pool) for _ in range(rng.randint(0, 9))]  # repeats included
        assert ev.ranking_row(ranked, grades) == pytest.approx(score.ranking(ranked, grades), abs=1e-12,
                                                                 nan_ok=True)


# ---------------------------------------------------------------------------- score_predictions

def test_scores_equal_score_py_on_alertlink_replay(small_data: Path, small_predictions: list[dict],
                                                   score: ModuleType) -> None:
    ours = ev.score_predictions(small_data, small_predictions)
    assert_same_scores(ours, score.score(small_data, small_predictions))
    assert ours["missing_predictions"] == 0 and ours["incidents_created"] > 0


@pytest.mark.parametrize("baseline", ["group-by-service", "seed-rules", "time-window"])
def test_scores_equal_score_py_on_its_baselines(small_data: Path, baseline: str, score: ModuleType) -> None:
    predictions = score.baseline_predictions(small_data, baseline)
    assert_same_scores(ev.score_predictions(small_data, predictions), score.score(small_data, predictions))


def test_scores_equal_score_py_on_partial_predictions(small_data: Path, small_predictions: list[dict],
                                                      score: ModuleType) -> None:
    """Missing predictions, and predictions without a `similar` list."""
    partial = [dict(p) for p in small_predictions[::2]]
    for p in partial[::3]:
        del p["similar"]
    ours = ev.score_predictions(small_data, partial)
    assert ours["missing_predictions"] == len(small_predictions) - len(partial)
    assert_same_scores(ours, score.score(small_data, partial))
    bare = [{"alert_id": p["alert_id"], "incident_id": None} for p in small_predictions]
    assert_same_scores(ev.score_predictions(small_data, bare), score.score(small_data, bare))


def test_all_alert_hits_are_means_over_every_incident_alert(small_data: Path, small_predictions: list[dict],
                                                             score: ModuleType) -> None:
    truth = json.loads((small_data / "truth.json").read_text())
    rows = [score.ranking(p["similar"], score.grades(truth, truth["alerts"][p["alert_id"]]))
            for p in small_predictions if truth["alerts"].get(p["alert_id"]) is not None]
    ours = ev.score_predictions(small_data, small_predictions)
    assert ours["all_alerts_hit1"] == pytest.approx(score.mean(r[1] for r in rows))
    assert ours["all_alerts_hit5"] == pytest.approx(score.mean(r[2] for r in rows))


# ---------------------------------------------------------------------------- baselines

def _alert(i: str, at: str, **labels: str) -> dict[str, Any]:
    return {"id": i, "fired_at": at, "labels": {"environment": "prod", **labels}}


def test_service_env_groups_by_target_and_environment_with_a_30_minute_gap() -> None:
    stream = [
        _alert("a1", "2024-01-01T00:00:00Z", service="api"),
        _alert("a2", "2024-01-01T00:29:00Z", service="api"),
        _alert("n1", "2024-01-01T00:30:00Z", node="node-1"),
        _alert("s1", "2024-01-01T00:31:00Z", service="api", environment="staging"),
        _alert("a3", "2024-01-01T00:58:00Z", service="api"),       # 29 min after a2: same group
        _alert("a4", "2024-01-01T01:29:00Z", service="api"),       # 31 min after a3: a new one
        _alert("n2", "2024-01-01T00:59:00Z", node="node-1", datacenter="dc1"),  # node wins over datacenter
        _alert("d1", "2024-01-01T01:00:00Z", datacenter="dc1"),
    ]
    g = dict(zip([a["id"] for a in stream], ev.service_env_groups(stream)))
    assert g["a1"] == g["a2"] == g["a3"]
    assert len({g["a1"], g["a4"], g["n1"], g["s1"], g["d1"]}) == 5
    assert g["n1"] == g["n2"]


def test_tfidf_similar_ranks_by_shared_rare_words() -> None:
    incidents = [{"id": "p1", "title": "Checkout latency", "root_cause": "database pool exhausted"},
                 {"id": "p2", "title": "Payments down", "root_cause": "provider outage"},
                 {"id": "p3", "title": "Checkout errors", "root_cause": "bad deploy"}]
    got = ev.tfidf_similar(incidents, ["Database pool exhausted on checkout", "payments provider outage",
                                       "nothing in common"])
    assert got[0][0] == "p1" and "p3" in got[0] and "p2" not in got[0]
    assert got[1] == ["p2"]
    assert got[2] == []


def test_service_env_baseline_covers_the_stream(small_data: Path, score: ModuleType) -> None:
    predictions = ev.service_env_predictions(small_data)
    stream = list(ev.read_jsonl(small_data / "stream" / "alerts.jsonl"))
    assert [p["alert_id"] for p in predictions] == [a["id"] for a in stream]
    assert all(p["incident_id"] is not None and len(p["similar"]) <= ev.SIMILAR_TOP for p in predictions)
    # grouped exactly as score.py's group-by-service baseline (the same rule, 30 minutes)
    theirs = score.baseline_group_by_service(stream)
    ours = {p["alert_id"]: p["incident_id"] for p in predictions}
    ids = list(ours)
    assert ev.bcubed(ours, theirs, ids) == pytest.approx((1.0, 1.0, 1.0))
    assert_same_scores(ev.score_predictions(small_data, predictions), score.score(small_data, predictions))


# ---------------------------------------------------------------------------- the report

def test_evaluate_reports_every_column_and_key(small_reports: list[ev.DatasetReport], small_data: Path,
                                               small_predictions: list[dict], score: ModuleType) -> None:
    (report,) = small_reports
    assert report.name == small_data.name and report.path == small_data
    assert tuple(report.columns) == ev.COLUMNS
    reference_keys = set(score.score(small_data, small_predictions))
    for column, metrics in report.columns.items():
        assert set(metrics) == reference_keys | EXTRA_KEYS, column
        assert metrics["missing_predictions"] == 0 and metrics["true_incidents"] == 6
    assert report.columns["alertlink"] == ev.score_predictions(small_data, small_predictions)
    # the seed design has no scorer: it never answers with a similar incident
    assert report.columns["seed-rules"]["first_alert_mrr"] == 0.0
    assert set(report.seconds) == set(ev.COLUMNS)


def test_format_table_shows_every_metric_row(small_reports: list[ev.DatasetReport]) -> None:
    table = ev.format_table(small_reports)
    lines = table.splitlines()
    assert lines[0].startswith(f"{small_reports[0].name}: ")
    assert lines[1].split() == ["metric", *ev.COLUMNS]
    for _, label in ev.ROWS:
        label = label.format(true_incidents=6)
        row = next((line for line in lines if line.startswith(label + " ")), None)
        assert row is not None, label
        assert len(row[len(label):].split()) == len(ev.COLUMNS), row
    assert "incidents opened (true 6)" in table
    assert "nan" not in table.lower()
    assert len(lines) == 2 + len(ev.ROWS)


def test_json_round_trips(small_reports: list[ev.DatasetReport]) -> None:
    doc = ev.as_json(small_reports)
    text = json.dumps(doc, allow_nan=False)
    assert json.loads(text) == doc
    again = ev.from_json(json.loads(text))
    assert ev.as_json(again) == doc
    assert ev.format_table(again) == ev.format_table(small_reports)
    assert doc["datasets"][0]["columns"]["alertlink"]["bcubed_f1"] == small_reports[0].columns["alertlink"]["bcubed_f1"]


def test_nan_is_null_in_json_and_na_in_the_table() -> None:
    report = ev.DatasetReport("x", Path("x"), {"alertlink": {"alerts": 1, "first_alert_mrr": math.nan}})
    assert ev.as_json([report])["datasets"][0]["columns"]["alertlink"]["first_alert_mrr"] is None
    assert "n/a" in ev.format_table([report])
    assert math.isnan(ev.from_json(ev.as_json([report]))[0].columns["alertlink"]["first_alert_mrr"])


def test_main_prints_json_and_timings(small_data: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("ALERTLINK_")]:
        monkeypatch.delenv(key)
    assert ev.main([small_data], None, None, True, False) == 0
    out, err = capsys.readouterr()
    (dataset,) = json.loads(out)["datasets"]
    assert tuple(dataset["columns"]) == ev.COLUMNS
    assert "alertlink" in err and "total" in err


def test_main_refuses_a_folder_that_is_no_data_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ev.main([tmp_path], None, None, False, False) == 2
    out, err = capsys.readouterr()
    assert out == "" and "not a data set" in err


# ---------------------------------------------------------------------------- dev-shop

@pytest.mark.slow
def test_dev_shop_scores_equal_score_py(settings: Settings, score: ModuleType) -> None:
    predictions = replay(DEV_SHOP, settings, load_rules(None, settings.severity_words()),
                         Weights.load(None)).predictions
    assert_same_scores(ev.score_predictions(DEV_SHOP, predictions), score.score(DEV_SHOP, predictions))
