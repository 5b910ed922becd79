"""indexer.embedder: text normalisation, the hashing embedder, the cache, and the real model (slow)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer import Embedder, HashingEmbedder, SentenceTransformerEmbedder, normalise_text

REPO = Path(__file__).resolve().parents[1]


def ranked(embedder: Embedder, query: str, candidates: Sequence[str]) -> list[str]:
    """Candidates from most to least similar to the query (by order, not by score)."""
    vectors = embedder.embed([query, *candidates])
    scores = vectors[1:] @ vectors[0]
    return [candidates[i] for i in np.argsort(-scores, kind="stable")]


# ---------------------------------------------------------------------------
# normalise_text
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  High   CPU\ton\ncheckout  ", "high cpu on checkout"),
        ("Pod checkout-7f9c6d5b8-q9m7z CrashLoopBackOff", "pod checkout-<pod> crashloopbackoff"),
        ("Disk almost full on node ip-10-0-1-2", "disk almost full on node ip-<ip>"),
        ("Connection refused to 10.0.3.17:5432", "connection refused to <ip>"),
        ("Request 550e8400-e29b-41d4-a716-446655440000 failed", "request <id> failed"),
        ("EC2 i-0abc123def4567890 unreachable", "ec2 i-<id> unreachable"),
        ("Deploy a3f9c21e rolled back", "deploy <id> rolled back"),
        ("Job 123456 failed after 1200s", "job <num> failed after <num>s"),
        # short numbers and words that merely look technical are kept
        ("HTTP 503 on checkout p99 > 2s", "http 503 on checkout p99 > 2s"),
        ("database-error in order-service", "database-error in order-service"),
        ("SHA256 mismatch for deadbeef", "sha256 mismatch for deadbeef"),
        ("", ""),
    ],
)
def test_normalise_text(text: str, expected: str) -> None:
    assert normalise_text(text) == expected


def test_titles_differing_only_by_volatile_ids_normalise_alike() -> None:
    titles = [
        "Pod checkout-7f9c6d5b8-q9m7z OOMKilled on 10.0.1.7:8080",
        "pod checkout-5d8f7b9c4d-x2k8p  OOMKilled on 10.0.4.21:9090",
    ]
    assert {normalise_text(t) for t in titles} == {"pod checkout-<pod> oomkilled on <ip>"}


# ---------------------------------------------------------------------------
# HashingEmbedder
# ---------------------------------------------------------------------------

TITLES = [
    "PostgreSQL connection pool exhausted on orders-db",
    "Too many connections on orders-db",
    "TLS certificate expires soon on cdn",
    "",
]


def test_hashing_embedder_is_normalised_float32() -> None:
    e = HashingEmbedder(64)
    vectors = e.embed(TITLES)
    assert (e.model_name, e.dim, vectors.dtype, vectors.shape) == (
        "hashing-64", 64, np.dtype(np.float32), (4, 64)
    )
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), np.ones(4), rtol=1e-6)
    assert e.embed([]).shape == (0, 64)
    assert isinstance(e, Embedder)


def test_hashing_embedder_empty_text_is_a_fixed_unit_vector() -> None:
    expected = np.zeros((2, 16), dtype=np.float32)
    expected[:, 0] = 1.0
    np.testing.assert_array_equal(HashingEmbedder(16).embed(["", "   "]), expected)


def test_hashing_embedder_is_deterministic_across_processes() -> None:
    # hashlib, not hash(): PYTHONHASHSEED must not matter
    here = HashingEmbedder(32).embed(TITLES)
    code = "import sys, json; from indexer import HashingEmbedder; " \
           "print(json.dumps(HashingEmbedder(32).embed(json.loads(sys.argv[1])).tolist()))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(TITLES)], capture_output=True, text=True,
                         cwd=REPO, env=env, check=True).stdout
    np.testing.assert_array_equal(np.asarray(json.loads(out), dtype=np.float32), here)
    np.testing.assert_array_equal(HashingEmbedder(32).embed(TITLES), here)


def test_hashing_embedder_ranks_related_titles_first() -> None:
    candidates = [
        "Disk almost full on node ip-10-0-1-2",
        "High memory on checkout pod",
        "High CPU on checkout pod checkout-5d8f7b9c4d-x2k8p",  # the same title, another pod
    ]
    assert ranked(HashingEmbedder(), "High CPU on checkout pod checkout-7f9c6d5b8-q9m7z", candidates) == [
        "High CPU on checkout pod checkout-5d8f7b9c4d-x2k8p",
        "High memory on checkout pod",
        "Disk almost full on node ip-10-0-1-2",
    ]
    assert ranked(HashingEmbedder(), TITLES[0], TITLES[1:3])[0] == "Too many connections on orders-db"


# ---------------------------------------------------------------------------
# SentenceTransformerEmbedder's cache and batching, with a fake model
# ---------------------------------------------------------------------------


class FakeModel:
    """Counts encode calls; one-hot rows (as float64, to check the cast) per distinct text."""

    def __init__(self, dim: int = 8) -> None:
        self.dim = dim
        self.calls: list[list[str]] = []
        self.kwargs: list[dict[str, Any]] = []
        self._busy = False

    def get_embedding_dimension(self) -> int:
        return self.dim

    def encode(self, texts: list[str], **kwargs: Any) -> np.ndarray:
        assert not self._busy, "encode entered from two threads at once"
        self._busy = True
        try:
            time.sleep(0.001)  # widen the window a missing lock would leave
            self.calls.append(list(texts))
            self.kwargs.append(kwargs)
            out = np.zeros((len(texts), self.dim))
            for row, text in zip(out, texts, strict=True):
                row[len(text) % self.dim] = 1.0
            return out
        finally:
            self._busy = False


def test_cache_batches_misses_and_serves_repeats() -> None:
    fake = FakeModel()
    e = SentenceTransformerEmbedder(fake, model_name="fake", cache_size=100)
    first = e.embed(["a", "bb", "A ", "Pod checkout-7f9c6d5b8-q9m7z down"])
    second = e.embed(["bb", "ccc", "pod checkout-5d8f7b9c4d-x2k8p   down"])
    assert fake.calls == [["a", "bb", "pod checkout-<pod> down"], ["ccc"]]
    assert fake.kwargs[0] == {"batch_size": 64, "normalize_embeddings": True, "convert_to_numpy": True}
    assert (e.model_name, e.dim, first.dtype, first.shape, second.shape) == (
        "fake", 8, np.dtype(np.float32), (4, 8), (3, 8)
    )
    np.testing.assert_array_equal(first[0], first[2])
    np.testing.assert_array_equal(second[[0, 2]], first[[1, 3]])
    assert e.cache_len() == 4


def test_cache_evicts_least_recently_used() -> None:
    fake = FakeModel()
    e = SentenceTransformerEmbedder(fake, model_name="fake", cache_size=2)
    e.embed(["a", "b"])
    e.embed(["a"])  # a is now the most recently used
    e.embed(["c"])  # evicts b
    e.embed(["a", "b"])  # a is a hit; b comes back, evicting c
    e.embed(["c"])
    assert fake.calls == [["a", "b"], ["c"], ["b"], ["c"]]
    assert e.cache_len() == 2


def test_cache_returns_copies() -> None:
    e = SentenceTransformerEmbedder(FakeModel(), model_name="fake")
    e.embed(["a"])[0] += 5.0
    np.testing.assert_array_equal(e.embed(["a"]), e.embed(["a"]))
    assert float(np.linalg.norm(e.embed(["a"]))) == 1.0


def test_embed_is_thread_safe() -> None:
    fake = FakeModel()
    e = SentenceTransformerEmbedder(fake, model_name="fake", cache_size=10)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(30):
                e.embed([f"title {worker} {i}", f"shared {i % 5}"])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert e.cache_len() == 10


# ---------------------------------------------------------------------------
# The real packaged model (slow): offline, in a fresh interpreter
# ---------------------------------------------------------------------------

REAL_MODEL_SCRIPT = textwrap.dedent(
    """
    import json, os, socket, time
    attempts = []
    def refuse(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(repr(address))
            raise OSError("network disabled by the test")
        return real_connect(self, address)
    real_connect = socket.socket.connect
    socket.socket.connect = refuse
    socket.socket.connect_ex = lambda self, address: refuse(self, address)

    import numpy as np
    from indexer import SentenceTransformerEmbedder
    start = time.perf_counter()
    e = SentenceTransformerEmbedder.offline()
    load_s = time.perf_counter() - start
    query = "PostgreSQL connection pool exhausted on orders-db"
    candidates = ["TLS certificate expires soon on cdn", "Disk almost full on node ip-10-0-1-2",
                  "Too many connections on orders-db"]
    v = e.embed([query, *candidates])
    order = np.argsort(-(v[1:] @ v[0]), kind="stable")
    again = e.embed(["Disk almost full on node ip-10-0-9-9"])
    print(json.dumps({
        "env": [os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE")],
        "model_name": e.model_name, "dim": e.dim, "dtype": str(v.dtype), "shape": list(v.shape),
        "unit": bool(np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)),
        "ranking": [candidates[i] for i in order],
        "cache_hit_equal": bool(np.array_equal(again[0], v[2])), "cache_len": e.cache_len(),
        "network_attempts": attempts, "load_s": load_s,
    }))
    """
)


@pytest.mark.slow
def test_real_model_offline() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    proc = subprocess.run([sys.executable, "-c", REAL_MODEL_SCRIPT], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.pop("load_s")
    assert result == {
        "env": ["1", "1"],
        "model_name": "all-MiniLM-L6-v2",
        "dim": 384,
        "dtype": "float32",
        "shape": [4, 384],
        "unit": True,
        "ranking": [
            "Too many connections on orders-db",
            "Disk almost full on node ip-10-0-1-2",
            "TLS certificate expires soon on cdn",
        ],
        "cache_hit_equal": True,
        "cache_len": 4,
        "network_attempts": [],
    }
