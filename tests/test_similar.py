"""service.similar: the kind index against a brute-force tf-idf cosine, `rank` by order,
and `query_vector`. Pure: no database, no model."""
from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from service.features import Vocabulary
from service.similar import AlertText, KindIndex, SimilarHit, query_vector, rank, tokens
from service.weights import SimilarModel

VOCABULARY = Vocabulary()


def text(name: str, target: str = "checkout", fingerprint: str | None = None) -> AlertText:
    return AlertText(fingerprint or f"{name}@{target}", name, {"alertname": name, "service": target})


# ------------------------------------------------------------------ brute force

def brute_force(docs: Mapping[int, Sequence[AlertText]], query: Sequence[AlertText]) -> list[int]:
    """tf-idf cosine written out: a document weighs each token by its largest weight among
    its alerts, a query by the sum; idf = log((N + 1) / (df + 0.5)); tokens no document has
    are left out of the query. Ids with a positive cosine, best first, ties by lower id."""
    vectors = {}
    for i, alerts in docs.items():
        doc: dict[str, float] = {}
        for a in alerts:
            for token, w in tokens(a, VOCABULARY).items():
                doc[token] = max(doc.get(token, 0.0), w)
        vectors[i] = doc
    df: dict[str, int] = defaultdict(int)
    for doc in vectors.values():
        for token in doc:
            df[token] += 1

    def idf(token: str) -> float:
        return math.log((len(vectors) + 1) / (df[token] + 0.5))

    q: dict[str, float] = defaultdict(float)
    for a in query:
        for token, w in tokens(a, VOCABULARY).items():
            q[token] += w
    qv = {tok: w * idf(tok) for tok, w in q.items() if df[tok]}
    q_norm = math.sqrt(sum(w * w for w in qv.values()))
    scores = {}
    for i, doc in vectors.items():
        dv = {tok: w * idf(tok) for tok, w in doc.items()}
        d_norm = math.sqrt(sum(w * w for w in dv.values()))
        dot = sum(w * dv.get(tok, 0.0) for tok, w in qv.items())
        if dot > 0:
            scores[i] = dot / (q_norm * d_norm)
    return sorted(scores, key=lambda i: (-scores[i], i))


def ranked(scores: Mapping[int, float]) -> list[int]:
    return sorted(scores, key=lambda i: (-round(scores[i], 9), i))


NAMES = ["DiskFull", "HighLatency", "PodCrashLoop", "CertExpiry", "QueueBacklog", "HighErrors", "NodeDown"]
TARGETS = ["checkout", "payments", "db", "cart"]


def random_corpus(seed: int) -> tuple[dict[int, list[AlertText]], list[list[AlertText]]]:
    rng = random.Random(seed)

    def some_alerts(n: int) -> list[AlertText]:
        # a few fingerprints repeat (the same alert firing again), most are the kind's own
        return [text(rng.choice(NAMES), rng.choice(TARGETS), fingerprint=rng.choice([None, None, "fp-shared"]))
                for _ in range(n)]

    docs = {i: some_alerts(rng.randint(1, 4)) for i in rng.sample(range(1, 200), 40)}
    queries = [some_alerts(rng.randint(1, 3)) for _ in range(25)]
    return docs, queries


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kind_index_matches_brute_force(seed):
    docs, queries = random_corpus(seed)
    index = KindIndex(VOCABULARY)
    for i, alerts in docs.items():
        index.add(i, alerts)
    for query in queries:
        found = index.query(query)
        assert ranked(found) == brute_force(docs, query)
        assert all(0.0 < s <= 1.0 + 1e-9 for s in found.values())


def test_a_query_with_nothing_known_finds_nothing():
    index = KindIndex(VOCABULARY)
    index.add(1, [text("DiskFull")])
    assert (index.query([text("Unheard", "nowhere")]), index.query([])) == ({}, {})


def test_a_rare_shared_kind_ranks_above_a_common_one():
    index = KindIndex(VOCABULARY)
    for i in (1, 2, 3):
        index.add(i, [text("HighLatency")])
    index.add(4, [text("CertExpiry", "payments")])
    found = index.query([text("HighLatency"), text("CertExpiry", "payments")])
    assert ranked(found) == [4, 1, 2, 3]


def test_add_replace_and_remove():
    index = KindIndex(VOCABULARY)
    index.add(1, [text("DiskFull", "db")])
    index.add(2, [text("HighLatency")])
    assert (len(index), ranked(index.query([text("DiskFull", "db")]))) == (2, [1])
    index.add(1, [text("HighLatency", "cart")])  # re-adding replaces the incident's profile
    assert (len(index), index.query([text("DiskFull", "db")]), ranked(index.query([text("HighLatency")]))) == (
        2, {}, [2, 1])
    index.remove(2)
    index.remove(99)  # unknown: nothing happens
    assert (len(index), ranked(index.query([text("HighLatency")]))) == (1, [1])
    index.add(3, [])  # no alerts: nothing to index
    assert len(index) == 1


def test_an_identical_profile_scores_one():
    index = KindIndex(VOCABULARY)
    index.add(1, [text("DiskFull", "db"), text("HighLatency")])
    index.add(2, [text("NodeDown", "cart")])
    assert index.query([text("DiskFull", "db"), text("HighLatency")])[1] == pytest.approx(1.0)


# ------------------------------------------------------------------------- rank

KINDS_FIRST = SimilarModel(weights={"kinds": 1.0, "semantic": 0.3})
MEANING_FIRST = SimilarModel(weights={"kinds": 0.3, "semantic": 1.0})
KINDS = {1: 0.9, 2: 0.2}
SEMANTIC = {2: 0.9, 3: 0.5}


def ids(hits: Sequence[SimilarHit]) -> list[int]:
    return [h.incident_id for h in hits]


@pytest.mark.parametrize("model, kinds, semantic, k, expected", [
    (KINDS_FIRST, KINDS, SEMANTIC, 10, [1, 2, 3]),
    (MEANING_FIRST, KINDS, SEMANTIC, 10, [2, 3, 1]),
    (KINDS_FIRST, KINDS, SEMANTIC, 2, [1, 2]),
    (SimilarModel(weights={"kinds": 1.0}), KINDS, SEMANTIC, 10, [1, 2, 3]),
    (SimilarModel(weights={"semantic": 1.0}), KINDS, SEMANTIC, 10, [2, 3, 1]),
    (KINDS_FIRST.model_copy(update={"min_score": 0.3}), KINDS, SEMANTIC, 10, [1, 2]),
    (KINDS_FIRST, {5: 0.5, 3: 0.5, 4: 0.5}, {}, 10, [3, 4, 5]),
    (KINDS_FIRST, {}, {}, 10, []),
], ids=["kinds weigh more", "meaning weighs more", "k", "kinds only", "meaning only", "min_score",
        "ties by lower id", "nothing"])
def test_rank_order(model, kinds, semantic, k, expected):
    assert ids(rank(kinds, semantic, model, k)) == expected


def test_rank_keeps_the_components_and_names_the_strong_ones():
    hits = rank({1: 0.9, 2: 0.2}, {2: 0.9, 3: 0.5}, KINDS_FIRST, 10)
    assert [(h.incident_id, h.components, h.match_types) for h in hits] == [
        (1, {"kinds": 0.9, "semantic": 0.0}, ("kinds",)),
        (2, {"kinds": 0.2, "semantic": 0.9}, ("semantic",)),
        (3, {"kinds": 0.0, "semantic": 0.5}, ()),
    ]
    assert all(0.0 <= h.score <= 1.0 for h in hits)


def test_rank_score_is_the_weighted_mean():
    [hit] = rank({1: 0.6}, {1: 0.2}, SimilarModel(weights={"kinds": 3.0, "semantic": 1.0}), 10)
    assert hit.score == pytest.approx((3 * 0.6 + 0.2) / 4)


# ----------------------------------------------------------------- query_vector

VECTORS = {"a": [1.0, 0.0], "b": [0.0, 1.0], "-a": [-1.0, 0.0]}


class Embed:
    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def __call__(self, titles: Sequence[str]) -> np.ndarray:
        self.asked.append(list(titles))
        return np.array([VECTORS[t] for t in titles], dtype=np.float32)


@pytest.mark.parametrize("titles, expected", [
    (["a"], [1.0, 0.0]),
    (["a", "b"], [math.sqrt(0.5), math.sqrt(0.5)]),
    (["b", "a", "a", "b", "a"], [math.sqrt(0.5), math.sqrt(0.5)]),  # each distinct title once
], ids=["one", "the normalised mean", "repeats count once"])
def test_query_vector_is_the_normalised_mean(titles, expected):
    embed = Embed()
    v = query_vector(titles, embed)
    assert (v.dtype, embed.asked) == (np.float32, [sorted(set(titles))])
    np.testing.assert_allclose(v, expected, rtol=1e-6)
    assert float(np.linalg.norm(v)) == pytest.approx(1.0)


@pytest.mark.parametrize("titles", [[], ["a", "-a"]], ids=["no titles", "a zero mean"])
def test_query_vector_none(titles):
    assert query_vector(titles, Embed()) is None
