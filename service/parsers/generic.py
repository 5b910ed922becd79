"""alertlink's own alert format, `POST /alerts`.

The body is one alert object, or a non-empty JSON array of them (an empty array is rejected).
Unknown fields are rejected too, so a misspelt field name is reported rather than ignored.

| field | type | required | meaning |
| --- | --- | --- | --- |
| `title` | string | yes | what is wrong; must not be blank |
| `severity` | string | no | a severity word, matched case-insensitively against the severity map (`critical`, `error`, `warning`, `info`, `p1`..`p5`, `sev1`..`sev5`, ... plus `ALERTLINK_SEVERITY_MAP`); missing -> `ALERTLINK_DEFAULT_SEVERITY` (default `medium`); an unknown word is a 422 |
| `source` | string | no | the system that raised it; default `"api"` |
| `fingerprint` | string | no | identifies the alert across updates (send the same value to update or resolve it); default: computed from `labels` exactly as Alertmanager computes its `fingerprint`, or from `{"alertname": title}` when there are no labels |
| `fired_at` | string | no | RFC 3339 time with `Z` or an offset, 0-9 fractional digits (`2026-12-03T15:33:43.967Z`); default: when alertlink received it (or `resolved_at` if that is earlier) |
| `resolved_at` | string | no | RFC 3339 time the alert ended; giving it makes the alert resolved; must not be before `fired_at` |
| `status` | `"firing"` or `"resolved"` | no | default `resolved` when `resolved_at` is given, else `firing`; `resolved` without `resolved_at` means resolved when received; `firing` together with `resolved_at` is a 422 |
| `labels` | object of string -> string | no | dimensions used for grouping and correlation (`service`, `environment`, ...) |
| `annotations` | object of string -> string | no | free text for people (`summary`, `description`, `runbook_url`, ...) |
| `external_id` | string | no | the sender's own id for this alert, kept as is |

Example:

    {"title": "Disk space low on db-primary-0", "severity": "warning",
     "labels": {"service": "postgres", "instance": "db-primary-0:9100"},
     "annotations": {"runbook_url": "https://runbooks.example.com/postgres/disk"}}

Errors are 422s whose `loc` names the field, e.g. `["body", 1, "labels", "team"]` for a
non-string label value in the second alert of an array.
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictStr, StringConstraints, TypeAdapter, field_validator

from service.domain import AlertIn, InputError
from service.parsers.common import Loc, NonEmptyStr, alertmanager_fingerprint, as_utc, normalize_severity, parse_time


class GenericAlert(BaseModel):
    """One alert in alertlink's own format (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    title: Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1)]
    severity: StrictStr | None = None
    source: NonEmptyStr = "api"
    fingerprint: NonEmptyStr | None = Field(default=None, max_length=512)
    fired_at: StrictStr | None = None
    resolved_at: StrictStr | None = None
    status: Literal["firing", "resolved"] | None = None
    labels: dict[str, StrictStr] = Field(default_factory=dict)
    annotations: dict[str, StrictStr] = Field(default_factory=dict)
    external_id: NonEmptyStr | None = Field(default=None, max_length=255)


_Many = Annotated[list[GenericAlert], Field(min_length=1)]
_ONE, _MANY = TypeAdapter(GenericAlert), TypeAdapter(_Many)


class GenericBody(RootModel[GenericAlert | _Many]):
    """The `POST /alerts` body: one alert or a non-empty list."""

    # Dispatch by JSON type instead of a plain union, so error locs read ("body", 1, "title")
    # rather than ("body", "list[GenericAlert]", 1, "title").
    @field_validator("root", mode="wrap")
    @classmethod
    def _one_or_many(cls, value: Any, _handler: Any) -> GenericAlert | list[GenericAlert]:
        return (_MANY if isinstance(value, list) else _ONE).validate_python(value)


def to_alerts(
    body: GenericBody | GenericAlert | list[GenericAlert], *, received_at: datetime, severity_words: Mapping[str, str], default_severity: str
) -> list[AlertIn]:
    """The alerts of a `POST /alerts` body; InputError locs start with ("body", [index]) as FastAPI's do."""
    root = body.root if isinstance(body, GenericBody) else body
    if isinstance(root, list):
        return [_alert(a, ("body", i), received_at, severity_words, default_severity) for i, a in enumerate(root)]
    return [_alert(root, ("body",), received_at, severity_words, default_severity)]


def _alert(a: GenericAlert, loc: Loc, received_at: datetime, words: Mapping[str, str], default: str) -> AlertIn:
    received_at = as_utc(received_at)
    fired = parse_time(a.fired_at, (*loc, "fired_at"))
    resolved = parse_time(a.resolved_at, (*loc, "resolved_at"))
    status = a.status or ("resolved" if resolved else "firing")
    if status == "firing" and resolved:
        raise InputError((*loc, "status"), "status 'firing' contradicts resolved_at", a.status)
    if fired is None:  # a late resolve-only report must not fire after it resolved
        fired = min(received_at, resolved or received_at)
    if status == "resolved" and resolved is None:
        resolved = max(fired, received_at)
    if resolved is not None and resolved < fired:
        raise InputError((*loc, "resolved_at"), "resolved_at is before fired_at", a.resolved_at)
    return AlertIn(
        fingerprint=a.fingerprint or alertmanager_fingerprint(a.labels or {"alertname": a.title}),
        title=a.title,
        source=a.source,
        severity=normalize_severity(a.severity, words, default, (*loc, "severity")),
        fired_at=fired,
        status=status,
        resolved_at=resolved,
        labels=dict(a.labels),
        annotations=dict(a.annotations),
        external_id=a.external_id,
    )
