"""Incident embeddings (the FAISS index is derived from them) and suggested links.

Revision ID: 0002
Revises: 0001
Create Date: 2025-12-10

Values are frozen here, not imported from models.tables (see 0001).
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EMBEDDING_COLUMNS = ("embedding", "embedding_model", "embedding_key")


def upgrade() -> None:
    # batch mode: on SQLite an added nullable column is a plain ALTER, no table copy
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(sa.Column("embedding", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("embedding_model", sa.String(200), nullable=True))
        batch.add_column(sa.Column("embedding_key", sa.String(64), nullable=True))

    op.create_table(
        "suggestions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("components", sa.JSON(), nullable=True),
        sa.Column("weights_version", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("decided_by", sa.String(255), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('open', 'accepted', 'dismissed')", name=op.f("ck_suggestions_status")
        ),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alerts.id"], ondelete="CASCADE",
            name=op.f("fk_suggestions_alert_id_alerts"),
        ),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incidents.id"], ondelete="CASCADE",
            name=op.f("fk_suggestions_incident_id_incidents"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suggestions")),
        sa.UniqueConstraint("alert_id", "incident_id", name=op.f("uq_suggestions_pair")),
    )
    op.create_index(op.f("ix_suggestions_incident_id"), "suggestions", ["incident_id"])
    op.create_index(op.f("ix_suggestions_alert_id"), "suggestions", ["alert_id"])


def downgrade() -> None:
    op.drop_table("suggestions")
    # on SQLite this copies the table (models.db runs it with foreign keys off, so the
    # incidents' children survive the DROP of the old copy)
    with op.batch_alter_table("incidents") as batch:
        for column in reversed(EMBEDDING_COLUMNS):
            batch.drop_column(column)
