"""Service configuration: paths, URLs and modes, from `ALERTLINK_*` variables.

Tuned numbers do not live here: rules are YAML files (`rules_dir`) and scoring
weights a versioned weights file. Nothing here is read at import time; the CLI
builds a `Settings()` and hands it to `create_app`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# How free-text severity words map onto alertlink's five levels. Keys are
# compared lower-cased. Extend it with ALERTLINK_SEVERITY_MAP='{"sev1": "critical"}'
# (entries given there are added to these, and win).
DEFAULT_SEVERITY_MAP: dict[str, str] = {
    "critical": "critical", "crit": "critical", "fatal": "critical", "emergency": "critical",
    "emerg": "critical", "alert": "critical", "page": "critical", "disaster": "critical",
    "p1": "critical", "sev1": "critical",
    "high": "high", "error": "high", "err": "high", "major": "high", "p2": "high", "sev2": "high",
    "medium": "medium", "warning": "medium", "warn": "medium", "minor": "medium",
    "moderate": "medium", "average": "medium", "p3": "medium", "sev3": "medium",
    "low": "low", "notice": "low", "p4": "low", "sev4": "low",
    "info": "info", "information": "info", "informational": "info", "none": "info",
    "ok": "info", "debug": "info", "p5": "info", "sev5": "info",
}


def default_database_url() -> str:
    return "sqlite:///./alertlink.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ALERTLINK_", extra="ignore")

    database_url: str = Field(default_factory=default_database_url)
    # folder holding incident-rules.yaml and aggregation-rules.yaml; None = the shipped defaults
    rules_dir: Path | None = None
    # the scorer's weights file; None = the shipped default (service/defaults/weights.yaml)
    weights_path: Path | None = None
    # a second weights file run in shadow: its decision is recorded beside the live one for
    # every new alert (GET /shadow/...), never acted on; None = no shadow (needs the scorer on)
    shadow_weights_path: Path | None = None
    # false: no scorer, the rules alone decide (the seed design's behaviour)
    scorer: bool = True
    # the FAISS index of incidents (derived data: rebuilt from the database when missing or stale);
    # None keeps it in memory only
    index_path: Path | None = Path("alertlink.faiss")
    # the sentence-transformers model folder; None = the packaged all-MiniLM-L6-v2
    model_path: Path | None = None
    severity_map: dict[str, str] = Field(default_factory=dict)
    # severity given to an alert that carries none at all (e.g. no `severity` label)
    default_severity: str = "medium"
    # how often the live clock advances by the wall clock to flush expired groups
    tick_seconds: float = 5.0
    # "live": a background task advances the event clock; "manual": only alerts do (tests, replay)
    clock: Literal["live", "manual"] = "live"
    # run the database migrations when the service starts
    migrate_on_start: bool = True

    def severity_words(self) -> dict[str, str]:
        merged = dict(DEFAULT_SEVERITY_MAP)
        merged.update({k.lower(): v for k, v in self.severity_map.items()})
        return merged
