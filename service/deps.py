"""Typed dependencies: one owner per transaction.

`SessionDep` opens a transaction that commits when the route returns and rolls
back if it raises. `scope="function"` runs that exit before the response is
sent, so a failed commit answers 500 and no client is told "stored" for data
that was not. `DecisionSessionDep` is the same for routes that decide (intake,
links): it also holds the pipeline's decision lock for the whole transaction.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.pipeline import Pipeline
from service.rules import Rules
from service.settings import Settings


def get_session(request: Request) -> Iterator[Session]:
    with request.state.session_factory.begin() as session:
        yield session


def get_decision_session(request: Request) -> Iterator[Session]:
    pipeline: Pipeline = request.state.pipeline
    with pipeline.decision_lock, request.state.session_factory.begin() as session:
        yield session


def get_pipeline(request: Request) -> Pipeline:
    return request.state.pipeline


def get_settings(request: Request) -> Settings:
    return request.state.settings


def get_rules(request: Request) -> Rules:
    return request.state.pipeline.rules


def wall_now(request: Request) -> datetime:
    """When the request arrived, by the app's wall clock (replaceable in tests)."""
    clock: Callable[[], datetime] = request.state.wall_clock
    return clock()


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
DecisionSessionDep = Annotated[Session, Depends(get_decision_session, scope="function")]
PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RulesDep = Annotated[Rules, Depends(get_rules)]
NowDep = Annotated[datetime, Depends(wall_now)]
