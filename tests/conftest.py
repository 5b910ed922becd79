from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from sqlalchemy import Engine

from models.db import make_engine, migrate
from pgserver import PostgresUnavailable, running_postgres

# ---------------------------------------------------------------------------
# Databases: pg_server_url, db_url (SQLite and PostgreSQL), migrated_engine
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """One PostgreSQL server for the whole run (started here, or ALERTLINK_TEST_POSTGRES_URL)."""
    with ExitStack() as stack:
        try:
            url = stack.enter_context(running_postgres())
        except PostgresUnavailable as exc:
            # CI must really test PostgreSQL; a laptop without it still runs the SQLite half
            if os.environ.get("CI"):
                pytest.fail(f"PostgreSQL unavailable: {exc}")
            pytest.skip(f"PostgreSQL unavailable: {exc}")
        yield url


@pytest.fixture(scope="session")
def _pg_admin(pg_server_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_server_url).execution_options(isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database per test (not migrated), on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'alertlink.db'}"
        return
    admin: Engine = request.getfixturevalue("_pg_admin")
    name = f"t_{uuid.uuid4().hex}"
    with admin.connect() as conn:  # a new database is a cheap copy of template1
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:  # FORCE: a test may leave connections open
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def migrated_engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    migrate(engine)
    yield engine
    engine.dispose()


# --- end of database fixtures ----------------------------------------------
