"""Engines, sessions and migrations for SQLite and PostgreSQL.

Nothing is built at import time: callers pass a URL (from `Settings`) and get an
engine; `migrate` runs the Alembic scripts shipped in `models/migrations`, so no
alembic.ini is needed and it works from an installed package.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.drivername == "postgresql":  # plain URL: use psycopg 3, not the psycopg2 default
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)

    in_memory = parsed.database in (None, "", ":memory:")
    if in_memory:
        # one connection for every thread (a TestClient runs the app in another thread),
        # otherwise each connection would see its own empty database
        engine = create_engine(
            parsed, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        engine = create_engine(parsed)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")  # off by default in SQLite: no cascades without it
        if not in_memory:
            # readers do not block the writer; a waiting writer retries instead of failing at once
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # objects stay readable after commit (e.g. to build the response) without a reload
    return sessionmaker(engine, expire_on_commit=False)


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _run(engine: Engine, step: Callable[[Config], None]) -> None:
    config = _config()
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # batch mode rebuilds a table by copy, DROP and rename; with foreign keys ON the
            # DROP would cascade-delete the child rows. SQLite's own advice: migrate with them
            # OFF, then run foreign_key_check. The PRAGMA only works outside a transaction.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            config.attributes["connection"] = conn
            step(config)
            if sqlite and (bad := conn.exec_driver_sql("PRAGMA foreign_key_check").all()):
                raise RuntimeError(f"migration left dangling foreign keys: {bad}")
            conn.commit()
        finally:
            if sqlite:  # the connection goes back to the pool: restore the setting
                conn.rollback()
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


def migrate(engine: Engine, revision: str = "head") -> None:
    _run(engine, lambda config: command.upgrade(config, revision))


def downgrade(engine: Engine, revision: str) -> None:
    _run(engine, lambda config: command.downgrade(config, revision))


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, "no migration scripts found"
    return head
