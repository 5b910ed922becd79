"""Shadow decisions: what a second weights file would have decided, beside the live decision.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

Values are frozen here, not imported from models.tables (see 0001).
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shadow_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("live_weights_version", sa.String(255), nullable=False),
        sa.Column("shadow_weights_version", sa.String(255), nullable=False),
        sa.Column("live_kind", sa.String(10), nullable=False),
        sa.Column("shadow_kind", sa.String(10), nullable=False),
        sa.Column("live_incident_id", sa.Integer(), nullable=True),
        sa.Column("shadow_incident_id", sa.Integer(), nullable=True),
        sa.Column("live_pair_alert_id", sa.Integer(), nullable=True),
        sa.Column("shadow_pair_alert_id", sa.Integer(), nullable=True),
        sa.Column("live_score", sa.Double(), nullable=True),
        sa.Column("shadow_score", sa.Double(), nullable=True),
        sa.Column("agree", sa.Boolean(), nullable=False),
        sa.CheckConstraint(
            "live_kind IN ('link', 'open', 'none')", name=op.f("ck_shadow_decisions_live_kind")
        ),
        sa.CheckConstraint(
            "shadow_kind IN ('link', 'open', 'none')", name=op.f("ck_shadow_decisions_shadow_kind")
        ),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alerts.id"], ondelete="CASCADE",
            name=op.f("fk_shadow_decisions_alert_id_alerts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shadow_decisions")),
        sa.UniqueConstraint("alert_id", name=op.f("uq_shadow_decisions_alert_id")),
    )
    op.create_index(op.f("ix_shadow_decisions_decided_at"), "shadow_decisions", ["decided_at"])


def downgrade() -> None:
    op.drop_table("shadow_decisions")
