from __future__ import annotations

from fastapi import APIRouter, Request

from models.db import current_revision
from service.deps import PipelineDep, SessionDep
from service.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health")
def health(request: Request, session: SessionDep, pipeline: PipelineDep) -> Health:
    engine = request.state.engine
    return Health(status="ok", database=engine.dialect.name, schema_revision=current_revision(engine),
                  rules_version=pipeline.rules.version,
                  weights_version=pipeline.weights.version if pipeline.weights else None,
                  event_time=pipeline.clock.now)
