"""Which past incidents look like this one: alert kinds in common, and meaning.

Two signals, weighted by the weights file:
- `kinds`: tf-idf cosine between the alerts at hand and each past incident's
  alerts, over their kinds (`alertname|target`), names, targets and fingerprints.
  A rare kind shared says more than a common one.
- `semantic`: cosine between the sentence embedding of the alerts' titles and
  the embedding of the past incident's title and root cause (the FAISS index).

Pure apart from the embedder and index it is given; the kind index is derived
data, rebuilt from the database at start and extended as incidents resolve.
"""
from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from service.features import Vocabulary
from service.weights import SimilarModel

# how much each kind of token counts in an incident's profile
TOKEN_WEIGHTS = {"kind": 1.0, "name": 0.5, "target": 0.5, "fingerprint": 1.0}


@dataclass(frozen=True)
class AlertText:
    """What similarity needs of one alert."""

    fingerprint: str
    title: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class SimilarHit:
    incident_id: int
    score: float
    components: dict[str, float]
    match_types: tuple[str, ...]


def tokens(alert: AlertText, vocabulary: Vocabulary) -> dict[str, float]:
    return {
        f"k:{vocabulary.kind(alert.labels, alert.title)}": TOKEN_WEIGHTS["kind"],
        f"n:{vocabulary.name(alert.labels, alert.title)}": TOKEN_WEIGHTS["name"],
        f"t:{vocabulary.target(alert.labels)}": TOKEN_WEIGHTS["target"],
        f"f:{alert.fingerprint}": TOKEN_WEIGHTS["fingerprint"],
    }


class KindIndex:
    """tf-idf over the alert kinds of past incidents, with an inverted index so a
    query touches only the incidents that share a token with it. Thread-safe."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary
        self._docs: dict[int, dict[str, float]] = {}
        self._postings: dict[str, dict[int, float]] = defaultdict(dict)
        self._norms: dict[int, float] | None = None  # recomputed lazily: idf moves as incidents come
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._docs)

    def add(self, incident_id: int, alerts: Iterable[AlertText]) -> None:
        doc: dict[str, float] = {}
        for a in alerts:
            for token, w in tokens(a, self.vocabulary).items():
                doc[token] = max(doc.get(token, 0.0), w)
        with self._lock:
            self._remove(incident_id)
            if doc:
                self._docs[incident_id] = doc
                for token, w in doc.items():
                    self._postings[token][incident_id] = w
            self._norms = None

    def remove(self, incident_id: int) -> None:
        with self._lock:
            self._remove(incident_id)
            self._norms = None

    def _remove(self, incident_id: int) -> None:
        for token in self._docs.pop(incident_id, {}):
            self._postings[token].pop(incident_id, None)

    def _idf(self, token: str) -> float:
        return math.log((len(self._docs) + 1) / (len(self._postings.get(token, ())) + 0.5))

    def query(self, alerts: Sequence[AlertText]) -> dict[int, float]:
        """Cosine of the alerts' profile with every past incident that shares a token."""
        q: dict[str, float] = defaultdict(float)
        for a in alerts:
            for token, w in tokens(a, self.vocabulary).items():
                q[token] += w
        with self._lock:
            if self._norms is None:
                self._norms = {i: math.sqrt(sum((w * self._idf(t)) ** 2 for t, w in doc.items())) or 1.0
                               for i, doc in self._docs.items()}
            # a token no past incident has cannot match: it does not count in the norm either
            qv = {t: w * self._idf(t) for t, w in q.items() if self._postings.get(t)}
            q_norm = math.sqrt(sum(w * w for w in qv.values())) or 1.0
            scores: dict[int, float] = defaultdict(float)
            for token, qw in qv.items():
                idf = self._idf(token)
                for incident_id, dw in self._postings[token].items():
                    scores[incident_id] += qw * dw * idf
            return {i: s / (q_norm * self._norms[i]) for i, s in scores.items()}


def query_vector(titles: Sequence[str], embed: Callable[[Sequence[str]], np.ndarray]) -> np.ndarray | None:
    """The mean of the titles' embeddings: titles repeat, so each one is a cache hit
    after its first time, where the joined text of a growing incident never is."""
    distinct = sorted(set(titles))
    if not distinct:
        return None
    v = embed(distinct).mean(axis=0)
    norm = float(np.linalg.norm(v))
    return (v / norm).astype(np.float32) if norm > 0 else None


def rank(kinds: Mapping[int, float], semantic: Mapping[int, float], model: SimilarModel,
         k: int) -> list[SimilarHit]:
    """Combine the two signals; the score is a weighted mean, so it stays in [0, 1] for
    the usual non-negative similarities. Ties go to the older (lower) incident id."""
    wk, ws = model.weights.get("kinds", 0.0), model.weights.get("semantic", 0.0)
    total = (wk + ws) or 1.0
    hits = []
    for incident_id in set(kinds) | set(semantic):
        parts = {"kinds": kinds.get(incident_id, 0.0), "semantic": semantic.get(incident_id, 0.0)}
        score = (wk * parts["kinds"] + ws * parts["semantic"]) / total
        if score < model.min_score:
            continue
        types = tuple(t for t, v, at in (("kinds", parts["kinds"], 0.3), ("semantic", parts["semantic"], 0.6))
                      if v >= at)
        hits.append(SimilarHit(incident_id, round(score, 6), {n: round(v, 6) for n, v in parts.items()}, types))
    hits.sort(key=lambda h: (-h.score, h.incident_id))
    return hits[:k]


Search = Callable[[np.ndarray, int, Callable[[int], bool]], list[tuple[int, float]]]


class SimilarIncidents:
    """Past (resolved) incidents ranked against a set of alerts."""

    def __init__(self, model: SimilarModel, kind_index: KindIndex, past: Iterable[int] = (), *,
                 embed: Callable[[Sequence[str]], np.ndarray] | None = None, search: Search | None = None) -> None:
        self.model = model
        self.kind_index = kind_index
        self.past = set(past)
        self.embed = embed
        self.search = search

    def add_past(self, incident_id: int, alerts: Iterable[AlertText]) -> None:
        """An incident was resolved: from now on it is history (after its commit)."""
        self.kind_index.add(incident_id, alerts)
        self.past.add(incident_id)

    def drop(self, incident_id: int) -> None:
        self.kind_index.remove(incident_id)
        self.past.discard(incident_id)

    def find(self, alerts: Sequence[AlertText], k: int = 10) -> list[SimilarHit]:
        kinds = {i: s for i, s in self.kind_index.query(alerts).items() if i in self.past}
        semantic: dict[int, float] = {}
        if self.embed is not None and self.search is not None and self.model.weights.get("semantic", 0.0):
            vector = query_vector([a.title for a in alerts], self.embed)
            if vector is not None:
                semantic = dict(self.search(vector, max(50, 5 * k), self.past.__contains__))
        return rank(kinds, semantic, self.model, k)
