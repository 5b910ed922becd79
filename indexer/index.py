"""A FAISS index of incident embeddings keyed by incident id.

All FAISS specifics live in this file. Vectors are unit rows, so inner product is cosine
similarity. The index is exact (a flat scan) while small and an IVF index past `ivf_threshold`
vectors; both can remove ids, which retitles and deletes need (FAISS HNSW cannot).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

log = logging.getLogger(__name__)

Kind = Literal["flat", "ivf"]
Watermark = str | int | None
Hit = tuple[int, float]

# Measured by `python -m indexer.bench` (1 thread, 384-d clustered vectors, k=10, one query per
# call): a flat scan answers in 0.3 ms p50 at 10k, 3.4 ms at 50k and 7.6 ms at 100k, against
# ~13-30 ms to embed the query title. Up to 50k it stays a small share of a request and is exact;
# past that IVF answers in < 0.5 ms for seconds of k-means (4 s at 50k) and approximate results.
DEFAULT_IVF_THRESHOLD = 50_000
# The bench's smallest nprobe with recall@10 >= 0.95 was 8-16 (~1% of nlist) at 1k-100k; real
# titles may cluster less cleanly than synthetic vectors, so take 2-4x that (recall 0.99-0.999).
NPROBE_FRACTION = 1 / 32
MIN_NPROBE = 16
FORMAT_VERSION = 1
_HASHTABLE: int = faiss.DirectMap.Hashtable  # type: ignore[attr-defined]  # missing from the stubs


def ivf_nlist(n: int) -> int:
    """Number of IVF lists for n vectors: ~4*sqrt(n)."""
    return max(1, min(n, int(4 * math.sqrt(n))))  # k-means needs a point per list


def ivf_nprobe(nlist: int) -> int:
    return min(nlist, max(MIN_NPROBE, math.ceil(nlist * NPROBE_FRACTION)))


class IncidentIndex:
    """Unit vectors keyed by int64 incident id, searched by inner product. Thread-safe."""

    def __init__(
        self,
        dim: int,
        *,
        model_name: str,
        watermark: Watermark = None,
        ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
        threads: int = 1,
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.model_name = model_name
        self.watermark: Watermark = watermark  # the database state this index reflects; opaque
        self.ivf_threshold = ivf_threshold
        # FAISS OpenMP threads for this index's calls. Set per call: FAISS's libgomp keeps the
        # count per OS thread, so setting it once at start-up misses the request threads. 1 by
        # default: single-query search measured 2x faster at p50 (and far steadier at p99) with 1
        # thread than with 2 on this 2-core machine.
        self.threads = threads
        self._lock = threading.RLock()  # guards everything below
        self._build_lock = threading.Lock()  # one (re)build at a time; searches never wait on it
        self._journal: list[tuple[np.ndarray, np.ndarray | None]] | None = None  # during a build
        self._ids: set[int] = set()
        self._index: Any = self._new_flat()
        self._kind: Kind = "flat"
        self._trained_on = 0  # vectors the IVF lists were trained on (0 for flat)

    # -- read side -------------------------------------------------------------------------

    @property
    def kind(self) -> Kind:
        return self._kind

    @property
    def count(self) -> int:
        return len(self)

    @property
    def nprobe(self) -> int | None:
        """IVF lists searched per query (None for flat). A retrain resets it to the default."""
        with self._lock:
            return int(self._index.nprobe) if self._kind == "ivf" else None

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        with self._lock:
            if self._kind != "ivf":
                raise ValueError("nprobe applies to an IVF index only")
            self._index.nprobe = max(1, min(int(value), self._index.nlist))

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)

    def __contains__(self, incident_id: object) -> bool:
        with self._lock:
            return incident_id in self._ids

    def ids(self) -> list[int]:
        """The ids present, ascending."""
        with self._lock:
            return sorted(self._ids)

    def search(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """For each query row, up to k (id, score) pairs, best first."""
        queries = self._check_vectors(vectors)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        with self._lock:
            n = len(self._ids)
            if n == 0:
                return [[] for _ in range(len(queries))]
            faiss.omp_set_num_threads(self.threads)
            scores, labels = self._index.search(queries, min(k, n))
        # IVF may find fewer than k in the lists it probes: FAISS pads those slots with id -1
        return [
            [(int(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
            for row_ids, row_scores in zip(labels, scores, strict=True)
        ]

    # -- write side ------------------------------------------------------------------------

    def add(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors; an id already present is replaced (that is how a retitle lands).

        May switch flat <-> IVF or retrain IVF (see `_needs_reshape`): that training runs in the
        calling thread but outside the lock, so searches go on meanwhile.
        """
        keys, rows = self._check_pairs(ids, vectors)
        if len(keys) == 0:
            return
        with self._lock:
            self._apply(self._index, self._ids, keys, rows)
            if self._journal is not None:
                self._journal.append((keys, rows))
        self._reshape_if_needed()

    def remove(self, ids: Iterable[int]) -> None:
        """Remove ids; ids not present are ignored."""
        keys = np.fromiter((int(i) for i in ids), dtype=np.int64)
        with self._lock:
            self._apply(self._index, self._ids, keys, None)
            if self._journal is not None:
                self._journal.append((keys, None))
        self._reshape_if_needed()

    def rebuild(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Replace the whole content, choosing flat or IVF by size.

        Searches see the old content until the new index is ready; adds and removes made
        meanwhile are applied to the new one too.
        """
        keys, rows = self._check_pairs(ids, vectors)
        with self._build_lock:
            self._replace(lambda: (keys, rows))

    def _apply(self, index: Any, ids: set[int], keys: np.ndarray, rows: np.ndarray | None) -> None:
        """Remove `keys` from index and ids, then add `rows` under them unless rows is None."""
        faiss.omp_set_num_threads(self.threads)
        present = [k for k in keys.tolist() if k in ids]
        if present:
            index.remove_ids(np.asarray(present, dtype=np.int64))
            ids.difference_update(present)
        if rows is not None:
            index.add_with_ids(rows, keys)
            ids.update(keys.tolist())

    def _replace(self, snapshot: Callable[[], tuple[np.ndarray, np.ndarray]]) -> None:
        """Build a new index from snapshot() outside the lock, catch up on changes, swap it in.

        Caller holds _build_lock. The snapshot and the start of the journal are taken under one
        lock, so no change falls between them.
        """
        with self._lock:
            keys, rows = snapshot()
            self._journal = []
        try:
            index, kind, trained_on = self._build(keys, rows)
            ids = set(keys.tolist())
            with self._lock:
                for changed, new_rows in self._journal:
                    self._apply(index, ids, changed, new_rows)
                self._index, self._kind, self._trained_on, self._ids = index, kind, trained_on, ids
        finally:
            with self._lock:
                self._journal = None

    def _needs_reshape(self) -> bool:
        """Flat past the threshold, IVF well under it (hysteresis), or IVF lists trained on
        fewer than a quarter of today's vectors (nlist ~ 4*sqrt(n) has then doubled)."""
        n = len(self._ids)
        if self._kind == "flat":
            return n > self.ivf_threshold
        return n < self.ivf_threshold // 2 or n > 4 * self._trained_on

    def _reshape_if_needed(self) -> None:
        if not self._build_lock.acquire(blocking=False):
            return  # a build is running; the next add or remove looks again
        try:

            def snapshot() -> tuple[np.ndarray, np.ndarray]:
                keys = np.fromiter(sorted(self._ids), dtype=np.int64, count=len(self._ids))
                return keys, np.ascontiguousarray(self._index.reconstruct_batch(keys), dtype=np.float32)

            with self._lock:
                if not self._needs_reshape():
                    return
            self._replace(snapshot)
        finally:
            self._build_lock.release()

    # -- persistence -----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write `path` (the FAISS index) and `path`.json (metadata and the index's sha256).

        Each file is replaced atomically; the index goes first, so a crash between the two
        leaves a sidecar whose checksum no longer matches and `load` asks for a rebuild.
        """
        target = Path(path)
        with self._lock:  # a copy, so searches wait for a memcpy and not for the disk
            index = faiss.clone_index(self._index)
            meta: dict[str, Any] = {
                "format": FORMAT_VERSION,
                "model_name": self.model_name,
                "dim": self.dim,
                "count": len(self._ids),
                "watermark": self.watermark,
                "kind": self._kind,
                "nprobe": self.nprobe,
                "trained_on": self._trained_on,
            }
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            faiss.write_index(index, str(tmp))
            meta["sha256"] = _sha256(tmp)
            _fsync(tmp)
            os.replace(tmp, target)
            tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            _fsync(tmp)
            os.replace(tmp, _sidecar(target))
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        model_name: str,
        dim: int,
        ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
        threads: int = 1,
    ) -> IncidentIndex | None:
        """The saved index, or None (with a logged warning saying why) if it cannot be trusted.

        None means: rebuild from the database. Never raises for a missing or bad file.
        """
        target = Path(path)
        try:
            meta = json.loads(_sidecar(target).read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
            if meta.get("format") != FORMAT_VERSION:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT_VERSION}")
            if meta.get("model_name") != model_name:
                raise ValueError(f"built with model {meta.get('model_name')!r}, not {model_name!r}")
            if meta.get("dim") != dim:
                raise ValueError(f"dim {meta.get('dim')!r}, expected {dim}")
            if _sha256(target) != meta.get("sha256"):
                raise ValueError("checksum mismatch: the index file is not the one its sidecar describes")
            raw_kind = meta.get("kind")
            if raw_kind not in ("flat", "ivf"):
                raise ValueError(f"unknown kind {raw_kind!r}")
            kind: Kind = "ivf" if raw_kind == "ivf" else "flat"
            index: Any = faiss.read_index(str(target))
            ids = _stored_ids(index, kind)
            if index.d != dim or index.ntotal != meta.get("count") or len(set(ids.tolist())) != len(ids):
                raise ValueError("index content does not match its sidecar")
            watermark = meta.get("watermark")
            if watermark is not None and not isinstance(watermark, (str, int)):
                raise ValueError(f"watermark {watermark!r} is neither a string nor an int")
        except FileNotFoundError as exc:
            log.warning("incident index %s not loaded: missing %s; rebuild it", target, exc.filename)
            return None
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
            # RuntimeError: FAISS's error for an unreadable index file
            log.warning("incident index %s not loaded: %s; rebuild it", target, exc)
            return None
        out = cls(dim, model_name=model_name, watermark=watermark, ivf_threshold=ivf_threshold,
                  threads=threads)
        out._index, out._kind, out._ids = index, kind, set(ids.tolist())
        if kind == "ivf":
            index.nprobe = int(meta.get("nprobe") or ivf_nprobe(index.nlist))  # not kept by FAISS
            out._trained_on = int(meta.get("trained_on") or index.ntotal)
        return out

    # -- internals -------------------------------------------------------------------------

    def _new_flat(self) -> Any:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _build(self, keys: np.ndarray, rows: np.ndarray) -> tuple[Any, Kind, int]:
        faiss.omp_set_num_threads(self.threads)
        if len(keys) <= self.ivf_threshold:
            index = self._new_flat()
            index.add_with_ids(rows, keys)
            return index, "flat", 0
        nlist = ivf_nlist(len(keys))
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.min_points_per_centroid = 1  # ~sqrt(n)/4 points per list is by design here
        index.train(rows)
        # a hash table from id to list position: needed to remove and reconstruct by id
        index.set_direct_map_type(_HASHTABLE)
        index.add_with_ids(rows, keys)
        index.nprobe = ivf_nprobe(nlist)
        return index, "ivf", len(keys)

    def _check_vectors(self, vectors: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(vectors, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape (n, {self.dim}), got {rows.shape}")
        if not np.all(np.isfinite(rows)):
            raise ValueError("vectors contain NaN or infinity")
        return rows

    def _check_pairs(
        self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        keys = np.asarray(ids, dtype=np.int64).reshape(-1)
        rows = self._check_vectors(vectors)
        if len(keys) != len(rows):
            raise ValueError(f"{len(keys)} ids for {len(rows)} vectors")
        norms = np.linalg.norm(rows, axis=1)
        if len(rows) and not np.allclose(norms, 1.0, atol=1e-3):
            raise ValueError("vectors must be L2-normalised (inner product is used as cosine)")
        # the same id twice in one call: the last row wins, as two separate adds would
        last = len(keys) - 1 - np.unique(keys[::-1], return_index=True)[1]
        if len(last) != len(keys):
            last.sort()
            keys, rows = keys[last], rows[last]
        return keys, rows


def _stored_ids(index: Any, kind: Kind) -> np.ndarray:
    if kind == "flat" and isinstance(index, faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    if kind == "ivf" and isinstance(index, faiss.IndexIVFFlat):
        if index.direct_map.type != _HASHTABLE:
            raise ValueError("IVF index without an id hash table cannot remove ids")
        lists: Any = index.invlists
        parts = [
            faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
            for i in range(index.nlist)
            if lists.list_size(i)
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, dtype=np.int64)
    raise ValueError(f"kind {kind!r} does not match the stored {type(index).__name__}")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())
