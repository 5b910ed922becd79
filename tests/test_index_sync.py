"""indexer.sync: embeddings stored in the database, the FAISS index derived from them, and the
`alertlink index` commands. Database tests run on SQLite and PostgreSQL (`migrated_engine`)."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from indexer import HashingEmbedder
from indexer.sync import (
    SyncedIndex,
    SyncReport,
    database_keys,
    embedding_key,
    ensure_embeddings,
    incident_text,
    keys_digest,
    load_or_rebuild,
    pending_changes,
    sync_index,
)
from models.db import make_engine, make_session_factory, migrate
from models.tables import Incident
from service import cli

DIM = 32
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
WORDS = ("disk full latency high checkout payments database replica lag timeout pod crash "
         "loop memory cpu throttled certificate expired dns resolution queue backlog kafka "
         "consumer 5xx errors ingress gateway node not ready volume mount failed").split()


class CountingEmbedder(HashingEmbedder):
    """A HashingEmbedder that records what it was asked to embed."""

    def __init__(self, dim: int = DIM, name: str | None = None) -> None:
        super().__init__(dim)
        self.model_name = name or self.model_name
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.texts.extend(texts)
        return super().embed(texts)


@pytest.fixture
def factory(migrated_engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(migrated_engine)


def random_titles(rng: np.random.Generator, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=5, replace=False)) for _ in range(n)]


def add_incidents(factory: sessionmaker[Session], titles: Sequence[str],
                  root_causes: Sequence[str | None] | None = None) -> list[int]:
    with factory.begin() as s:
        rows = [Incident(title=t, root_cause=r, severity="high", created_at=T0, last_activity_at=T0)
                for t, r in zip(titles, root_causes or [None] * len(titles), strict=True)]
        s.add_all(rows)
        s.flush()
        return [i.id for i in rows]


def retitle(factory: sessionmaker[Session], titles: dict[int, str]) -> None:
    with factory.begin() as s:
        for incident_id, title in titles.items():
            s.execute(update(Incident).where(Incident.id == incident_id).values(title=title))


def stored(factory: sessionmaker[Session]) -> dict[int, tuple[str | None, str | None, np.ndarray | None]]:
    """id -> (embedding_model, embedding_key, vector) as the database holds them."""
    with factory() as s:
        rows = s.execute(select(Incident.id, Incident.embedding_model, Incident.embedding_key,
                                Incident.embedding).order_by(Incident.id))
        return {i: (m, k, None if b is None else np.frombuffer(b, dtype="<f4")) for i, m, k, b in rows}


def expected_rows(factory: sessionmaker[Session], model: str) -> dict[int, tuple[str, str]]:
    """id -> (model, key of the incident's current text): what every stored row should say."""
    with factory() as s:
        rows = s.execute(select(Incident.id, Incident.title, Incident.root_cause))
        return {i: (model, embedding_key(model, incident_text(t, r))) for i, t, r in rows}


def brute(factory: sessionmaker[Session], model: str, query: np.ndarray, k: int,
          allowed: Callable[[int], bool] | None = None) -> list[int]:
    """The exact top-k ids over the stored embeddings of `model`, best first."""
    rows = [(i, v) for i, (m, _, v) in stored(factory).items()
            if m == model and v is not None and (allowed is None or allowed(i))]
    if not rows:
        return []
    ids = np.array([i for i, _ in rows])
    scores = np.stack([v for _, v in rows]) @ query
    return ids[np.argsort(-scores, kind="stable")[:k]].tolist()


def unit_queries(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    # random directions, not embedded titles: HashingEmbedder titles tie often, random
    # queries make every score distinct so the order is well defined
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def found(synced: SyncedIndex, queries: np.ndarray, k: int,
          allowed: Callable[[int], bool] | None = None) -> list[list[int]]:
    return [[i for i, _ in synced.search(q, k, allowed=allowed)] for q in queries]


# ---------------------------------------------------------------------------
# text and key
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("title, root_cause, text", [
    ("Disk full on db-1", None, "Disk full on db-1"),
    ("Disk full on db-1", "log rotation stopped", "Disk full on db-1. log rotation stopped"),
    ("Disk full on db-1", "  \n", "Disk full on db-1"),
])
def test_incident_text(title: str, root_cause: str | None, text: str) -> None:
    assert incident_text(title, root_cause) == text


def test_embedding_key() -> None:
    assert embedding_key("m", "disk full") == hashlib.sha256(b"m\x00disk full").hexdigest()
    assert len({embedding_key("m", "a"), embedding_key("n", "a"), embedding_key("m", "b")}) == 3


# ---------------------------------------------------------------------------
# ensure_embeddings
# ---------------------------------------------------------------------------


def test_ensure_embeddings_embeds_only_what_changed(factory: sessionmaker[Session]) -> None:
    ids = add_incidents(factory, ["disk full", "high latency on checkout", "dns failures"],
                        [None, "bad deploy", None])
    embedder = CountingEmbedder()
    with factory.begin() as s:
        assert ensure_embeddings(s, embedder) == ids
    assert embedder.texts == ["disk full", "high latency on checkout. bad deploy", "dns failures"]
    rows = stored(factory)
    assert {i: (m, k) for i, (m, k, _) in rows.items()} == expected_rows(factory, "hashing-32")
    vectors = np.stack([v for _, _, v in rows.values()])
    np.testing.assert_array_equal(vectors, HashingEmbedder(DIM).embed(embedder.texts))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)

    # nothing changed: nothing embedded
    embedder.texts.clear()
    with factory.begin() as s:
        assert ensure_embeddings(s, embedder) == []
    assert embedder.texts == []

    # a retitle re-embeds that incident only
    retitle(factory, {ids[1]: "high latency on payments"})
    with factory.begin() as s:
        assert ensure_embeddings(s, embedder) == [ids[1]]
    assert embedder.texts == ["high latency on payments. bad deploy"]
    assert {i: (m, k) for i, (m, k, _) in stored(factory).items()} == expected_rows(factory, "hashing-32")

    # another model re-embeds all
    other = CountingEmbedder(name="other-model")
    with factory.begin() as s:
        assert ensure_embeddings(s, other, batch=2) == ids
    assert len(other.texts) == 3
    assert {i: (m, k) for i, (m, k, _) in stored(factory).items()} == expected_rows(factory, "other-model")


def test_ensure_embeddings_batches_flushes_and_never_commits(factory: sessionmaker[Session]) -> None:
    ids = add_incidents(factory, [f"incident {n}" for n in range(5)])
    steps: list[int] = []
    with factory() as s:
        held = s.get(Incident, ids[0])
        assert held is not None and held.embedding is None
        assert ensure_embeddings(s, CountingEmbedder(), ids[1:] + [999], batch=2,
                                 progress=steps.append) == ids[1:]
        assert steps == [2, 2]
        assert ensure_embeddings(s, CountingEmbedder(), batch=2, progress=steps.append) == ids[:1]
        # the caller's own object sees its embedding (ORM writes, not a bulk UPDATE)
        assert (held.embedding_model, held.embedding_key) == expected_rows(factory, "hashing-32")[ids[0]]
        s.rollback()  # the caller owns the transaction: nothing was committed
    assert {m for m, _, _ in stored(factory).values()} == {None}


# ---------------------------------------------------------------------------
# the index follows the database
# ---------------------------------------------------------------------------


def test_incremental_updates_equal_a_rebuild(factory: sessionmaker[Session]) -> None:
    rng = np.random.default_rng(7)
    ids = add_incidents(factory, random_titles(rng, 40))
    embedder = CountingEmbedder()
    synced = load_or_rebuild(None, factory, embedder)
    assert (synced.loaded, synced.ids()) == (False, ids)

    # one transaction: retitle 3, give one a root cause, delete 2, add 2; then update
    retitled, caused, deleted = ids[3:6], ids[6], [ids[0], ids[20]]
    with factory.begin() as s:
        for n, incident_id in enumerate(retitled):
            s.execute(update(Incident).where(Incident.id == incident_id).values(title=f"retitled {n}"))
        s.execute(update(Incident).where(Incident.id == caused).values(root_cause="expired cert"))
        s.execute(delete(Incident).where(Incident.id.in_(deleted)))
        new = [Incident(title=t, severity="low", created_at=T0, last_activity_at=T0)
               for t in random_titles(rng, 2)]
        s.add_all(new)
        s.flush()
        added = [i.id for i in new]
        touched = [*retitled, caused, *deleted, *added]
        assert sorted(ensure_embeddings(s, embedder, touched)) == sorted([*retitled, caused, *added])
    with factory() as s:  # after the commit
        assert synced.update(s, touched) == SyncReport(added=2, updated=4, removed=2)
        assert synced.update(s, touched) == SyncReport()  # idempotent

    fresh = load_or_rebuild(None, factory, CountingEmbedder())
    assert synced.keys() == fresh.keys()
    assert synced.watermark == fresh.watermark == keys_digest(fresh.keys())
    assert synced.ids() == sorted(set(ids) - set(deleted) | set(added))
    queries = unit_queries(rng, 10)
    assert found(synced, queries, 8) == found(fresh, queries, 8) == [
        brute(factory, "hashing-32", q, 8) for q in queries]


def test_sync_index_catches_up_with_changes_made_behind_its_back(
        factory: sessionmaker[Session]) -> None:
    rng = np.random.default_rng(3)
    ids = add_incidents(factory, random_titles(rng, 12))
    embedder = CountingEmbedder()
    synced = load_or_rebuild(None, factory, embedder)

    retitle(factory, {ids[1]: "replica lag on orders", ids[2]: "queue backlog on billing"})
    with factory.begin() as s:
        s.execute(delete(Incident).where(Incident.id == ids[3]))
        # re-embedded by another model: no longer an embedding of this index's model
        ensure_embeddings(s, CountingEmbedder(name="other-model"), [ids[4]])
        # embedding cleared: out of the index until re-embedded
        s.execute(update(Incident).where(Incident.id == ids[5]).values(embedding=None))
    new = add_incidents(factory, ["kafka consumer lag"])
    with factory.begin() as s:
        ensure_embeddings(s, embedder, [ids[1], ids[2], *new])

    with factory() as s:
        assert pending_changes(s, synced) == SyncReport(added=1, updated=2, removed=3)
        steps: list[int] = []
        assert sync_index(s, synced, progress=steps.append) == SyncReport(added=1, updated=2, removed=3)
        assert steps == [3]  # vectors read: only the new and the changed
        assert synced.keys() == database_keys(s, "hashing-32")
        assert sync_index(s, synced) == pending_changes(s, synced) == SyncReport()
    assert synced.ids() == sorted({*ids, *new} - {ids[3], ids[4], ids[5]})
    assert synced.watermark == keys_digest(synced.keys())


# ---------------------------------------------------------------------------
# search against brute force
# ---------------------------------------------------------------------------


def test_search_equals_brute_force(factory: sessionmaker[Session]) -> None:
    rng = np.random.default_rng(11)
    ids = add_incidents(factory, random_titles(rng, 60))
    resolved = set(ids[::7])  # a few: the filter must over-fetch more than once
    with factory.begin() as s:
        s.execute(update(Incident).where(Incident.id.in_(resolved)).values(status="resolved"))
    synced = load_or_rebuild(None, factory, CountingEmbedder())
    queries = unit_queries(rng, 12)

    for k in (1, 5, 60, 100):
        assert found(synced, queries, k) == [brute(factory, "hashing-32", q, k) for q in queries]
        assert found(synced, queries, k, resolved.__contains__) == [
            brute(factory, "hashing-32", q, k, resolved.__contains__) for q in queries]
    assert found(synced, queries[:1], 5, lambda i: False) == [[]]
    # scores are the cosines of the stored vectors
    hits = synced.search(queries[0], 3)
    vectors = {i: v for i, (_, _, v) in stored(factory).items()}
    np.testing.assert_allclose([s for _, s in hits], [vectors[i] @ queries[0] for i, _ in hits],
                               rtol=1e-5)


# ---------------------------------------------------------------------------
# save, load, rebuild
# ---------------------------------------------------------------------------


def test_second_start_loads_and_catches_up(factory: sessionmaker[Session], tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    add_incidents(factory, random_titles(rng, 15))
    (tmp_path / "index").mkdir()
    path = tmp_path / "index" / "incidents.faiss"
    first = load_or_rebuild(path, factory, CountingEmbedder())
    assert first.loaded is False
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "incidents.faiss", "incidents.faiss.json", "incidents.faiss.keys.json"]

    embedder = CountingEmbedder()
    second = load_or_rebuild(path, factory, embedder)
    assert (second.loaded, embedder.texts, second.keys(), second.watermark) == (
        True, [], first.keys(), first.watermark)
    with factory() as s:
        assert sync_index(s, second) == SyncReport()

    # an incident created while the service was down: embedded and indexed at the next start
    (new,) = add_incidents(factory, ["certificate expired on ingress"])
    third = load_or_rebuild(path, factory, embedder)
    assert (third.loaded, embedder.texts, new in third) == (
        True, ["certificate expired on ingress"], True)
    queries = unit_queries(rng, 5)
    fourth = load_or_rebuild(path, factory, embedder)
    assert fourth.loaded and found(fourth, queries, 4) == [
        brute(factory, "hashing-32", q, 4) for q in queries]


@pytest.mark.parametrize("embedder", [CountingEmbedder(16), CountingEmbedder(DIM, name="renamed")],
                         ids=["another dim", "another model name"])
def test_another_model_rebuilds(factory: sessionmaker[Session], tmp_path: Path,
                                embedder: CountingEmbedder) -> None:
    ids = add_incidents(factory, ["disk full", "dns failures", "pod crash loop"])
    path = tmp_path / "incidents.faiss"
    load_or_rebuild(path, factory, CountingEmbedder())
    embedder.texts.clear()
    rebuilt = load_or_rebuild(path, factory, embedder)
    assert (rebuilt.loaded, rebuilt.model_name, rebuilt.dim, rebuilt.ids(), len(embedder.texts)) == (
        False, embedder.model_name, embedder.dim, ids, 3)
    # and it was saved: the next start with the same model loads it
    assert load_or_rebuild(path, factory, embedder).loaded


def _corrupt_index(path: Path) -> None:
    path.write_bytes(b"not a faiss index")


def _corrupt_keys(path: Path) -> None:
    Path(f"{path}.keys.json").write_text("{", encoding="utf-8")


def _drop_keys(path: Path) -> None:
    Path(f"{path}.keys.json").unlink()


def _key_map_of_another_save(path: Path) -> None:
    keys = Path(f"{path}.keys.json")
    body = json.loads(keys.read_text(encoding="utf-8"))
    body["keys"] = {i: "0" * 64 for i in body["keys"]}  # same ids, other keys
    keys.write_text(json.dumps(body), encoding="utf-8")


@pytest.mark.parametrize("damage", [_corrupt_index, _corrupt_keys, _drop_keys, _key_map_of_another_save])
def test_damaged_files_rebuild(factory: sessionmaker[Session], tmp_path: Path,
                               damage: Callable[[Path], None]) -> None:
    rng = np.random.default_rng(9)
    add_incidents(factory, random_titles(rng, 10))
    path = tmp_path / "incidents.faiss"
    saved = load_or_rebuild(path, factory, CountingEmbedder())
    damage(path)
    embedder = CountingEmbedder()
    rebuilt = load_or_rebuild(path, factory, embedder)
    # rebuilt from the stored embeddings: nothing re-embedded
    assert (rebuilt.loaded, embedder.texts, rebuilt.keys()) == (False, [], saved.keys())
    assert load_or_rebuild(path, factory, embedder).loaded


# ---------------------------------------------------------------------------
# alertlink index rebuild / status
# ---------------------------------------------------------------------------


def test_cli_index_rebuild_and_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'alertlink.db'}"
    monkeypatch.setenv("ALERTLINK_DATABASE_URL", url)
    embedder = CountingEmbedder()
    monkeypatch.setattr(cli, "_embedder", lambda: embedder)
    monkeypatch.setattr(cli, "REBUILD_BATCH", 2)  # several committed batches
    runner = CliRunner()
    path = tmp_path / "idx.faiss"

    def run(*args: str) -> tuple[int, list[str]]:
        result = runner.invoke(cli.app, ["index", *args, "--path", str(path)])
        return result.exit_code, result.stdout.splitlines()

    assert run("status") == (1, [])  # database not migrated: refused, with a hint on stderr
    engine = make_engine(url)
    request.addfinalizer(engine.dispose)
    migrate(engine)
    factory = make_session_factory(engine)
    add_incidents(factory, ["disk full", "dns failures", "pod crash loop"], [None, "resolver down", None])

    assert run("status") == (0, [
        "incidents: 3",
        "embedded with hashing-32: 0 (3 to embed)",
        f"index {path}: missing or unusable (see the warning)",
        "in sync: no (3 to embed; no usable index)",
    ])
    assert run("rebuild") == (0, [f"3 incidents, 3 embedded now, 3 in the index (hashing-32) -> {path}"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("idx")) == [
        "idx.faiss", "idx.faiss.json", "idx.faiss.keys.json"]
    assert run("status") == (0, [
        "incidents: 3",
        "embedded with hashing-32: 3 (0 to embed)",
        f"index {path}: 3 vectors",
        "in sync: yes",
    ])

    add_incidents(factory, ["replica lag"])
    assert run("status")[1][-1] == "in sync: no (1 to embed; index +0 ~0 -0)"
    assert run("rebuild") == (0, [f"4 incidents, 1 embedded now, 4 in the index (hashing-32) -> {path}"])
    assert run("status")[1][-1] == "in sync: yes"
    assert embedder.texts == ["disk full", "dns failures. resolver down", "pod crash loop", "replica lag"]
