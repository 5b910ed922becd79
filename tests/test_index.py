"""indexer.index: search against numpy brute force, updates, persistence, thread safety."""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from indexer import IncidentIndex
from indexer.bench import clustered_vectors
from indexer.index import ivf_nlist, ivf_nprobe

DIM = 32
MODEL = "hashing-32"


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int) -> list[list[int]]:
    """The exact top-k ids per query, best first."""
    order = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]
    return ids[order].tolist()


def found(index: IncidentIndex, queries: np.ndarray, k: int) -> list[list[int]]:
    return [[i for i, _ in hits] for hits in index.search(queries, k)]


def recall(got: list[list[int]], exact: list[list[int]]) -> float:
    return float(np.mean([len(set(g) & set(e)) / len(e) for g, e in zip(got, exact, strict=True)]))


def state_arrays(state: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array(sorted(state), dtype=np.int64)
    return ids, np.stack([state[i] for i in ids.tolist()])


# ---------------------------------------------------------------------------
# search
# ---------------------------------------------------------------------------


def test_flat_search_equals_brute_force() -> None:
    rng = np.random.default_rng(1)
    ids = rng.choice(10**9, size=500, replace=False).astype(np.int64)
    vectors, queries = unit(rng, 500), unit(rng, 25)
    index = IncidentIndex(DIM, model_name=MODEL)
    index.add(ids, vectors)
    results = index.search(queries, 10)
    assert (index.kind, len(index), index.count) == ("flat", 500, 500)
    assert [[i for i, _ in hits] for hits in results] == brute(ids, vectors, queries, 10)
    # the scores are the inner products themselves
    exact_scores = -np.sort(-(queries @ vectors.T), axis=1)[:, :10]
    np.testing.assert_allclose([[s for _, s in hits] for hits in results], exact_scores, atol=1e-5)


def test_ivf_search_has_high_recall_against_brute_force() -> None:
    vectors, queries = clustered_vectors(3000, 50, dim=DIM, seed=2)
    ids = np.arange(3000, dtype=np.int64) * 11 + 3
    index = IncidentIndex(DIM, model_name=MODEL, ivf_threshold=1000)
    index.rebuild(ids, vectors)
    assert (index.kind, len(index), index.nprobe) == ("ivf", 3000, ivf_nprobe(ivf_nlist(3000)))
    got = found(index, queries, 10)
    assert recall(got, brute(ids, vectors, queries, 10)) >= 0.9
    present = set(ids.tolist())
    assert all(set(row) <= present and len(row) == len(set(row)) for row in got)
    scores = [[s for _, s in hits] for hits in index.search(queries, 10)]
    assert scores == [sorted(row, reverse=True) for row in scores]  # best first


def test_k_larger_than_count_and_empty_index() -> None:
    rng = np.random.default_rng(3)
    index = IncidentIndex(DIM, model_name=MODEL)
    queries = unit(rng, 2)
    assert index.search(queries, 5) == [[], []]
    ids, vectors = np.array([7, 3, 9]), unit(rng, 3)
    index.add(ids, vectors)
    assert found(index, queries, 50) == brute(ids, vectors, queries, 50)
    assert [len(row) for row in found(index, queries, 50)] == [3, 3]


def test_bad_input_is_rejected() -> None:
    index = IncidentIndex(DIM, model_name=MODEL)
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError, match="shape"):
        index.add([1], unit(rng, 1, DIM + 1))
    with pytest.raises(ValueError, match="ids for"):
        index.add([1, 2], unit(rng, 1))
    with pytest.raises(ValueError, match="normalised"):
        index.add([1], 2 * unit(rng, 1))
    with pytest.raises(ValueError, match="k must be"):
        index.search(unit(rng, 1), 0)
    assert len(index) == 0


# ---------------------------------------------------------------------------
# updates
# ---------------------------------------------------------------------------


def test_add_replace_remove() -> None:
    rng = np.random.default_rng(5)
    vectors = unit(rng, 4)
    index = IncidentIndex(DIM, model_name=MODEL)
    index.add([10, 20, 30], vectors[:3])
    index.add([20], vectors[3:])  # a retitle: same id, new vector
    assert (len(index), index.ids()) == (3, [10, 20, 30])
    assert found(index, vectors[3:], 1) == [[20]]
    assert found(index, vectors[1:2], 3)[0] != [20]  # the old vector is gone
    index.remove([10, 99])  # an absent id is ignored
    assert (len(index), index.ids(), 10 in index, 20 in index) == (2, [20, 30], False, True)
    assert found(index, vectors, 10) == brute(np.array([30, 20]), vectors[[2, 3]], vectors, 10)


def test_same_id_twice_in_one_add_keeps_the_last() -> None:
    rng = np.random.default_rng(6)
    vectors = unit(rng, 3)
    index = IncidentIndex(DIM, model_name=MODEL)
    index.add([1, 2, 1], vectors)
    assert index.ids() == [1, 2]
    assert found(index, vectors, 2) == brute(np.array([2, 1]), vectors[1:], vectors, 2)


Op = tuple[str, list[int], np.ndarray | None]


def random_history(rng: np.random.Generator, steps: int) -> tuple[list[Op], dict[int, np.ndarray]]:
    """Random adds, retitles and removes, and the final state they leave."""
    ops: list[Op] = []
    state: dict[int, np.ndarray] = {}
    next_id = 1
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.5 or len(state) < 10:  # new incidents
            batch = list(range(next_id, next_id + int(rng.integers(1, 20))))
            next_id = batch[-1] + 1
        elif roll < 0.75:  # retitles
            batch = rng.choice(sorted(state), size=min(5, len(state)), replace=False).tolist()
        else:  # deletes
            gone = rng.choice(sorted(state), size=min(4, len(state)), replace=False).tolist()
            ops.append(("remove", gone, None))
            for i in gone:
                del state[i]
            continue
        vectors = unit(rng, len(batch))
        ops.append(("add", batch, vectors))
        state.update(zip(batch, vectors, strict=True))
    return ops, state


def replay(index: IncidentIndex, ops: list[Op]) -> None:
    for _, ids, vectors in ops:
        if vectors is None:
            index.remove(ids)
        else:
            index.add(ids, vectors)


def test_incremental_index_equals_rebuilt_one() -> None:
    rng = np.random.default_rng(7)
    ops, state = random_history(rng, 120)
    incremental = IncidentIndex(DIM, model_name=MODEL)
    replay(incremental, ops)
    ids, vectors = state_arrays(state)
    rebuilt = IncidentIndex(DIM, model_name=MODEL)
    rebuilt.rebuild(ids, vectors)
    queries = unit(rng, 30)
    assert incremental.ids() == rebuilt.ids() == ids.tolist()
    assert incremental.search(queries, 10) == rebuilt.search(queries, 10)
    assert found(rebuilt, queries, 10) == brute(ids, vectors, queries, 10)


def test_index_switches_to_ivf_retrains_and_goes_back_as_it_grows_and_shrinks() -> None:
    vectors, queries = clustered_vectors(1300, 40, dim=DIM, seed=8)
    ids = np.arange(1, 1301, dtype=np.int64)
    index = IncidentIndex(DIM, model_name=MODEL, ivf_threshold=250)
    trained_on = []
    for start in range(0, 1300, 100):
        index.add(ids[start : start + 100], vectors[start : start + 100])
        trained_on.append(index._trained_on)  # white box: when the IVF lists were (re)trained
    assert trained_on == [0, 0, 300, 300, 300, 300, 300, 300, 300, 300, 300, 300, 1300]
    assert (index.kind, index.ids()) == ("ivf", ids.tolist())
    assert recall(found(index, queries, 10), brute(ids, vectors, queries, 10)) >= 0.9
    index.add(ids[:5], vectors[:5][::-1])  # retitles on IVF
    vectors[:5] = vectors[:5][::-1].copy()
    index.remove(ids[100:])  # 100 left: under half the threshold
    assert (index.kind, index.ids()) == ("flat", ids[:100].tolist())
    assert found(index, queries, 10) == brute(ids[:100], vectors[:100], queries, 10)


def test_changes_made_during_a_rebuild_are_kept() -> None:
    rng = np.random.default_rng(9)
    vectors = unit(rng, 6)
    index = IncidentIndex(DIM, model_name=MODEL)
    index.add([1, 2], vectors[:2])
    build = index._build

    def build_while_others_write(keys: np.ndarray, rows: np.ndarray):  # type: ignore[no-untyped-def]
        # what an update thread could do while the rebuild trains outside the lock
        index.add([5, 4], vectors[4:6])
        index.remove([3])
        assert found(index, vectors[4:5], 1) == [[5]]  # searches still answer meanwhile
        return build(keys, rows)

    index._build = build_while_others_write  # type: ignore[method-assign]
    index.rebuild([3, 4], vectors[2:4])
    assert index.ids() == [4, 5]
    assert found(index, vectors, 2) == brute(np.array([5, 4]), vectors[4:6], vectors, 2)


def test_concurrent_searches_and_updates() -> None:
    rng = np.random.default_rng(10)
    ops, state = random_history(rng, 200)
    index = IncidentIndex(DIM, model_name=MODEL, ivf_threshold=300)
    queries = unit(rng, 5)
    errors: list[BaseException] = []
    done = threading.Event()

    def search() -> None:
        try:
            while not done.is_set():
                for row in index.search(queries, 10):
                    assert len(row) == len({i for i, _ in row}) <= 10
        except BaseException as exc:  # reported below
            errors.append(exc)

    readers = [threading.Thread(target=search) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        replay(index, ops)
    finally:
        done.set()
        for t in readers:
            t.join()
    assert errors == []
    assert (index.kind, index.ids()) == ("ivf", sorted(state))


# ---------------------------------------------------------------------------
# persistence
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [10_000, 100], ids=["flat", "ivf"])
def test_save_load_round_trip(tmp_path: Path, threshold: int) -> None:
    vectors, queries = clustered_vectors(800, 20, dim=DIM, seed=11)
    ids = np.arange(800, dtype=np.int64) * 5
    index = IncidentIndex(DIM, model_name=MODEL, watermark="alerts:1234", ivf_threshold=threshold)
    index.rebuild(ids, vectors)
    index.remove(ids[:10])
    path = tmp_path / "incidents.faiss"
    index.save(path)
    loaded = IncidentIndex.load(path, model_name=MODEL, dim=DIM, ivf_threshold=threshold)
    assert loaded is not None
    def meta(i: IncidentIndex) -> tuple[object, ...]:
        return (i.model_name, i.dim, i.count, i.watermark, i.kind, i.nprobe, i.ids())

    assert meta(loaded) == meta(index)
    assert loaded.search(queries, 10) == index.search(queries, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["incidents.faiss", "incidents.faiss.json"]
    # the loaded index keeps working
    loaded.add([1], vectors[:1])
    assert 1 in loaded and len(loaded) == 791


def test_save_replaces_an_older_save(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    path = tmp_path / "i.faiss"
    index = IncidentIndex(DIM, model_name=MODEL, watermark=1)
    index.add([1], unit(rng, 1))
    index.save(path)
    index.add([2], unit(rng, 1))
    index.watermark = 2
    index.save(path)
    loaded = IncidentIndex.load(path, model_name=MODEL, dim=DIM)
    assert loaded is not None and (loaded.watermark, loaded.ids()) == (2, [1, 2])


def _corrupt_index(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_sidecar(path: Path, **changes: object) -> None:
    sidecar = path.with_name(path.name + ".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), **changes}))


@pytest.mark.parametrize(
    ("damage", "load_as", "reason"),
    [
        (lambda p: p.unlink(), {}, "missing"),
        (lambda p: p.with_name(p.name + ".json").unlink(), {}, "missing"),
        (_corrupt_index, {}, "checksum mismatch"),
        (lambda p: p.with_name(p.name + ".json").write_text("{not json"), {}, "Expecting property name"),
        (lambda p: p.with_name(p.name + ".json").write_text("[]"), {}, "not a JSON object"),
        (lambda p: _edit_sidecar(p, kind="ivf"), {}, "does not match the stored IndexIDMap2"),
        (lambda p: None, {"model_name": "all-MiniLM-L6-v2"}, "built with model 'hashing-32'"),
        (lambda p: None, {"dim": 384}, "dim 32, expected 384"),
    ],
    ids=["no-index", "no-sidecar", "checksum", "bad-json", "json-not-object", "wrong-kind", "model", "dim"],
)
def test_load_returns_none_and_says_why(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[Path], object],
    load_as: dict[str, object],
    reason: str,
) -> None:
    index = IncidentIndex(DIM, model_name=MODEL)
    index.add([1, 2], unit(np.random.default_rng(13), 2))
    path = tmp_path / "i.faiss"
    index.save(path)
    damage(path)
    with caplog.at_level(logging.WARNING, logger="indexer.index"):
        assert IncidentIndex.load(path, **{"model_name": MODEL, "dim": DIM, **load_as}) is None
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert reason in caplog.records[0].getMessage()
