"""The data model: incidents (with their embeddings), alerts, the links between them,
suggested links, the incident timeline, the pending aggregation groups and the shadow
weights' decisions. Tables only; no business logic lives here.

Runs on SQLite (the embedded default) and PostgreSQL. Every time is stored as
UTC and read back timezone-aware (`UTCDateTime`), so the decision code never
compares naive and aware datetimes.
"""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

SEVERITIES = ("critical", "high", "medium", "low", "info")
INCIDENT_STATUSES = ("open", "acknowledged", "resolved")
ALERT_STATUSES = ("firing", "acknowledged", "resolved")
LINK_TYPES = ("auto_created", "auto_correlated", "manual", "historical")
SUGGESTION_STATUSES = ("open", "accepted", "dismissed")
SCORED_KINDS = ("link", "open", "none")  # what the scorer alone decided (service.decide.scored_decision)

# Stable constraint names, so migrations can refer to them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC; returns aware UTC datetimes on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: alertlink stores aware UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Incident(Base):
    __tablename__ = "incidents"
    __table_args__ = (
        CheckConstraint(_in("status", INCIDENT_STATUSES), name="status"),
        CheckConstraint(_in("severity", SEVERITIES), name="severity"),
        Index("ix_incidents_status", "status"),
        Index("ix_incidents_aggregation_key", "aggregation_key"),
        Index("ix_incidents_external_id", "external_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # id in the system the incident came from (a data set, an import); None for our own
    external_id: Mapped[str | None] = mapped_column(String(255))
    title: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(20), default="open")
    severity: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime]
    acknowledged_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    root_cause: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[str | None] = mapped_column(Text)
    aggregation_key: Mapped[str | None] = mapped_column(String(500))
    # event time of the newest alert linked (or the creation): windows are measured on it
    last_activity_at: Mapped[datetime]
    # float32 little-endian unit vector of indexer.sync.incident_text(title, root_cause). The
    # FAISS index is derived from these; embedding_key (sha256 of model name + "\0" + text)
    # tells a retitle or a new model from a current embedding without re-embedding everything.
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    embedding_model: Mapped[str | None] = mapped_column(String(200))
    embedding_key: Mapped[str | None] = mapped_column(String(64))

    links: Mapped[list[AlertIncidentLink]] = relationship(
        back_populates="incident", cascade="all, delete-orphan", passive_deletes=True
    )
    events: Mapped[list[IncidentEvent]] = relationship(
        back_populates="incident", cascade="all, delete-orphan", passive_deletes=True,
        order_by="IncidentEvent.id",
    )


class Alert(Base):
    __tablename__ = "alerts"
    __table_args__ = (
        CheckConstraint(_in("status", ALERT_STATUSES), name="status"),
        CheckConstraint(_in("severity", SEVERITIES), name="severity"),
        # one stored occurrence per (fingerprint, start): re-delivery updates it
        UniqueConstraint("fingerprint", "fired_at", name="uq_alerts_fingerprint_fired_at"),
        Index("ix_alerts_fingerprint", "fingerprint"),
        Index("ix_alerts_fired_at", "fired_at"),
        Index("ix_alerts_status", "status"),
        Index("ix_alerts_external_id", "external_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str | None] = mapped_column(String(255))
    # 16 hex digits from Alertmanager; a prefixed sha256 for PagerDuty/Opsgenie keys; up to 512 + prefix (Opsgenie alias)
    fingerprint: Mapped[str] = mapped_column(String(600))
    title: Mapped[str] = mapped_column(String(500))
    source: Mapped[str] = mapped_column(String(100))
    severity: Mapped[str] = mapped_column(String(20))
    fired_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(20), default="firing")
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    annotations: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # how many times the same occurrence was delivered (Alertmanager repeats and retries)
    delivery_count: Mapped[int] = mapped_column(Integer, default=1)
    received_at: Mapped[datetime]
    last_received_at: Mapped[datetime]

    links: Mapped[list[AlertIncidentLink]] = relationship(
        back_populates="alert", cascade="all, delete-orphan", passive_deletes=True
    )


class AlertIncidentLink(Base):
    __tablename__ = "alert_incident_links"
    __table_args__ = (
        UniqueConstraint("alert_id", "incident_id", name="uq_alert_incident_links_pair"),
        CheckConstraint(_in("link_type", LINK_TYPES), name="link_type"),
        Index("ix_alert_incident_links_alert_id", "alert_id"),
        Index("ix_alert_incident_links_incident_id", "incident_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"))
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"))
    link_type: Mapped[str] = mapped_column(String(30))
    linked_at: Mapped[datetime]
    linked_by: Mapped[str] = mapped_column(String(255))
    # why: the rule that decided, and for scored links the score and its components
    rule: Mapped[str | None] = mapped_column(String(255))
    score: Mapped[float | None] = mapped_column(Double)
    components: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # version of the rules / weights in force when the link was made
    decided_by_version: Mapped[str | None] = mapped_column(String(255))
    # a responder's removal is kept (never deleted) so it is never re-added automatically
    removed_at: Mapped[datetime | None]
    removed_by: Mapped[str | None] = mapped_column(String(255))

    alert: Mapped[Alert] = relationship(back_populates="links")
    incident: Mapped[Incident] = relationship(back_populates="links")


class Suggestion(Base):
    """"This alert may belong to that incident": scored below the auto-link threshold, left
    for a responder to accept or dismiss."""

    __tablename__ = "suggestions"
    __table_args__ = (
        UniqueConstraint("alert_id", "incident_id", name="uq_suggestions_pair"),
        CheckConstraint(_in("status", SUGGESTION_STATUSES), name="status"),
        Index("ix_suggestions_incident_id", "incident_id"),
        Index("ix_suggestions_alert_id", "alert_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"))
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"))
    score: Mapped[float] = mapped_column(Double)
    components: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    weights_version: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(20), default="open")
    decided_by: Mapped[str | None] = mapped_column(String(255))
    decided_at: Mapped[datetime | None]

    # one-way: the database cascades deletes, so Alert and Incident need no collection of these
    alert: Mapped[Alert] = relationship()
    incident: Mapped[Incident] = relationship()


class ShadowDecision(Base):
    """What the live and the shadow weights' scorer decided for one new alert, from the
    same candidates (the shadow's is never acted on). The ids are as decided, not foreign
    keys: a record, kept when the incident or the paired alert changes."""

    __tablename__ = "shadow_decisions"
    __table_args__ = (
        CheckConstraint(_in("live_kind", SCORED_KINDS), name="live_kind"),
        CheckConstraint(_in("shadow_kind", SCORED_KINDS), name="shadow_kind"),
        Index("ix_shadow_decisions_decided_at", "decided_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), unique=True)
    decided_at: Mapped[datetime]  # the alert's event time
    live_weights_version: Mapped[str] = mapped_column(String(255))
    shadow_weights_version: Mapped[str] = mapped_column(String(255))
    # link: join live_incident_id; open: a new incident with the alert live_pair_alert_id;
    # none: no candidate reached the threshold (the rules decided)
    live_kind: Mapped[str] = mapped_column(String(10))
    shadow_kind: Mapped[str] = mapped_column(String(10))
    live_incident_id: Mapped[int | None] = mapped_column(Integer)
    shadow_incident_id: Mapped[int | None] = mapped_column(Integer)
    live_pair_alert_id: Mapped[int | None] = mapped_column(Integer)
    shadow_pair_alert_id: Mapped[int | None] = mapped_column(Integer)
    # the best candidate's score (None: no candidate at all)
    live_score: Mapped[float | None] = mapped_column(Double)
    shadow_score: Mapped[float | None] = mapped_column(Double)
    agree: Mapped[bool] = mapped_column(Boolean)


class IncidentEvent(Base):
    """The incident's timeline and activity log."""

    __tablename__ = "incident_events"
    __table_args__ = (Index("ix_incident_events_incident_id", "incident_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"))
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(50))
    actor: Mapped[str] = mapped_column(String(255))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    incident: Mapped[Incident] = relationship(back_populates="events")


class PendingGroup(Base):
    """An aggregation group waiting for its minimum count or the end of its window."""

    __tablename__ = "pending_groups"
    __table_args__ = (
        UniqueConstraint("rule", "group_key", name="uq_pending_groups_rule_key"),
        Index("ix_pending_groups_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule: Mapped[str] = mapped_column(String(255))
    group_key: Mapped[str] = mapped_column(String(500))
    started_at: Mapped[datetime]
    expires_at: Mapped[datetime]

    members: Mapped[list[PendingGroupAlert]] = relationship(
        back_populates="group", cascade="all, delete-orphan", passive_deletes=True,
        order_by="PendingGroupAlert.id",
    )


class PendingGroupAlert(Base):
    __tablename__ = "pending_group_alerts"
    __table_args__ = (
        UniqueConstraint("group_id", "alert_id", name="uq_pending_group_alerts_pair"),
        Index("ix_pending_group_alerts_alert_id", "alert_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("pending_groups.id", ondelete="CASCADE"))
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"))

    group: Mapped[PendingGroup] = relationship(back_populates="members")
