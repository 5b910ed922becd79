"""Measure the incident index: flat (exact) against IVF, with HNSW for reference.

    python -m indexer.bench [--sizes 1000,10000,100000] [--queries 300] [--no-hnsw]

For each size: build time, single-query latency p50/p99 at k=10 (one query per call, as a request
makes it), recall@10 against the exact answer, the serialized index size, and the cost of a
retitle (replace one id) and a delete. IVF is swept over nprobe to find the smallest setting with
recall@10 >= 0.95. HNSW is shown only for scale: it cannot remove ids, so alertlink cannot use it.

Vectors are synthetic but clustered like embeddings of recurring incident titles: cluster centres
in a low-rank subspace, Zipf-like cluster sizes, and points around each centre at cosine ~0.75.
Queries are fresh points from the same mixture. Nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from indexer.index import IncidentIndex, ivf_nlist

DIM = 384
K = 10


def clustered_vectors(n: int, n_queries: int, dim: int = DIM, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n base vectors and n_queries query vectors, unit rows, from one clustered mixture."""
    rng = np.random.default_rng(seed)
    n_clusters = max(16, n // 50)
    basis = rng.standard_normal((32, dim)).astype(np.float32)  # centres share a 32-d subspace
    centres = rng.standard_normal((n_clusters, 32)).astype(np.float32) @ basis
    centres += 0.5 * np.linalg.norm(centres, axis=1, keepdims=True) / math.sqrt(dim) * rng.standard_normal(
        centres.shape
    ).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, n_clusters + 1) ** 0.8  # a few incident kinds recur a lot
    weights /= weights.sum()

    def draw(m: int) -> np.ndarray:
        which = rng.choice(n_clusters, size=m, p=weights)
        x = centres[which] + (0.9 / math.sqrt(dim)) * rng.standard_normal((m, dim)).astype(np.float32)
        return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)

    return draw(n), draw(n_queries)


@dataclass
class Row:
    n: int
    kind: str
    setting: str
    build_s: float
    p50_ms: float
    p99_ms: float
    recall: float
    size_mb: float
    replace_ms: float | None = None
    remove_ms: float | None = None


Search = Callable[[np.ndarray], list[list[int]]]


def latencies(search: Search, queries: np.ndarray) -> tuple[list[list[int]], np.ndarray]:
    """Answers and per-call latencies (ms), one query per call."""
    out, times = [], []
    for q in queries:
        t = time.perf_counter()
        out.append(search(q[None, :])[0])
        times.append(time.perf_counter() - t)
    return out, np.asarray(times) * 1e3


def ids_of(index: IncidentIndex) -> Search:
    return lambda q: [[i for i, _ in hits] for hits in index.search(q, K)]


def recall(found: list[list[int]], exact: list[list[int]]) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)]))


def size_mb(index: Any) -> float:
    """Serialized size: the in-memory size of these index types, near enough."""
    return faiss.serialize_index(index).nbytes / 2**20


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_size(n: int, n_queries: int, hnsw: bool, seed: int, threads: int) -> list[Row]:
    base, queries = clustered_vectors(n, n_queries, seed=seed)
    ids = np.arange(1, n + 1, dtype=np.int64) * 7  # sparse ids, as a database's are
    rows: list[Row] = []

    def upsert_costs(idx: IncidentIndex) -> tuple[float, float]:
        victim = int(ids[n // 2])
        replace = timed(lambda: idx.add([victim], queries[:1]))
        remove = timed(lambda: idx.remove([victim]))
        idx.add([victim], base[n // 2 : n // 2 + 1])  # put it back for the next measurement
        return replace * 1e3, remove * 1e3

    flat = IncidentIndex(DIM, model_name="bench", ivf_threshold=n + 1, threads=threads)
    build = timed(lambda: flat.rebuild(ids, base))
    exact, lat = latencies(ids_of(flat), queries)
    p50, p99 = np.percentile(lat, [50, 99])
    mb = size_mb(flat._index)
    rows.append(Row(n, "flat", f"exact, {threads} thread(s)", build, p50, p99, 1.0, mb, *upsert_costs(flat)))
    cores = len(os.sched_getaffinity(0))
    if cores != threads:  # the thread count matters more than one would guess: show the other
        flat.threads = cores
        _, lat = latencies(ids_of(flat), queries)
        p50, p99 = np.percentile(lat, [50, 99])
        rows.append(Row(n, "flat", f"exact, {cores} threads", build, p50, p99, 1.0, mb))

    ivf = IncidentIndex(DIM, model_name="bench", ivf_threshold=0, threads=threads)
    build = timed(lambda: ivf.rebuild(ids, base))
    nlist, default = ivf_nlist(n), ivf.nprobe
    assert default is not None  # threshold 0: always IVF
    mb = size_mb(ivf._index)
    replace_ms, remove_ms = upsert_costs(ivf)
    for nprobe in sorted({p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, default) if p <= nlist}):
        ivf.nprobe = nprobe
        found, lat = latencies(ids_of(ivf), queries)
        p50, p99 = np.percentile(lat, [50, 99])
        setting = f"nlist={nlist} nprobe={nprobe}" + (" (default)" if nprobe == default else "")
        rows.append(Row(n, "ivf", setting, build, p50, p99, recall(found, exact), mb, replace_ms, remove_ms))

    if hnsw:  # for scale only: HNSW cannot remove ids
        faiss.omp_set_num_threads(threads)
        h = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
        h.hnsw.efConstruction = 80
        build = timed(lambda: h.add(base))
        h.hnsw.efSearch = 64
        found, lat = latencies(lambda q: (ids[h.search(q, K)[1]]).tolist(), queries)
        p50, p99 = np.percentile(lat, [50, 99])
        rows.append(Row(n, "hnsw", "M=32 efSearch=64", build, p50, p99, recall(found, exact), size_mb(h)))
    return rows


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def compare(flat: Row, ivf: Row, what: str) -> str:
    return (
        f"n={flat.n}: IVF {what} ({ivf.setting}, recall@10 {ivf.recall:.3f}): "
        f"p50 {flat.p50_ms / ivf.p50_ms:.1f}x and p99 {flat.p99_ms / ivf.p99_ms:.1f}x faster than flat, "
        f"build {ivf.build_s / max(flat.build_s, 1e-9):.0f}x slower, size {ivf.size_mb / flat.size_mb:.2f}x"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-hnsw", dest="hnsw", action="store_false")
    parser.add_argument("--threads", type=int, default=1, help="FAISS threads (IncidentIndex's default: 1)")
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    print(f"faiss {faiss.__version__}, {args.threads} thread(s) of {cores} cores, dim {DIM}, k={K}, "
          f"{args.queries} single-vector queries per setting\n")
    columns = ["n", "kind", "setting", "build s", "p50 ms", "p99 ms", "recall@10", "index MB", "replace ms",
               "remove ms"]
    header = "| " + " | ".join(columns) + " |"
    print(header)
    print("|" + "---|" * len(columns))
    summary: list[str] = []
    for n in (int(s) for s in args.sizes.split(",")):
        rows = bench_size(n, args.queries, args.hnsw, args.seed, args.threads)
        for r in rows:
            print(f"| {r.n} | {r.kind} | {r.setting} | {r.build_s:.3f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | "
                  f"{r.recall:.3f} | {r.size_mb:.1f} | {fmt(r.replace_ms)} | {fmt(r.remove_ms)} |",
                  flush=True)
        flat, ivfs = rows[0], [r for r in rows if r.kind == "ivf"]
        good = [r for r in ivfs if r.recall >= 0.95]
        summary.append(compare(flat, good[0], "smallest nprobe with recall >= 0.95") if good
                       else f"n={n}: no IVF setting reached recall@10 >= 0.95")
        summary.append(compare(flat, next(r for r in ivfs if "default" in r.setting), "default"))
        summary.append(f"n={n}: flat index {flat.size_mb * 2**20 / n:.0f} B/vector")
    print()
    print("\n".join(summary))


if __name__ == "__main__":
    main()
