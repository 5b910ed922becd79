"""PagerDuty Events API v2 (`POST /v2/enqueue`): trigger, acknowledge, resolve."""
from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from service.domain import AlertIn, InputError
from service.parsers.common import NonEmptyStr, StatusChange, as_utc, derived_key, normalize_severity, parse_time

_LIBERAL = ConfigDict(extra="allow")


class PagerDutyPayload(BaseModel):
    model_config = _LIBERAL

    summary: NonEmptyStr
    source: StrictStr | None = None
    severity: StrictStr | None = None
    timestamp: StrictStr | None = None
    component: StrictStr | None = None
    group: StrictStr | None = None
    class_: StrictStr | None = Field(default=None, alias="class")
    custom_details: Any = None  # PagerDuty takes any JSON here


class PagerDutyEvent(BaseModel):
    model_config = _LIBERAL

    routing_key: StrictStr
    event_action: Literal["trigger", "acknowledge", "resolve"]
    dedup_key: StrictStr | None = Field(default=None, max_length=255)
    payload: PagerDutyPayload | None = None  # required for trigger only; checked in to_alerts
    client: StrictStr | None = None
    client_url: StrictStr | None = None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def key(dedup_key: str) -> str:
    """Our fingerprint for a PagerDuty dedup_key. Namespaced: Alertmanager sends the same
    sha256(groupKey) as PagerDuty dedup_key and as Opsgenie alias, and the two must not meet."""
    return f"pagerduty:{dedup_key}"


def to_alerts(
    body: PagerDutyEvent, *, received_at: datetime, severity_words: Mapping[str, str], default_severity: str
) -> list[AlertIn | StatusChange]:
    """A trigger -> one AlertIn (fingerprint = dedup_key); resolve/acknowledge -> one StatusChange."""
    received_at = as_utc(received_at)
    if body.event_action != "trigger":
        if not body.dedup_key:
            raise InputError(("body", "dedup_key"), f"required for event_action {body.event_action!r}")
        status = "resolved" if body.event_action == "resolve" else "acknowledged"
        return [StatusChange(fingerprint=key(body.dedup_key), status=status, at=received_at)]

    p = body.payload
    if p is None:
        raise InputError(("body", "payload"), "required for event_action 'trigger'")
    details = p.custom_details
    labels = {k: _text(v) for k, v in details.items()} if isinstance(details, dict) else (
        {} if details is None else {"custom_details": _text(details)})
    # PagerDuty's own structured fields win over same-named custom_details keys
    extra = {"component": p.component, "group": p.group, "class": p.class_, "pagerduty_source": p.source}
    labels.update({k: v for k, v in extra.items() if v is not None})
    annotations = {k: v for k, v in (("client", body.client), ("client_url", body.client_url)) if v}
    return [AlertIn(
        # PagerDuty would generate a random key; ours is deterministic so a retried trigger dedups
        fingerprint=key(body.dedup_key or derived_key(body.routing_key, p.summary, p.source or "")),
        title=p.summary,
        source="pagerduty",
        severity=normalize_severity(p.severity, severity_words, default_severity, ("body", "payload", "severity")),
        fired_at=parse_time(p.timestamp, ("body", "payload", "timestamp")) or received_at,
        labels=labels,
        annotations=annotations,
        dedup="open",  # a trigger for a key that is still open updates that alert
    )]
