"""The app and its FAISS index file: saved at shutdown, loaded at the next start when it
matches the database, rebuilt from the database when it is missing. A file SQLite
database in tmp_path, so a second app sees what the first stored."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from helpers import Clock, generic
from indexer.embedder import HashingEmbedder
from indexer.sync import SyncedIndex, SyncReport, pending_changes
from service.app import create_app
from service.settings import Settings

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'alertlink.db'}", index_path=tmp_path / "incidents.faiss",
                    clock="manual", scorer=True, rules_dir=None)


def files(settings: Settings) -> list[Path]:
    path = settings.index_path
    assert path is not None
    return [path, path.with_name(path.name + ".json"), path.with_name(path.name + ".keys.json")]


def start(settings: Settings) -> TestClient:
    return TestClient(create_app(settings, embedder=HashingEmbedder(), wall_clock=Clock(T0)))


def index_of(client: TestClient) -> SyncedIndex:
    return client.app_state["pipeline"].index


def in_sync(client: TestClient) -> bool:
    with client.app_state["session_factory"]() as session:
        return pending_changes(session, index_of(client)) == SyncReport()


def open_incident(client: TestClient, title: str, at: datetime) -> int:
    r = client.post("/alerts", json=generic(title, "critical", at, service="checkout"))
    assert r.is_success, r.text
    return r.json()["results"][0]["decision"]["incident_id"]


def state(client: TestClient) -> dict[str, Any]:
    index = index_of(client)
    return {"loaded": index.loaded, "ids": index.ids(), "in_sync": in_sync(client)}


def test_saved_at_shutdown_and_loaded_at_the_next_start(settings):
    with start(settings) as c:
        first = open_incident(c, "HighLatency", T0)
        assert index_of(c).ids() == [first]  # updated after the commit
    assert all(f.exists() for f in files(settings))
    with start(settings) as c:
        assert state(c) == {"loaded": True, "ids": [first], "in_sync": True}
        second = open_incident(c, "DiskFull", T0 + timedelta(hours=1))
    with start(settings) as c:
        assert state(c) == {"loaded": True, "ids": [first, second], "in_sync": True}


def test_rebuilt_when_the_files_are_gone(settings):
    with start(settings) as c:
        first = open_incident(c, "HighLatency", T0)
    for f in files(settings):
        f.unlink()
    with start(settings) as c:
        assert state(c) == {"loaded": False, "ids": [first], "in_sync": True}
        assert all(f.exists() for f in files(settings))  # written again at start


def test_a_damaged_file_is_rebuilt(settings):
    with start(settings) as c:
        first = open_incident(c, "HighLatency", T0)
    files(settings)[2].write_text("{not json")
    with start(settings) as c:
        assert state(c) == {"loaded": False, "ids": [first], "in_sync": True}


def test_a_file_behind_the_database_is_caught_up(settings):
    with start(settings) as c:
        first = open_incident(c, "HighLatency", T0)
    behind = {f: f.read_bytes() for f in files(settings)}
    with start(settings) as c:
        second = open_incident(c, "DiskFull", T0 + timedelta(hours=1))
    for f, data in behind.items():  # the files of the first run: one incident short
        f.write_bytes(data)
    with start(settings) as c:
        assert state(c) == {"loaded": True, "ids": [first, second], "in_sync": True}


def test_no_index_path_writes_nothing(settings, tmp_path):
    memory_only = settings.model_copy(update={"index_path": None})
    with start(memory_only) as c:
        open_incident(c, "HighLatency", T0)
        assert index_of(c).loaded is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alertlink.db"]
