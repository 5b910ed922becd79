"""`alertlink replay`: a simulated data set through the CLI, then the shared dev-shop data set scored."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import load_score, simulate
from typer.testing import CliRunner

from service.cli import app

SHARED = Path(__file__).resolve().parents[2] / "shared"
BENCH = SHARED / "bench"
DEV_SHOP = SHARED / "data" / "dev-shop"
DEFAULT_RULES = Path(__file__).resolve().parents[1] / "service" / "defaults"


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_replay(data: Path, out: Path, *extra: str) -> list[dict[str, Any]]:
    # the developer's own ALERTLINK_* settings (rules dir, severity map) must not change the result
    clean_env = {k: None for k in os.environ if k.startswith("ALERTLINK_")}
    result = CliRunner(env=clean_env).invoke(app, ["replay", str(data), "--out", str(out), *extra])
    assert result.exit_code == 0, f"alertlink replay failed ({result.exit_code}): {result.output}" + (
        f"\n{result.exception!r}" if result.exception else "")
    return load_jsonl(out)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated data set: 40 past incidents, 6 failures over a day."""
    return simulate(tmp_path_factory.mktemp("sim") / "data", seed=3, history=40, scenarios=6, days=1)


@pytest.fixture(scope="session")
def small_predictions(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two replays of the same data set with the default rules."""
    out = tmp_path_factory.mktemp("replay")
    first, second = out / "first.jsonl", out / "second.jsonl"
    run_replay(small_data, first)
    run_replay(small_data, second)
    return first, second


def test_replay_is_deterministic(small_predictions: tuple[Path, Path]) -> None:
    first, second = small_predictions
    assert first.read_bytes() == second.read_bytes()


def test_one_prediction_per_stream_alert_in_order(small_data: Path, small_predictions: tuple[Path, Path]) -> None:
    stream = load_jsonl(small_data / "stream" / "alerts.jsonl")
    predictions = load_jsonl(small_predictions[0])
    assert [p["alert_id"] for p in predictions] == [a["id"] for a in stream]
    assert all(set(p) == {"alert_id", "incident_id", "similar"} for p in predictions)
    assert all(isinstance(p["similar"], list) for p in predictions)


def test_linked_alerts_name_new_incidents_as_strings(small_data: Path,
                                                      small_predictions: tuple[Path, Path]) -> None:
    predictions = load_jsonl(small_predictions[0])
    history = {i["id"] for i in load_jsonl(small_data / "history" / "incidents.jsonl")}
    linked = [p for p in predictions if p["incident_id"] is not None]
    assert linked, "the default rules linked no stream alert at all"
    assert all(isinstance(p["incident_id"], str) for p in linked), linked
    # past incidents are resolved: no stream alert may be linked into one
    assert not [p for p in linked if p["incident_id"] in history]


def test_rules_that_decide_nothing_link_nothing(small_data: Path, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    for path in DEFAULT_RULES.glob("*.yaml"):
        shutil.copy(path, rules / path.name)
    incident_rules = yaml.safe_load((rules / "incident-rules.yaml").read_text())
    incident_rules["auto_create"]["enabled"] = False
    incident_rules["auto_link"]["enabled"] = False
    (rules / "incident-rules.yaml").write_text(yaml.safe_dump(incident_rules))
    (rules / "aggregation-rules.yaml").write_text(yaml.safe_dump({"rules": []}))

    predictions = run_replay(small_data, tmp_path / "predictions.jsonl", "--rules", str(rules), "--rules-only")
    stream = load_jsonl(small_data / "stream" / "alerts.jsonl")
    assert [p["alert_id"] for p in predictions] == [a["id"] for a in stream]
    assert [p["incident_id"] for p in predictions if p["incident_id"] is not None] == []




@pytest.mark.slow
def test_dev_shop_replay_beats_the_seed_rules_baseline(tmp_path: Path) -> None:
    score = load_score()
    started = time.perf_counter()
    predictions = run_replay(DEV_SHOP, tmp_path / "predictions.jsonl")
    elapsed = time.perf_counter() - started

    ours = score.score(DEV_SHOP, predictions)
    baseline = score.score(DEV_SHOP, score.baseline_predictions(DEV_SHOP, "seed-rules"))
    print(f"\ndev-shop replay {elapsed:.1f}s: incident_bcubed_f1 {ours['incident_bcubed_f1']:.3f} "
          f"(seed-rules baseline {baseline['incident_bcubed_f1']:.3f}); bcubed_f1 {ours['bcubed_f1']:.3f} "
          f"(baseline {baseline['bcubed_f1']:.3f})")
    assert ours["missing_predictions"] == 0
    assert len(predictions) == ours["alerts"]
    assert ours["incident_bcubed_f1"] >= baseline["incident_bcubed_f1"], (ours, baseline)
