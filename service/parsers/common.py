"""Pieces every intake parser shares: times, severity words, fingerprints, StatusChange.

Everything here is pure: no I/O and no clock reads (callers pass `received_at`).
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal

from pydantic import StringConstraints

from service.domain import SEVERITY_ORDER, InputError, Severity

Loc = tuple[str | int, ...]
# a JSON string (no coercion from numbers) that is not empty
NonEmptyStr = Annotated[str, StringConstraints(strict=True, min_length=1)]

_FNV64_OFFSET = 0xCBF29CE484222325
_FNV64_PRIME = 0x100000001B3
_MASK64 = 0xFFFFFFFFFFFFFFFF

# RFC 3339 (plus ISO 8601's `+hhmm` / `+hh` offsets, which PagerDuty's own examples use).
# Parsed by hand rather than by `datetime.fromisoformat`, which also takes naive and date-only
# strings and varies across Python versions; fractions beyond microseconds are cut off.
_TIME_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)"
)
_GO_ZERO = datetime(1, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class StatusChange:
    """A resolve/acknowledge that names only the alert (PagerDuty resolve/acknowledge, Opsgenie close/acknowledge)."""

    fingerprint: str
    status: Literal["resolved", "acknowledged"]
    at: datetime


def alertmanager_fingerprint(labels: Mapping[str, str]) -> str:
    """Prometheus' `model.LabelSet.Fingerprint()` as 16 lower-case hex digits.

    FNV-1a 64 over the UTF-8 label names in sorted order, each name and value followed by 0xff;
    the empty set hashes to the FNV offset basis.
    """
    h = _FNV64_OFFSET
    for name in sorted(labels):  # code-point order == Go's byte order for UTF-8
        for part in (name, labels[name]):
            for byte in part.encode():
                h = ((h ^ byte) * _FNV64_PRIME) & _MASK64
            h = ((h ^ 0xFF) * _FNV64_PRIME) & _MASK64
    return f"{h:016x}"


def derived_key(*parts: str) -> str:
    """A deterministic dedup key for senders that gave none: sha256 hex of the NUL-joined parts."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def labelset_text(labels: Mapping[str, str]) -> str:
    """Prometheus' text form of a label set, `{a="1", b="2"}` (a last-resort title)."""
    return "{" + ", ".join(f'{k}="{labels[k]}"' for k in sorted(labels)) + "}"


def as_utc(value: datetime) -> datetime:
    """`value` as aware UTC; a naive value is a programming error (we never guess a zone)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime: pass an aware one")
    return value.astimezone(timezone.utc)


def parse_time(value: str | None, loc: Loc) -> datetime | None:
    """RFC 3339 text -> aware UTC datetime; None or Go's zero time -> None.

    Requires `Z` or an offset; takes 0-9 fractional digits (nanoseconds truncated to microseconds).
    Raises `InputError(loc, ...)` on anything else.
    """
    if value is None:
        return None
    m = _TIME_RE.fullmatch(value.strip())
    bad = InputError(loc, f"not an RFC 3339 time with 'Z' or an offset: {value!r}", value)
    if not m:
        raise bad
    year, month, day, hour, minute, second, frac, z, sign, oh, om = m.groups()
    offset = timedelta(0) if z else (1 if sign == "+" else -1) * timedelta(hours=int(oh), minutes=int(om or 0))
    try:
        parsed = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second),
            int((frac or "0").ljust(6, "0")[:6]), tzinfo=timezone(offset),
        )
        if parsed == _GO_ZERO:
            return None
        return parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError):  # 2026-02-30, 25:00, offsets >= 24h, year 1 shifted below 1
        raise bad from None


def _level(word: str, words: Mapping[str, str]) -> Severity | None:
    level = words.get(word.strip().lower())
    if level is not None and level not in SEVERITY_ORDER:
        # a bad ALERTLINK_SEVERITY_MAP entry is a configuration bug, not the sender's fault
        raise ValueError(f"severity map sends {word!r} to {level!r}, which is not one of {SEVERITY_ORDER}")
    return level  # type: ignore[return-value]


def normalize_severity(raw: str | None, words: Mapping[str, str], default: str, loc: Loc) -> Severity:
    """Map a sender's severity word onto alertlink's levels (lower-cased lookup in `words`).

    Missing or empty -> `default` (itself a level or a word in `words`); unknown word -> InputError(loc).
    """
    if raw is None or not raw.strip():  # Prometheus treats an empty label value as no label
        level = _level(default, words) or (default if default in SEVERITY_ORDER else None)
        if level is None:
            raise ValueError(f"default severity {default!r} is neither a level nor a known word")
        return level  # type: ignore[return-value]
    level = _level(raw, words)
    if level is None:
        raise InputError(loc, f"unknown severity {raw!r}; known: {', '.join(sorted(words))}", raw)
    return level
