"""Opsgenie Alert API: create (`POST /v2/alerts`), close and acknowledge
(`POST /v2/alerts/{identifier}/close|acknowledge?identifierType=alias`)."""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from service.domain import AlertIn, InputError
from service.parsers.common import NonEmptyStr, StatusChange, as_utc, derived_key, normalize_severity

_LIBERAL = ConfigDict(extra="allow")


class OpsgenieCreate(BaseModel):
    model_config = _LIBERAL

    message: NonEmptyStr
    alias: StrictStr | None = Field(default=None, max_length=512)
    description: StrictStr | None = None
    tags: list[StrictStr] = Field(default_factory=list)
    details: dict[str, StrictStr] = Field(default_factory=dict)
    entity: StrictStr | None = None
    source: StrictStr | None = None
    priority: StrictStr | None = None
    user: StrictStr | None = None
    note: StrictStr | None = None


class OpsgenieAction(BaseModel):
    """Body of close and acknowledge; nothing in it changes what happens."""

    model_config = _LIBERAL

    source: StrictStr | None = None
    user: StrictStr | None = None
    note: StrictStr | None = None


def key(alias: str) -> str:
    """Our fingerprint for an Opsgenie alias (namespaced, see `pagerduty.key`)."""
    return f"opsgenie:{alias}"


def to_alerts(
    body: OpsgenieCreate, *, received_at: datetime, severity_words: Mapping[str, str], default_severity: str = "P3"
) -> list[AlertIn]:
    """A create -> one AlertIn (fingerprint = alias). Priority missing -> `default_severity`, Opsgenie's P3."""
    labels = dict(body.details)
    if body.tags:
        labels["tags"] = ",".join(body.tags)
    if body.entity:
        labels["entity"] = body.entity
    if body.source:
        labels["opsgenie_source"] = body.source
    return [AlertIn(
        fingerprint=key(body.alias or derived_key(body.message)),
        title=body.message,
        # Opsgenie's `source` is where the call came from (Alertmanager puts its URL there),
        # not the monitoring system: keep it as a label
        source="opsgenie",
        severity=normalize_severity(body.priority, severity_words, default_severity, ("body", "priority")),
        fired_at=as_utc(received_at),  # Opsgenie requests carry no time
        labels=labels,
        annotations={"description": body.description} if body.description else {},
        dedup="open",  # a trigger for a key that is still open updates that alert
    )]


def status_change(
    identifier: str,
    action: Literal["close", "acknowledge"],
    *,
    received_at: datetime,
    identifier_type: str | None = None,
) -> list[StatusChange]:
    """Close/acknowledge of the alert whose alias is `identifier` (the path segment).

    Only aliases name our alerts (we hand out no Opsgenie ids), so a missing identifierType is
    read as alias and any other type is a 422.
    """
    if identifier_type not in (None, "alias"):
        raise InputError(("query", "identifierType"), "only 'alias' is supported", identifier_type)
    if not identifier.strip():
        raise InputError(("path", "identifier"), "empty alias", identifier)
    status = "resolved" if action == "close" else "acknowledged"
    return [StatusChange(fingerprint=key(identifier), status=status, at=as_utc(received_at))]
