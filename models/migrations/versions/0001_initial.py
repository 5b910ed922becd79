"""Initial schema: incidents, alerts, links, incident events, pending groups.

Revision ID: 0001
Revises:
Create Date: 2025-12-03

Values are frozen here, not imported from models.tables: a migration must keep
creating the schema of its day when the tables change later.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEVERITIES = "'critical', 'high', 'medium', 'low', 'info'"


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(255), nullable=True),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("severity", sa.String(20), nullable=False),
        _time("created_at"),
        _time("acknowledged_at", nullable=True),
        _time("resolved_at", nullable=True),
        sa.Column("root_cause", sa.Text(), nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("aggregation_key", sa.String(500), nullable=True),
        _time("last_activity_at"),
        sa.CheckConstraint(
            "status IN ('open', 'acknowledged', 'resolved')", name=op.f("ck_incidents_status")
        ),
        sa.CheckConstraint(f"severity IN ({SEVERITIES})", name=op.f("ck_incidents_severity")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incidents")),
    )
    op.create_index(op.f("ix_incidents_status"), "incidents", ["status"])
    op.create_index(op.f("ix_incidents_aggregation_key"), "incidents", ["aggregation_key"])
    op.create_index(op.f("ix_incidents_external_id"), "incidents", ["external_id"])

    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(255), nullable=True),
        sa.Column("fingerprint", sa.String(600), nullable=False),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("severity", sa.String(20), nullable=False),
        _time("fired_at"),
        _time("resolved_at", nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("annotations", sa.JSON(), nullable=False),
        sa.Column("delivery_count", sa.Integer(), nullable=False),
        _time("received_at"),
        _time("last_received_at"),
        sa.CheckConstraint(
            "status IN ('firing', 'acknowledged', 'resolved')", name=op.f("ck_alerts_status")
        ),
        sa.CheckConstraint(f"severity IN ({SEVERITIES})", name=op.f("ck_alerts_severity")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
        sa.UniqueConstraint(
            "fingerprint", "fired_at", name=op.f("uq_alerts_fingerprint_fired_at")
        ),
    )
    op.create_index(op.f("ix_alerts_fingerprint"), "alerts", ["fingerprint"])
    op.create_index(op.f("ix_alerts_fired_at"), "alerts", ["fired_at"])
    op.create_index(op.f("ix_alerts_status"), "alerts", ["status"])
    op.create_index(op.f("ix_alerts_external_id"), "alerts", ["external_id"])

    op.create_table(
        "alert_incident_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("link_type", sa.String(30), nullable=False),
        _time("linked_at"),
        sa.Column("linked_by", sa.String(255), nullable=False),
        sa.Column("rule", sa.String(255), nullable=True),
        sa.Column("score", sa.Double(), nullable=True),
        sa.Column("components", sa.JSON(), nullable=True),
        sa.Column("decided_by_version", sa.String(255), nullable=True),
        _time("removed_at", nullable=True),
        sa.Column("removed_by", sa.String(255), nullable=True),
        sa.CheckConstraint(
            "link_type IN ('auto_created', 'auto_correlated', 'manual', 'historical')",
            name=op.f("ck_alert_incident_links_link_type"),
        ),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alerts.id"], ondelete="CASCADE",
            name=op.f("fk_alert_incident_links_alert_id_alerts"),
        ),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incidents.id"], ondelete="CASCADE",
            name=op.f("fk_alert_incident_links_incident_id_incidents"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_incident_links")),
        sa.UniqueConstraint("alert_id", "incident_id", name=op.f("uq_alert_incident_links_pair")),
    )
    op.create_index(op.f("ix_alert_incident_links_alert_id"), "alert_incident_links", ["alert_id"])
    op.create_index(
        op.f("ix_alert_incident_links_incident_id"), "alert_incident_links", ["incident_id"]
    )

    op.create_table(
        "incident_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        _time("at"),
        sa.Column("kind", sa.String(50), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incidents.id"], ondelete="CASCADE",
            name=op.f("fk_incident_events_incident_id_incidents"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident_events")),
    )
    op.create_index(op.f("ix_incident_events_incident_id"), "incident_events", ["incident_id"])

    op.create_table(
        "pending_groups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rule", sa.String(255), nullable=False),
        sa.Column("group_key", sa.String(500), nullable=False),
        _time("started_at"),
        _time("expires_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_groups")),
        sa.UniqueConstraint("rule", "group_key", name=op.f("uq_pending_groups_rule_key")),
    )
    op.create_index(op.f("ix_pending_groups_expires_at"), "pending_groups", ["expires_at"])

    op.create_table(
        "pending_group_alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"], ["pending_groups.id"], ondelete="CASCADE",
            name=op.f("fk_pending_group_alerts_group_id_pending_groups"),
        ),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alerts.id"], ondelete="CASCADE",
            name=op.f("fk_pending_group_alerts_alert_id_alerts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_group_alerts")),
        sa.UniqueConstraint("group_id", "alert_id", name=op.f("uq_pending_group_alerts_pair")),
    )
    op.create_index(
        op.f("ix_pending_group_alerts_alert_id"), "pending_group_alerts", ["alert_id"]
    )


def downgrade() -> None:
    # children first; a table's indexes and constraints go with it
    for table in (
        "pending_group_alerts",
        "pending_groups",
        "incident_events",
        "alert_incident_links",
        "alerts",
        "incidents",
    ):
        op.drop_table(table)
