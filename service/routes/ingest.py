"""The step every intake route shares: normalised alerts -> pipeline -> result."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.orm import Session

from service.domain import AlertIn
from service.parsers.common import StatusChange
from service.pipeline import Pipeline
from service.schemas import IngestResult, Outcome


def ingest(session: Session, pipeline: Pipeline, items: Sequence[AlertIn | StatusChange],
           received_at: datetime, truncated_alerts: int = 0) -> IngestResult:
    outcomes = pipeline.ingest(session, items, received_at)
    return IngestResult(
        accepted=len(outcomes),
        alert_ids=[o.alert_id for o in outcomes if o.alert_id is not None],
        results=[Outcome(index=o.index, alert_id=o.alert_id, action=o.action, decision=o.decision)
                 for o in outcomes],
        truncated_alerts=truncated_alerts,
    )
