"""`service.tune`: training pairs from an online replay, the fit and its thresholds, the weights file."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import simulate
from service import tune
from service.settings import Settings
from service.weights import LINK_FEATURES, Weights



@pytest.fixture(scope="module", autouse=True)
def _clean_settings() -> Iterator[None]:
    """The developer's own ALERTLINK_* settings (rules dir, severity map) must not change a result."""
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("ALERTLINK_")]:
            mp.delenv(key)
        yield




@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny generated data sets: 60 past incidents, 8 failures in a day each."""
    root = tmp_path_factory.mktemp("tune-data")
    return [simulate(root / f"tiny{seed}", seed=seed, history=60, scenarios=8, days=1) for seed in (11, 12)]


@pytest.fixture(scope="module")
def pairs(tiny: list[Path]) -> tune.PairSet:
    base = Weights.load()
    return tune.collect_pairs([tune.load_dataset(d, base) for d in tiny], base, rounds=1)


@pytest.fixture(scope="module")
def result(pairs: tune.PairSet) -> tune.TuneResult:
    return tune.fit(pairs, seed=0, target_precision=0.9)


@pytest.fixture(scope="module")
def written(tiny: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same tuning twice, each into its own file."""
    out = tmp_path_factory.mktemp("tuned")
    first, second = out / "first.yaml", out / "second.yaml"
    for path in (first, second):
        assert tune.main(tiny, path, seed=3, rounds=1) == 0
    return first, second


# ------------------------------------------------------------------ pairs

def test_pairs_of_one_data_set(tiny: list[Path]) -> None:
    got = tune.training_pairs(tiny[0], Weights.load(), rounds=1)
    n = len(got)
    assert n > 0
    assert got.features.shape == (n, len(LINK_FEATURES))
    assert np.isfinite(got.features).all()
    assert got.labels.shape == got.groups.shape == got.datasets.shape == got.rounds.shape == (n,)
    assert set(got.labels.tolist()) == {0, 1}
    assert got.name == tiny[0].name
    assert set(got.rounds.tolist()) == {0, 1}  # the oracle pass, then one grouped by the model
    assert got.newest is not None


def test_features_in_link_features_order(tiny: list[Path]) -> None:
    got = tune.training_pairs(tiny[0], Weights.load(), rounds=0)
    column = dict(zip(LINK_FEATURES, got.features.T))
    assert set(column["same_scope"].tolist()) <= {0.0, 1.0}
    assert set(column["ongoing"].tolist()) <= {0.0, 1.0}
    assert (column["gap_e1"] <= column["gap_e10"] + 1e-12).all()  # exp(-gap) <= exp(-gap/10)
    assert (column["noise_rate"] > 0).all() and (column["noise_rate"] < 1).all()


def test_noise_is_never_a_positive_and_groups_name_failures(pairs: tune.PairSet, tiny: list[Path]) -> None:
    noise = np.array([g.split("/", 1)[1].startswith("noise:") for g in pairs.groups])
    assert noise.any() and (~noise).any()
    assert not pairs.labels[noise].any()
    truth = {d.name: set(json.loads((d / "truth.json").read_text())["scenarios"]) for d in tiny}
    for g in set(pairs.groups[~noise].tolist()):
        name, failure = g.split("/", 1)
        assert failure in truth[name]


def test_history_split_uses_incident_ids_as_truth(tiny: list[Path]) -> None:
    base = Weights.load()
    ds = tune.load_dataset(tiny[0], base, split_history=True)
    assert ds.name == f"{tiny[0].name}#history" and ds.split
    incidents = [json.loads(line) for line in (tiny[0] / "history" / "incidents.jsonl").read_text().splitlines()]
    assert ds.past_incidents == len(incidents) // 2
    assert {a.failure for a in ds.stream} - {None} <= {i["id"] for i in incidents}
    assert ds.stats.incidents <= ds.past_incidents
    got = tune.replay_pairs(ds, base, oracle=True)
    assert set(got.labels.tolist()) == {0, 1}


def test_pure_replay_groups_as_the_live_replay(tiny: list[Path]) -> None:
    """The scorer path copied without a database makes the same incidents as `alertlink replay`."""
    from service.replay import replay
    from service.rules import load_rules

    settings, weights = Settings(), Weights.load()
    for data in tiny:
        live = replay(data, settings, load_rules(None, settings.severity_words()), weights)
        ours = tune.online_grouping(data, weights, settings=settings)
        assert {p["alert_id"]: p["incident_id"] for p in live.predictions} == ours


# ------------------------------------------------------------------ fit

def test_folds_never_split_a_failure(pairs: tune.PairSet) -> None:
    splits = tune.folds(pairs, seed=0)
    assert len(splits) == tune.N_SPLITS
    tested = np.concatenate([test for _, test in splits])
    assert sorted(tested.tolist()) == list(range(len(pairs)))  # every pair tested once
    for train, test in splits:
        assert not set(pairs.groups[train].tolist()) & set(pairs.groups[test].tolist())


def test_pairs_name_their_alert(pairs: tune.PairSet) -> None:
    assert pairs.alerts is not None and pairs.alerts.shape == pairs.labels.shape
    # one alert's candidates come from one data set and one round, next to each other
    for alert in set(pairs.alerts.tolist()):
        where = np.flatnonzero(pairs.alerts == alert)
        assert (np.diff(where) == 1).all()
        assert len(set(pairs.datasets[where].tolist())) == len(set(pairs.rounds[where].tolist())) == 1
    assert len(set(pairs.alerts.tolist())) < len(pairs)  # alerts have several candidates


def test_thresholds_on_the_out_of_fold_decision_curve(pairs: tune.PairSet, result: tune.TuneResult) -> None:
    scores, labels = result.oof["logistic_regression"], result.labels
    d = tune.decisions(scores, labels, pairs.alerts)
    assert len(d.scores) == len(set(pairs.alerts.tolist()))  # type: ignore[union-attr]
    m = result.metrics["logistic_regression"]
    assert 0.0 <= result.suggest_at <= result.auto_link_at <= 1.0
    assert m["target_met"]
    precision, recall, n = d.precision_recall_at(result.auto_link_at)
    assert precision >= result.target_precision
    assert recall == pytest.approx(m["recall"], abs=1e-4) and n == m["links"]
    # the lowest such threshold: one grid step lower misses the target (or adds nothing)
    lower = result.auto_link_at - 10 ** -tune.DECIMALS
    p_lower, _, n_lower = d.precision_recall_at(lower)
    assert p_lower < result.target_precision or n_lower == n
    # suggestions: the decision band below auto_link_at is right at least half the time
    if result.suggest_at < result.auto_link_at:
        assert tune.band_precision(d.scores, d.correct, result.suggest_at, result.auto_link_at) >= 0.5
    # the pair curve stays in the metrics, picked on the pairs
    pair = m["pair_curve"]
    assert pair["auto_link_at"] == tune.threshold_at(scores, labels, result.target_precision)
    assert tune.precision_recall_at(scores, labels, pair["auto_link_at"])[0] >= result.target_precision


def test_decisions_take_each_alerts_best_candidate() -> None:
    scores = np.array([0.9, 0.4, 0.3, 0.8, 0.8, 0.2, 0.6])
    labels = np.array([0, 1, 0, 0, 1, 0, 1])
    alerts = np.array(["a", "a", "b", "c", "c", "d", "e"], dtype=object)
    d = tune.decisions(scores, labels, alerts)
    assert d.scores.tolist() == [0.9, 0.3, 0.8, 0.2, 0.6]
    assert d.correct.tolist() == [False, False, False, False, True]  # c: the first of equals
    assert d.needs_link.tolist() == [True, False, True, False, True]
    precision, recall, n = d.precision_recall_at(0.5)
    assert (precision, recall, n) == (pytest.approx(1 / 3), pytest.approx(1 / 3), 3)
    # positives ranked second never count for a decision: the pair curve reaches 0.3 lower down
    assert tune.threshold_at(d.scores, d.correct, 0.3) == 0.6
    assert tune.threshold_at(scores, labels, 0.3) == 0.2
    # without alerts every pair is its own decision: the pair curve
    alone = tune.decisions(scores, labels, None)
    assert alone.scores.tolist() == scores.tolist() and alone.correct.tolist() == labels.astype(bool).tolist()


def test_both_models_are_compared(result: tune.TuneResult) -> None:
    assert set(result.metrics) == set(tune.MODELS)
    for m in result.metrics.values():
        assert {"pr_auc", "brier", "auto_link_at", "precision", "recall", "suggest_at"} <= set(m)
        assert 0.0 <= m["pr_auc"] <= 1.0 and 0.0 <= m["brier"] <= 1.0
    assert result.best in tune.MODELS


def test_the_file_scores_as_the_calibrated_model(pairs: tune.PairSet, result: tune.TuneResult) -> None:
    """Platt scaling is folded into the coefficients: the file's score is the calibrated one."""
    weights = tune.as_weights(result, Weights.load())
    file_scores = np.array([weights.link_score(dict(zip(LINK_FEATURES, row)))[0] for row in pairs.features])
    assert 0.0 < file_scores.mean() < 1.0
    # calibrated: the mean score is near the share of positives
    assert file_scores.mean() == pytest.approx(pairs.labels.mean(), abs=0.05)


@pytest.mark.parametrize("scores, labels, precision, expected", [
    ([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 1.0, 0.8),
    ([0.1, 0.2, 0.8, 0.9], [0, 1, 0, 1], 1.0, 0.9),
    ([0.1, 0.2, 0.8, 0.9], [0, 1, 0, 1], 0.6, 0.2),       # 2 of 3 at 0.2
    ([0.5, 0.5, 0.9], [1, 0, 1], 0.7, 0.9),             # ties go together: 2 of 3 at 0.5
    ([0.12341, 0.9], [1, 0], 0.9, None),
    ([0.12341, 0.5], [1, 0], 0.5, 0.1234),              # on the file's grid, rounded down
])
def test_threshold_at(scores: list[float], labels: list[int], precision: float, expected: float | None) -> None:
    assert tune.threshold_at(np.array(scores), np.array(labels), precision) == expected


def test_fit_is_deterministic(pairs: tune.PairSet, result: tune.TuneResult) -> None:
    again = tune.fit(pairs, seed=0, target_precision=0.9)
    assert again.link == result.link and again.metrics == result.metrics
    assert (again.auto_link_at, again.suggest_at) == (result.auto_link_at, result.suggest_at)


def test_fit_needs_both_classes(pairs: tune.PairSet) -> None:
    one = tune.PairSet(pairs.features, np.zeros_like(pairs.labels), pairs.groups, pairs.datasets, pairs.rounds)
    with pytest.raises(ValueError, match="both classes"):
        tune.fit(one, seed=0, target_precision=0.9)


# ------------------------------------------------------------------ the file

def test_same_seed_gives_the_same_bytes(written: tuple[Path, Path]) -> None:
    first, second = written
    assert first.read_bytes() == second.read_bytes()


def test_written_file_loads_and_round_trips(written: tuple[Path, Path], tiny: list[Path]) -> None:
    path = written[0]
    weights = Weights.load(path)
    shipped = Weights.load()
    assert set(yaml.safe_load(path.read_text())) == set(yaml.safe_load(
        (Path(tune.__file__).parent / "defaults" / "weights.yaml").read_text()))
    assert set(weights.link.coefficients) == set(LINK_FEATURES)
    assert weights.suggest_at <= weights.auto_link_at
    assert (weights.context_at, weights.window_minutes, weights.similar) == \
        (shipped.context_at, shipped.window_minutes, shipped.similar)
    provenance = weights.provenance
    assert provenance["training_data"] == [d.name for d in tiny]
    assert provenance["seed"] == 3 and provenance["target_precision"] == 0.97
    assert set(provenance["metrics"]) == set(tune.MODELS)  # type: ignore[arg-type]
    date = str(provenance["date"])
    assert weights.version.startswith(date + ".")
    newest = max(json.loads(line)[k] for d in tiny for f in ("history/alerts.jsonl", "stream/alerts.jsonl")
                 for line in (d / f).read_text().splitlines() for k in ("fired_at", "resolved_at")
                 if json.loads(line).get(k))
    assert date == newest[:10]  # the data's date, not the wall clock's
    again = path.with_name("again.yaml")
    again.write_text(yaml.safe_dump(weights.model_dump(mode="json"), sort_keys=False))
    assert Weights.load(again) == weights


def test_write_weights_takes_a_date(result: tune.TuneResult, tmp_path: Path) -> None:
    weights = tune.write_weights(result, Weights.load(), tmp_path / "w.yaml", training=["a"], date="2030-01-02")
    assert weights.version == f"2030-01-02.{tune.model_hash(result)}"
    assert weights.provenance["date"] == "2030-01-02"
    assert weights.link == result.link


def test_main_reports_a_bad_data_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tune.main([tmp_path / "nothing"], tmp_path / "w.yaml") == 1
    assert "alertlink tune:" in capsys.readouterr().err
    assert not (tmp_path / "w.yaml").exists()


# ------------------------------------------------------------------ end to end

@pytest.mark.slow
def test_tune_on_two_worlds_then_replay_a_third(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from service.cli import app

    worlds = [simulate(tmp_path / f"w{seed}", seed=seed, history=200, scenarios=30, days=3) for seed in (201, 202)]
    third = simulate(tmp_path / "third", seed=203, history=40, scenarios=6, days=1)
    out = tmp_path / "tuned.yaml"
    assert tune.main(worlds, out, seed=0) == 0
    weights = Weights.load(out)
    assert weights.provenance["training_data"] == ["w201", "w202"]
    assert 0.0 < weights.suggest_at <= weights.auto_link_at < 1.0

    predictions = tmp_path / "predictions.jsonl"
    result = CliRunner().invoke(app, ["replay", str(third), "--out", str(predictions), "--weights", str(out)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    stream = (third / "stream" / "alerts.jsonl").read_text().splitlines()
    assert [p["alert_id"] for p in lines] == [json.loads(a)["id"] for a in stream]
    assert any(p["incident_id"] is not None for p in lines)
