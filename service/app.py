"""The app factory. Everything is built in the lifespan from the settings it is
given; nothing at import time."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from indexer.embedder import Embedder, SentenceTransformerEmbedder
from indexer.sync import load_or_rebuild
from models.db import make_engine, make_session_factory, migrate
from service import repository as repo
from service.domain import InputError
from service.pipeline import EventClock, Pipeline, learn_history
from service.routes import alerts, health, incidents, integrations, shadow, similar
from service.rules import load_rules
from service.settings import Settings
from service.weights import Weights

log = logging.getLogger("alertlink")


def utc_now() -> datetime:
    return datetime.now(UTC)


async def _ticker(app_state: dict[str, Any], every: float) -> None:
    """Live operation: advance event time by the wall clock, so a pending group
    whose window has ended is flushed even when no further alert arrives."""
    pipeline: Pipeline = app_state["pipeline"]
    factory = app_state["session_factory"]
    clock: Callable[[], datetime] = app_state["wall_clock"]

    def tick() -> None:
        with pipeline.decision_lock, factory.begin() as session:
            pipeline.tick(session, clock())

    while True:
        await asyncio.sleep(every)
        try:
            await anyio.to_thread.run_sync(tick)
        except Exception:  # a failed tick is retried at the next one; the service stays up
            log.exception("clock tick failed")


def create_app(settings: Settings, *, embedder: Embedder | None = None,
               wall_clock: Callable[[], datetime] = utc_now) -> FastAPI:
    """The app. Tests pass their own settings, and a `HashingEmbedder` where the real
    model adds nothing; `serve` passes neither and gets the packaged model."""
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        engine = make_engine(settings.database_url)
        if settings.migrate_on_start:
            migrate(engine)
        factory = make_session_factory(engine)
        rules = load_rules(settings.rules_dir, settings.severity_words())
        weights = Weights.load(settings.weights_path) if settings.scorer else None
        shadow_weights = None
        if settings.shadow_weights_path is not None:
            if weights is None:
                log.warning("shadow weights %s not loaded: the scorer is off", settings.shadow_weights_path)
            else:
                shadow_weights = Weights.load(settings.shadow_weights_path)
        with factory() as session:  # event time resumes where the stored alerts left it
            clock = EventClock(repo.newest_alert_time(session))
            stats, similar = learn_history(session, weights) if weights else (None, None)
        emb, index = None, None
        if weights is not None:
            emb = embedder or await anyio.to_thread.run_sync(
                lambda: SentenceTransformerEmbedder.offline(str(settings.model_path) if settings.model_path else None))
            index = await anyio.to_thread.run_sync(lambda: load_or_rebuild(settings.index_path, factory, emb))
            similar.embed = emb.embed
            similar.search = lambda v, k, allowed: index.search(v, k, allowed=allowed)
        pipeline = Pipeline(rules, clock, weights=weights, stats=stats, similar=similar, embedder=emb,
                            index=index, session_factory=factory, shadow=shadow_weights)
        state: dict[str, Any] = {
            "settings": settings, "engine": engine, "session_factory": factory,
            "pipeline": pipeline, "wall_clock": wall_clock,
        }
        ticker = asyncio.create_task(_ticker(state, settings.tick_seconds)) if settings.clock == "live" else None
        try:
            yield state
        finally:
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
            if index is not None and settings.index_path is not None:
                index.save(settings.index_path)
            engine.dispose()

    app = FastAPI(title="alertlink", version="0.1.0", lifespan=lifespan,
                  description="Alerts in, incidents out, and the past incidents that look like this one.")

    @app.exception_handler(InputError)
    async def input_error(_request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": [exc.as_detail()]})

    for module in (health, alerts, incidents, integrations, similar, shadow):
        app.include_router(module.router)
    return app
