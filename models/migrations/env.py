"""Alembic environment. Run through `models.db.migrate` / `models.db.downgrade`, which
pass an open connection in `config.attributes["connection"]` (no alembic.ini).

To write a new revision, autogenerate against a migrated database:
    config = models.db._config(); config.attributes["connection"] = conn
    alembic.command.revision(config, "message", autogenerate=True)
"""
from __future__ import annotations

from alembic import context

from models.tables import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("run migrations through models.db.migrate(engine), with a connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things: later migrations rebuild tables in batch mode
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
