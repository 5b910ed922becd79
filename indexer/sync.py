"""The database <-> FAISS glue: incident embeddings are stored in the database, and the index
is derived from them.

The database is the source of truth. `ensure_embeddings` (re)computes what is missing or stale
and stores it (flush, never commit); the index only ever copies stored vectors, after a commit
(`SyncedIndex.update`), at start-up (`load_or_rebuild`) or from scratch. Every indexed id
carries the `embedding_key` of the vector it holds, so catching up after a restart compares
short keys instead of vectors, and a retitle or a new model is seen without re-embedding
anything else.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from indexer.embedder import Embedder
from indexer.index import Hit, IncidentIndex
from models.tables import Incident

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
KEYS_FORMAT = 1
# ids per IN (...) list: far below SQLite's (32766) and PostgreSQL's (65535) parameter limits
_CHUNK = 1000
_DTYPE = np.dtype("<f4")  # stored vectors: float32 little-endian, whatever the host's order


@dataclass(frozen=True)
class SyncReport:
    added: int = 0
    updated: int = 0
    removed: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)


# ---------------------------------------------------------------------------
# Embeddings in the database
# ---------------------------------------------------------------------------


def incident_text(title: str, root_cause: str | None) -> str:
    """What is embedded for an incident: its title, then its root cause when known (measured:
    the pair ranks past incidents better than the title alone)."""
    cause = (root_cause or "").strip()
    return f"{title}. {cause}" if cause else title


def embedding_key(model_name: str, text: str) -> str:
    return hashlib.sha256(f"{model_name}\0{text}".encode()).hexdigest()


def stale_ids(session: Session, model_name: str,
              incident_ids: Iterable[int] | None = None) -> list[int]:
    """Ids (ascending) of the incidents whose stored embedding is missing, or was made from
    another text or model than their current text under `model_name`."""
    query = select(Incident.id, Incident.title, Incident.root_cause, Incident.embedding_key,
                   Incident.embedding.is_(None))
    out = [
        incident_id
        for chunk in _chunks(incident_ids, query)
        for incident_id, title, root_cause, key, missing in session.execute(chunk)
        if missing or key != embedding_key(model_name, incident_text(title, root_cause))
    ]
    return sorted(out)


def ensure_embeddings(
    session: Session,
    embedder: Embedder,
    incident_ids: Iterable[int] | None = None,
    *,
    batch: int = 64,
    progress: Progress | None = None,
) -> list[int]:
    """Embed and store every stale incident (all, or those of `incident_ids`); returns their ids.

    Flushes, never commits: the caller owns the transaction. `progress(n)` is called after each
    batch with the number of incidents just embedded.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    name = embedder.model_name
    todo = iter(stale_ids(session, name, incident_ids))
    done: list[int] = []
    while ids := list(islice(todo, batch)):
        # ORM objects, not a bulk UPDATE: an incident the caller holds in this session sees
        # its new embedding instead of a stale None
        incidents = session.scalars(select(Incident).where(Incident.id.in_(ids))
                                    .order_by(Incident.id)).all()
        texts = [incident_text(i.title, i.root_cause) for i in incidents]
        vectors = np.asarray(embedder.embed(texts), dtype=_DTYPE)
        if vectors.shape != (len(texts), embedder.dim):
            raise ValueError(f"{name} returned shape {vectors.shape} for {len(texts)} texts, "
                             f"expected ({len(texts)}, {embedder.dim})")
        for incident, text, vector in zip(incidents, texts, vectors, strict=True):
            incident.embedding = vector.tobytes()
            incident.embedding_model = name
            incident.embedding_key = embedding_key(name, text)
        session.flush()
        done.extend(i.id for i in incidents)
        if progress is not None:
            progress(len(incidents))
    return done


_MOD = 1 << 128


def _entry_hash(item: tuple[int, str]) -> int:
    digest = hashlib.sha256(f"{item[0]}\0{item[1]}".encode()).digest()
    return int.from_bytes(digest[:16], "big")


def _format_digest(count: int, total: int) -> str:
    return f"{count}:{total:032x}"


def keys_digest(keys: Mapping[int, str]) -> str:
    """An order-free digest of an id -> embedding_key map: the index's watermark.

    A sum of per-entry hashes, so `SyncedIndex` keeps it up to date in O(changed ids).
    """
    return _format_digest(len(keys), sum(map(_entry_hash, keys.items())) % _MOD)


def database_keys(session: Session, model_name: str) -> dict[int, str]:
    """id -> embedding_key of every incident with a stored embedding of `model_name`: what an
    index of that model should hold."""
    query = select(Incident.id, Incident.embedding_key).where(
        Incident.embedding_model == model_name,
        Incident.embedding.is_not(None),
        Incident.embedding_key.is_not(None),
    )
    return {incident_id: key for incident_id, key in session.execute(query)}


# ---------------------------------------------------------------------------
# The index and the keys it reflects
# ---------------------------------------------------------------------------


class SyncedIndex:
    """An `IncidentIndex` plus the embedding_key behind each vector it holds.

    Searches go straight to the FAISS index; changes (`sync_index`, `update`, `save`) take one
    lock for reading the database and applying what they read, so that of two updates of the
    same incident racing after their commits, the later read is the one applied last.
    """

    def __init__(self, index: IncidentIndex, keys: Mapping[int, str] | None = None, *,
                 loaded: bool = False) -> None:
        self.index = index
        self._lock = threading.RLock()  # guards _keys and _sum, and orders changes
        self._keys: dict[int, str] = dict(keys or {})
        if set(self._keys) != set(index.ids()):
            raise ValueError("the key map and the index hold different ids")
        self._sum = sum(map(_entry_hash, self._keys.items())) % _MOD
        self.index.watermark = self.watermark
        self.loaded = loaded  # True: read from a saved file; False: built in this process

    @classmethod
    def empty(cls, embedder: Embedder) -> SyncedIndex:
        return cls(IncidentIndex(embedder.dim, model_name=embedder.model_name))

    @property
    def model_name(self) -> str:
        return self.index.model_name

    @property
    def dim(self) -> int:
        return self.index.dim

    @property
    def watermark(self) -> str:
        with self._lock:
            return _format_digest(len(self._keys), self._sum)

    def keys(self) -> dict[int, str]:
        """A copy of the id -> embedding_key map the index reflects."""
        with self._lock:
            return dict(self._keys)

    def ids(self) -> list[int]:
        """The ids present, ascending."""
        return self.index.ids()

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, incident_id: object) -> bool:
        return incident_id in self.index

    def search(self, vector: np.ndarray, k: int, *,
               allowed: Callable[[int], bool] | None = None) -> list[Hit]:
        """Up to k (id, cosine) pairs for one query vector, best first, only of ids `allowed`
        accepts when given (over-fetching until k pass or the index is exhausted)."""
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if allowed is None:
            return self.index.search(query, k)[0]
        fetch = 4 * k
        while True:
            hits = self.index.search(query, fetch)[0]
            kept = [hit for hit in hits if allowed(hit[0])]
            if len(kept) >= k or len(hits) < fetch:  # enough, or nothing more to fetch
                return kept[:k]
            fetch *= 4

    def update(self, session: Session, ids: Iterable[int]) -> SyncReport:
        """Copy the stored embeddings of `ids` into the index: add, replace, or remove those
        deleted or without an embedding of this model.

        Call only after the transaction that changed them committed, with a session whose next
        query starts a new transaction (or a fresh session), so it reads the committed rows.
        """
        with self._lock:
            return self._apply(session, sorted(set(ids)))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index (`path`, `path`.json) and its key map (`path`.keys.json).

        The index's watermark is the map's digest, so a map left from another save (a crash
        between the files) is detected by `load`. Changes wait meanwhile: the two must match.
        """
        target = Path(path)
        with self._lock:
            self.index.watermark = self.watermark
            self.index.save(target)
            body = {"format": KEYS_FORMAT, "model_name": self.model_name,
                    "watermark": self.watermark,
                    "keys": {str(i): key for i, key in sorted(self._keys.items())}}
            _write_atomic(_keys_path(target), json.dumps(body, separators=(",", ":")) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, model_name: str, dim: int) -> SyncedIndex | None:
        """The saved index and key map, or None (logged) when they are missing, of another
        model or dim, damaged, or not from the same save: then rebuild."""
        target = Path(path)
        index = IncidentIndex.load(target, model_name=model_name, dim=dim)
        if index is None:
            return None
        try:
            body = json.loads(_keys_path(target).read_text(encoding="utf-8"))
            if not isinstance(body, dict) or body.get("format") != KEYS_FORMAT:
                raise ValueError("not a key map of the expected format")
            keys = {int(i): str(key) for i, key in body["keys"].items()}
            saved = index.watermark
            synced = cls(index, keys, loaded=True)  # checks the ids; sets the watermark anew
            if not saved == body.get("watermark") == synced.watermark:
                raise ValueError("key map and index are not from the same save")
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("incident index %s not loaded: %s; rebuild it", target, exc)
            return None
        return synced

    # -- internals -------------------------------------------------------------------------

    def _apply(self, session: Session, ids: Sequence[int],
               progress: Progress | None = None) -> SyncReport:
        """Make the index hold exactly the stored embeddings of this model for `ids`, in one
        add and one remove (one add lets a large build train IVF on everything at once).
        Caller holds _lock."""
        query = select(Incident.id, Incident.embedding, Incident.embedding_key).where(
            Incident.embedding_model == self.model_name,
            Incident.embedding.is_not(None),
            Incident.embedding_key.is_not(None),
        )
        stored: dict[int, tuple[bytes, str]] = {}
        for chunk in _chunks(ids, query):
            rows = session.execute(chunk).all()
            stored.update((i, (blob, key)) for i, blob, key in rows)
            if progress is not None:
                progress(len(rows))
        changed = sorted(i for i, (_, key) in stored.items() if self._keys.get(i) != key)
        gone = [i for i in ids if i in self._keys and i not in stored]
        report = SyncReport(added=sum(i not in self._keys for i in changed),
                            updated=sum(i in self._keys for i in changed), removed=len(gone))
        if changed:
            self.index.add(changed, np.stack([_decode(stored[i][0], self.dim, i) for i in changed]))
        if gone:
            self.index.remove(gone)
        for i in gone:
            self._set_key(i, None)
        for i in changed:
            self._set_key(i, stored[i][1])
        self.index.watermark = self.watermark
        return report

    def _set_key(self, incident_id: int, key: str | None) -> None:
        old = self._keys.pop(incident_id, None)
        if old is not None:
            self._sum -= _entry_hash((incident_id, old))
        if key is not None:
            self._keys[incident_id] = key
            self._sum += _entry_hash((incident_id, key))
        self._sum %= _MOD


def pending_changes(session: Session, index: SyncedIndex) -> SyncReport:
    """What `sync_index` would change now, without changing anything."""
    want, have = database_keys(session, index.model_name), index.keys()
    return SyncReport(added=len(want.keys() - have.keys()),
                      updated=sum(i in have and have[i] != key for i, key in want.items()),
                      removed=len(have.keys() - want.keys()))


def sync_index(session: Session, index: SyncedIndex, *, progress: Progress | None = None) -> SyncReport:
    """Bring `index` up to the stored embeddings of its model: add the new, replace those whose
    embedding_key changed, remove ids deleted or left without such an embedding.

    Reads only keys for the comparison and vectors only for what changed. `progress(n)` is
    called per chunk of vectors read.
    """
    with index._lock:
        want, have = database_keys(session, index.model_name), index._keys
        ids = sorted({i for i, key in want.items() if have.get(i) != key} | (have.keys() - want.keys()))
        report = index._apply(session, ids, progress)
    if report.changed:
        log.info("incident index synced: %s", report)
    return report


def load_or_rebuild(
    path: Path | None,
    session_factory: sessionmaker[Session],
    embedder: Embedder,
    *,
    progress: Progress | None = None,
    fresh: bool = False,
) -> SyncedIndex:
    """The index at start-up: the saved one brought up to date, or one rebuilt from the database.

    Embeds the incidents that need it first (one transaction, committed once; `progress(n)`
    counts incidents embedded). `path=None` keeps the index in memory only; `fresh=True`
    ignores the saved files. Saves only when something changed or nothing was loaded.
    """
    synced = None
    if path is not None and not fresh:
        synced = SyncedIndex.load(path, model_name=embedder.model_name, dim=embedder.dim)
    if synced is None:
        synced = SyncedIndex.empty(embedder)
    with session_factory.begin() as session:
        embedded = ensure_embeddings(session, embedder, progress=progress)
    with session_factory() as session:
        report = sync_index(session, synced)
    log.info("incident index %s: %d incidents embedded, %s, %d indexed",
             "loaded" if synced.loaded else "rebuilt", len(embedded), report, len(synced))
    if path is not None and (report.changed or not synced.loaded):
        synced.save(path)
    return synced


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _chunks(ids: Iterable[int] | None, query: Any) -> Iterator[Any]:
    """`query` over all incidents (ids None) or over `ids`, one IN list per chunk."""
    if ids is None:
        yield query
        return
    todo = iter(sorted(set(ids)))
    while chunk := list(islice(todo, _CHUNK)):
        yield query.where(Incident.id.in_(chunk))


def _decode(blob: bytes, dim: int, incident_id: int) -> np.ndarray:
    vector = np.frombuffer(blob, dtype=_DTYPE)
    if vector.size != dim:
        raise ValueError(f"incident {incident_id}: stored embedding has {vector.size} values, "
                         f"expected {dim}")
    return vector.astype(np.float32)  # native order, writable


def _keys_path(path: Path) -> Path:
    return path.with_name(path.name + ".keys.json")


def _write_atomic(target: Path, text: str) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
