"""Evaluate alertlink on labelled data sets (`../shared/bench/DATASET.md`) beside two baselines.

Every number here is computed by the project itself; `../shared/bench/score.py` is the
reference it is tested against (equal to 3 decimals on the same predictions), never imported.

- Grouping: B-cubed precision / recall / F1 over all stream alerts and over incident alerts
  (an unlinked alert, and a noise alert, are each their own singleton), incidents opened
  against the true count, noise alerts linked, incidents made of noise only.
- Retrieval, for each failure in the stream: past incidents of the same failure mode on the
  same component have grade 2, the same mode elsewhere grade 1. MRR and hit@k count only
  items of the best grade available as hits; nDCG@5 uses gains 2^g - 1 and an ideal built
  from every graded past incident, retrieved or not.

Columns: `alertlink` (a replay with the given rules and weights), `seed-rules` (a replay with
the seed design's rules and no scorer, so no similar incidents either) and `service-env`
(Alertmanager-style grouping by service/node/datacenter and environment while alerts keep
coming within 30 minutes, with tf-idf title similarity).
"""
from __future__ import annotations

import functools
import json
import math
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import ndcg_score

from service.replay import read_jsonl, replay
from service.rules import RulesError, load_rules, seed_rules_dir
from service.settings import Settings
from service.weights import Weights, WeightsError

Metrics = dict[str, float | int]

COLUMNS = ("alertlink", "seed-rules", "service-env")
SERVICE_ENV_GAP_S = 1800.0  # a (service, environment) group ends after 30 minutes without an alert
SIMILAR_TOP = 10


# ---------------------------------------------------------------------------- grouping

def bcubed(pred: Mapping[str, Hashable | None], truth: Mapping[str, Hashable | None],
           ids: Sequence[str]) -> tuple[float, float, float]:
    """B-cubed (precision, recall, F1) over `ids` (distinct); None, or no entry, is a singleton.

    Per alert, precision is the share of its predicted cluster that truly belongs with it and
    recall the share of its true cluster that was put with it. Summed per (predicted, true)
    cell of the contingency table: precision = sum(n_pt^2 / n_p) / N, recall = sum(n_pt^2 / n_t) / N.
    """
    def labels(mapping: Mapping[str, Hashable | None]) -> list[tuple[str, Hashable]]:
        return [("single", i) if mapping.get(i) is None else ("cluster", mapping[i]) for i in ids]

    p, t = labels(pred), labels(truth)
    n_p, n_t, n_pt = Counter(p), Counter(t), Counter(zip(p, t))
    n = len(ids) or 1
    precision = sum(c * c / n_p[pl] for (pl, _), c in n_pt.items()) / n
    recall = sum(c * c / n_t[tl] for (_, tl), c in n_pt.items()) / n
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


# ---------------------------------------------------------------------------- retrieval

def _ids(ranked: Iterable[Any]) -> list[str]:
    """A `similar` list: incident ids, or objects with an `incident_id`."""
    return [r["incident_id"] if isinstance(r, dict) else r for r in ranked]


def _best(grades: Mapping[str, int]) -> int:
    return max(grades.values(), default=0)


def reciprocal_rank(ranked: Sequence[Any], grades: Mapping[str, int]) -> float:
    """1 / rank of the first item of the BEST grade available (a lower grade is no hit), over the
    whole list; 0 if none is listed; NaN if no past incident is graded (nothing to find).
    sklearn has no MRR (and its ranking metrics treat any positive grade as relevant)."""
    best = _best(grades)
    if best <= 0:
        return math.nan
    return next((1.0 / (k + 1) for k, i in enumerate(_ids(ranked)) if grades.get(i, 0) == best), 0.0)


def hit_at(ranked: Sequence[Any], grades: Mapping[str, int], k: int) -> float:
    """1.0 if an item of the best grade available is among the first `k`; NaN as reciprocal_rank."""
    best = _best(grades)
    if best <= 0:
        return math.nan
    return float(any(grades.get(i, 0) == best for i in _ids(ranked)[:k]))


def _dcg(gains: Iterable[float]) -> float:
    return sum(g / math.log2(k + 2) for k, g in enumerate(gains))


def ndcg_at_5(ranked: Sequence[Any], grades: Mapping[str, int]) -> float:
    """nDCG@5 with gains 2^g - 1, the ideal built from ALL graded past incidents; NaN if none.

    sklearn's `ndcg_score` uses the relevance itself as the gain and builds the ideal from the
    items it is given only, and it averages the gains of tied scores. So it is given: gains
    2^g - 1 as `y_true`; one column per listed position (top 5) scored 5, 4, ...; zero-gain
    padding up to 5 positions scored just below (else unlisted items, all tied, would be
    averaged into the top 5); then every graded incident not listed, scored lowest, so the
    ideal sees all of them. A top 5 that lists an incident twice counts it twice (as score.py
    does) but cannot be one column per incident: that case is computed by hand.
    """
    best = _best(grades)
    if best <= 0:
        return math.nan
    top = _ids(ranked)[:5]
    gain = {i: 2.0 ** g - 1 for i, g in grades.items()}
    if len(set(top)) < len(top):
        ideal = sorted(gain.values(), reverse=True)[:5]
        return _dcg(gain.get(i, 0.0) for i in top) / _dcg(ideal)
    rest = [g for i, g in gain.items() if i not in top and g > 0]
    y_true = [gain.get(i, 0.0) for i in top] + [0.0] * (5 - len(top)) + rest
    y_score = [5.0 - k for k in range(len(top))] + [0.5] * (5 - len(top)) + [0.0] * len(rest)
    return float(ndcg_score([y_true], [y_score], k=5))


def ranking_row(ranked: Sequence[Any], grades: Mapping[str, int]) -> tuple[float, float, float, float]:
    """(reciprocal rank, hit@1, hit@5, nDCG@5) of one `similar` list."""
    return (reciprocal_rank(ranked, grades), hit_at(ranked, grades, 1), hit_at(ranked, grades, 5),
            ndcg_at_5(ranked, grades))


def _mean(values: Iterable[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def scenario_grades(truth: dict[str, Any], sid: str) -> dict[str, int]:
    """Grades of past incidents for one failure: `similar`, or derived from `history_modes`
    (large data sets leave `similar` out). Cached into `truth`."""
    scenario = truth["scenarios"][sid]
    if "similar" not in scenario:
        scenario["similar"] = {h: (2 if root == scenario["root"] else 1)
                               for h, (mode, root) in truth.get("history_modes", {}).items()
                               if mode == scenario["mode"]}
    return scenario["similar"]


# ---------------------------------------------------------------------------- scoring

def score_predictions(data: Path, predictions: list[dict[str, Any]]) -> Metrics:
    """The metrics of score.py's `score()`, same keys and values, plus `all_alerts_hit1` and
    `all_alerts_hit5` (score.py reports hit@k for first alerts only)."""
    truth = json.loads((data / "truth.json").read_text())
    stream = list(read_jsonl(data / "stream" / "alerts.jsonl"))
    ids = [a["id"] for a in stream]
    by_id = {p["alert_id"]: p for p in predictions}
    pred = {i: by_id.get(i, {}).get("incident_id") for i in ids}
    true = truth["alerts"]
    incident_ids = [i for i in ids if true.get(i) is not None]
    noise_ids = [i for i in ids if true.get(i) is None]

    p_all, r_all, f_all = bcubed(pred, true, ids)
    p_inc, r_inc, f_inc = bcubed(pred, true, incident_ids)
    members: dict[Any, list[str]] = defaultdict(list)
    for i in ids:
        if pred[i] is not None:
            members[pred[i]].append(i)
    noise_only = [c for c, alerts in members.items() if all(true.get(i) is None for i in alerts)]

    # retrieval: the first alert of each failure, and every alert of it (those with an answer)
    first_rows, all_rows, seen = [], [], set()
    for a in stream:
        sid = true.get(a["id"])
        if sid is None or "similar" not in by_id.get(a["id"], {}):
            continue
        row = ranking_row(by_id[a["id"]]["similar"], scenario_grades(truth, sid))
        all_rows.append(row)
        if sid not in seen:
            seen.add(sid)
            first_rows.append(row)

    out: Metrics = {
        "alerts": len(ids), "incident_alerts": len(incident_ids), "noise_alerts": len(noise_ids),
        "missing_predictions": sum(i not in by_id for i in ids),
        "true_incidents": len(truth["scenarios"]), "incidents_created": len(members),
        "noise_only_incidents": len(noise_only),
        "bcubed_precision": p_all, "bcubed_recall": r_all, "bcubed_f1": f_all,
        "incident_bcubed_precision": p_inc, "incident_bcubed_recall": r_inc, "incident_bcubed_f1": f_inc,
        "incident_alerts_unlinked": sum(pred[i] is None for i in incident_ids) / max(1, len(incident_ids)),
        "noise_alerts_linked": sum(pred[i] is not None for i in noise_ids) / max(1, len(noise_ids)),
    }
    if first_rows:
        out.update({
            "first_alert_mrr": _mean(r[0] for r in first_rows), "first_alert_hit1": _mean(r[1] for r in first_rows),
            "first_alert_hit5": _mean(r[2] for r in first_rows), "first_alert_ndcg5": _mean(r[3] for r in first_rows),
            "all_alerts_mrr": _mean(r[0] for r in all_rows), "all_alerts_hit1": _mean(r[1] for r in all_rows),
            "all_alerts_hit5": _mean(r[2] for r in all_rows), "all_alerts_ndcg5": _mean(r[3] for r in all_rows),
        })
    return out


# ---------------------------------------------------------------------------- baselines

def seed_rules_predictions(data: Path, settings: Settings) -> list[dict[str, Any]]:
    """The seed design: its rules, no scorer (so no similar incidents: empty lists)."""
    return replay(data, settings, load_rules(seed_rules_dir(), settings.severity_words()), None).predictions


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def tfidf_similar(incidents: Sequence[Mapping[str, Any]], titles: Sequence[str],
                  top: int = SIMILAR_TOP) -> list[list[str]]:
    """For each title, the past incidents whose title + root cause are closest by tf-idf cosine
    (smooth idf, L2-normalised incident vectors), best first, positive scores only, ties in
    file order. The query is not normalised: it scales one query's scores alike."""
    docs = [Counter(_tokens(f"{i['title']} {i.get('root_cause') or ''}")) for i in incidents]
    n = len(docs)
    df = Counter(t for d in docs for t in d)
    idf = {t: math.log((n + 1) / (c + 1)) + 1 for t, c in df.items()}
    postings: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for j, d in enumerate(docs):
        weights = {t: c * idf[t] for t, c in d.items()}
        norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
        for t, w in weights.items():
            postings[t][0].append(j)
            postings[t][1].append(w / norm)
    index = {t: (np.array(js), np.array(ws)) for t, (js, ws) in postings.items()}
    ids = [i["id"] for i in incidents]

    @functools.cache
    def ranked(title: str) -> list[str]:
        scores = np.zeros(n)
        for t, c in Counter(_tokens(title)).items():
            if t in index:
                js, ws = index[t]
                scores[js] += c * idf[t] * ws
        order = np.argsort(-scores, kind="stable")[:top]
        return [ids[j] for j in order if scores[j] > 0]

    return [ranked(t) for t in titles]


def service_env_groups(stream: Sequence[Mapping[str, Any]], gap_s: float = SERVICE_ENV_GAP_S) -> list[str]:
    """Alertmanager-style: one group per (service or node or datacenter, environment) while its
    alerts keep coming less than `gap_s` apart (stream in fired_at order)."""
    current: dict[tuple[Any, Any], str] = {}
    last: dict[tuple[Any, Any], float] = {}
    out: list[str] = []
    opened = 0
    for a in stream:
        labels = a.get("labels", {})
        key = (labels.get("service") or labels.get("node") or labels.get("datacenter"), labels.get("environment"))
        t = datetime.fromisoformat(a["fired_at"]).timestamp()
        if key not in current or t - last[key] > gap_s:
            opened += 1
            current[key] = f"service-env-{opened}"
        last[key] = t
        out.append(current[key])
    return out


def service_env_predictions(data: Path) -> list[dict[str, Any]]:
    stream = list(read_jsonl(data / "stream" / "alerts.jsonl"))
    incidents = list(read_jsonl(data / "history" / "incidents.jsonl"))
    groups = service_env_groups(stream)
    similar = tfidf_similar(incidents, [a["title"] for a in stream])
    return [{"alert_id": a["id"], "incident_id": g, "similar": s} for a, g, s in zip(stream, groups, similar)]


# ---------------------------------------------------------------------------- evaluation

@dataclass
class DatasetReport:
    name: str
    path: Path
    # column (alertlink, seed-rules, service-env) -> metrics
    columns: dict[str, Metrics]
    # column -> seconds it took to predict and score
    seconds: dict[str, float] = field(default_factory=dict)


def check_dataset(data: Path) -> None:
    for part in ("truth.json", "stream/alerts.jsonl", "history/incidents.jsonl", "history/alerts.jsonl"):
        if not (data / part).is_file():
            raise FileNotFoundError(f"{data}: not a data set (no {part}; see DATASET.md)")


def evaluate(datasets: list[Path], *, weights: Path | None, rules: Path | None, semantic: bool,
             settings: Settings | None = None) -> list[DatasetReport]:
    """Replay each data set with alertlink (the given or configured rules and weights), score
    it, and score both baselines. `semantic` ranks similar incidents by meaning too (the model
    loads once, for all data sets)."""
    settings = settings or Settings()
    scorer = Weights.load(weights or settings.weights_path)
    ruleset = load_rules(rules or settings.rules_dir, settings.severity_words())
    for data in datasets:
        check_dataset(data)
    embedder: Callable[[], Any] | None = None
    if semantic:
        @functools.cache
        def embedder() -> Any:
            from indexer.embedder import SentenceTransformerEmbedder

            return SentenceTransformerEmbedder.offline(str(settings.model_path) if settings.model_path else None)

    strategies: dict[str, Callable[[Path], list[dict[str, Any]]]] = {
        "alertlink": lambda data: replay(data, settings, ruleset, scorer, embedder).predictions,
        "seed-rules": lambda data: seed_rules_predictions(data, settings),
        "service-env": service_env_predictions,
    }
    reports = []
    for data in datasets:
        report = DatasetReport(data.name, data, {})
        for column, predict in strategies.items():
            started = time.perf_counter()
            report.columns[column] = score_predictions(data, predict(data))
            report.seconds[column] = time.perf_counter() - started
        reports.append(report)
    return reports


# (key, label) of the table's rows, in order; incidents_created is shown against true_incidents
ROWS: tuple[tuple[str, str], ...] = (
    ("bcubed_precision", "B-cubed precision, all alerts"),
    ("bcubed_recall", "B-cubed recall, all alerts"),
    ("bcubed_f1", "B-cubed F1, all alerts"),
    ("incident_bcubed_precision", "B-cubed precision, incident alerts"),
    ("incident_bcubed_recall", "B-cubed recall, incident alerts"),
    ("incident_bcubed_f1", "B-cubed F1, incident alerts"),
    ("incidents_created", "incidents opened (true {true_incidents})"),
    ("noise_alerts_linked", "noise alerts linked"),
    ("noise_only_incidents", "noise-only incidents"),
    ("incident_alerts_unlinked", "incident alerts unlinked"),
    ("missing_predictions", "missing predictions"),
    ("first_alert_mrr", "MRR, first alert"),
    ("first_alert_hit1", "hit@1, first alert"),
    ("first_alert_hit5", "hit@5, first alert"),
    ("first_alert_ndcg5", "nDCG@5, first alert"),
    ("all_alerts_mrr", "MRR, all alerts"),
    ("all_alerts_hit1", "hit@1, all alerts"),
    ("all_alerts_hit5", "hit@5, all alerts"),
    ("all_alerts_ndcg5", "nDCG@5, all alerts"),
)


def _cell(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def format_table(reports: list[DatasetReport]) -> str:
    """Per data set: rows = metrics, columns = alertlink and the baselines."""
    blocks = []
    for r in reports:
        columns = list(r.columns)
        first = r.columns[columns[0]] if columns else {}
        head = (f"{r.name}: {first.get('alerts', 0)} stream alerts ({first.get('incident_alerts', 0)} of "
                f"{first.get('true_incidents', 0)} incidents, {first.get('noise_alerts', 0)} noise)")
        labels = [label.format(true_incidents=first.get("true_incidents", "?")) for _, label in ROWS]
        width = max(len(s) for s in labels) + 2
        lines = [head, f"{'metric':<{width}}" + "".join(f"{c:>13}" for c in columns)]
        for (key, _), label in zip(ROWS, labels):
            lines.append(f"{label:<{width}}" + "".join(f"{_cell(r.columns[c].get(key)):>13}" for c in columns))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _plain(value: float | int) -> float | int | None:
    return None if isinstance(value, float) and math.isnan(value) else value


def as_json(reports: list[DatasetReport]) -> dict[str, Any]:
    """Plain JSON (NaN, a metric with nothing to measure, is null)."""
    return {"datasets": [
        {"name": r.name, "path": str(r.path),
         "columns": {c: {k: _plain(v) for k, v in m.items()} for c, m in r.columns.items()},
         "seconds": {c: round(s, 3) for c, s in r.seconds.items()}}
        for r in reports]}


def from_json(doc: Mapping[str, Any]) -> list[DatasetReport]:
    """The reports `as_json` wrote (null back to NaN)."""
    return [DatasetReport(d["name"], Path(d["path"]),
                          {c: {k: math.nan if v is None else v for k, v in m.items()} for c, m in d["columns"].items()},
                          dict(d.get("seconds", {})))
            for d in doc["datasets"]]


def main(datasets: list[Path], weights: Path | None, rules: Path | None, json_output: bool,
         semantic: bool) -> int:
    """`alertlink evaluate`: the table (or JSON) on stdout, timings on stderr. 0, or 2 for a
    data set, rules or weights that cannot be used."""
    started = time.perf_counter()
    try:
        reports = evaluate(datasets, weights=weights, rules=rules, semantic=semantic)
    except (FileNotFoundError, RulesError, WeightsError) as exc:
        print(f"alertlink evaluate: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(as_json(reports), indent=1, allow_nan=False) if json_output else format_table(reports))
    for r in reports:
        print(f"{r.name}: " + ", ".join(f"{c} {s:.1f}s" for c, s in r.seconds.items()), file=sys.stderr)
    print(f"total {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0
