"""Shadow weights: where a second weights file would have decided otherwise than the live
one. Each new alert's comparison is recorded as it is decided (see `service/shadow.py`);
these routes read the records. Without shadow weights loaded
(`ALERTLINK_SHADOW_WEIGHTS_PATH`, with the scorer on) they answer 409.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query

from service import shadow
from service.deps import PipelineDep, SessionDep
from service.pipeline import Pipeline

router = APIRouter(prefix="/shadow", tags=["shadow"])


def shadow_pipeline(pipeline: PipelineDep) -> Pipeline:
    if pipeline.weights is None or pipeline.shadow is None:
        raise HTTPException(409, "no shadow weights are loaded (ALERTLINK_SHADOW_WEIGHTS_PATH, with the scorer on)")
    return pipeline


ShadowDep = Annotated[Pipeline, Depends(shadow_pipeline)]


@router.get("/disagreements")
def disagreements(session: SessionDep, _pipeline: ShadowDep,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                  offset: Annotated[int, Query(ge=0)] = 0) -> list[shadow.Disagreement]:
    """New alerts on which the shadow weights' scorer decided otherwise than the live one
    (another kind, incident or pair), newest first."""
    return shadow.disagreements(session, limit=limit, offset=offset)


@router.get("/summary")
def summary(session: SessionDep, pipeline: ShadowDep) -> shadow.ShadowSummary:
    """How many recorded decisions agree, the disagreements by (live kind, shadow kind), and
    the counts by the weights versions that recorded them."""
    assert pipeline.weights is not None and pipeline.shadow is not None
    return shadow.summary(session, pipeline.weights, pipeline.shadow)
