"""The `alertlink` command."""
from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:  # imported inside the commands: `alertlink --help` must not load torch or faiss
    from sqlalchemy import Engine

    from indexer.embedder import Embedder

app = typer.Typer(help="alertlink: alerts in, incidents out.", no_args_is_help=True,
                  pretty_exceptions_enable=False)


@app.command()
def serve(host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="port to listen on")] = 8080) -> None:
    """Run the service (configuration from ALERTLINK_* variables)."""
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    uvicorn.run(create_app(Settings()), host=host, port=port)


@app.command("migrate")
def migrate_cmd() -> None:
    """Create or upgrade the database schema (ALERTLINK_DATABASE_URL)."""
    from models.db import current_revision, make_engine, migrate
    from service.settings import Settings

    engine = make_engine(Settings().database_url)
    try:
        migrate(engine)
        typer.echo(f"database at revision {current_revision(engine)}")
    finally:
        engine.dispose()


@app.command()
def replay(data: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="a data set folder")],
           out: Annotated[Path, typer.Option("--out", help="where to write predictions.jsonl")],
           rules: Annotated[Path | None, typer.Option("--rules", exists=True, file_okay=False,
                                                      help="folder with incident-rules.yaml and "
                                                           "aggregation-rules.yaml")] = None,
           weights: Annotated[Path | None, typer.Option("--weights", exists=True, dir_okay=False,
                                                        help="a weights file (default: the shipped one)")] = None,
           rules_only: Annotated[bool, typer.Option("--rules-only", help="no scorer: the rules alone decide")]
           = False,
           semantic: Annotated[bool, typer.Option(
               "--semantic/--no-semantic",
               help="rank similar incidents by meaning too, as the service does (loads the model: ~15 s more); "
                    "links are the same either way")] = False) -> None:
    """Replay a labelled data set through the live pipeline in event time."""
    from service.replay import replay as run, write_predictions
    from service.rules import load_rules
    from service.settings import Settings
    from service.weights import Weights

    settings = Settings()
    started = time.perf_counter()
    scorer = None if rules_only else Weights.load(weights or settings.weights_path)
    embedder = None
    if scorer is not None and semantic:
        from indexer.embedder import SentenceTransformerEmbedder

        def embedder() -> SentenceTransformerEmbedder:
            return SentenceTransformerEmbedder.offline(str(settings.model_path) if settings.model_path else None)
    result = run(data, settings, load_rules(rules or settings.rules_dir, settings.severity_words()), scorer,
                 embedder)
    write_predictions(result.predictions, out)
    typer.echo(f"{result.stream_alerts} stream alerts over {result.history_incidents} past incidents: "
               f"{result.incidents_opened} incidents opened, {time.perf_counter() - started:.1f}s -> {out}",
               err=True)


index_app = typer.Typer(help="The similar-incident index: derived from the database, rebuildable "
                             "at any time.", no_args_is_help=True)
app.add_typer(index_app, name="index")

# TODO(settings): default from an `index_path` setting (ALERTLINK_INDEX_PATH) once it exists
IndexPath = Annotated[Path, typer.Option("--path", dir_okay=False,
                                         help="the index file (PATH.json and PATH.keys.json beside it)")]
DEFAULT_INDEX_PATH = Path("alertlink.faiss")
REBUILD_BATCH = 256  # incidents embedded per committed transaction


def _embedder() -> Embedder:
    """The real model; tests replace this function."""
    from indexer.embedder import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder.offline()


def _engine() -> Engine:
    """The configured database, refused unless migrated to the head (the embedding columns)."""
    from models.db import current_revision, head_revision, make_engine
    from service.settings import Settings

    engine = make_engine(Settings().database_url)
    if (at := current_revision(engine)) != head_revision():
        engine.dispose()
        typer.echo(f"database at revision {at}, expected {head_revision()}: run `alertlink migrate`",
                   err=True)
        raise typer.Exit(1)
    return engine


@index_app.command("rebuild")
def index_rebuild(path: IndexPath = DEFAULT_INDEX_PATH) -> None:
    """Embed every incident that needs it, then build the index from scratch."""
    import sys

    from sqlalchemy import func, select
    from tqdm import tqdm

    from indexer.sync import ensure_embeddings, load_or_rebuild, stale_ids
    from models.db import make_session_factory
    from models.tables import Incident

    engine = _engine()
    try:
        factory = make_session_factory(engine)
        embedder = _embedder()
        with factory() as session:
            incidents = session.scalar(select(func.count()).select_from(Incident)) or 0
            todo = stale_ids(session, embedder.model_name)
        with tqdm(total=len(todo), desc="embedding", unit="incident", file=sys.stderr) as bar:
            # a transaction per batch: one for a whole model change would hold SQLite's write
            # lock (PostgreSQL: the rows' locks) for minutes and time out a running service
            for start in range(0, len(todo), REBUILD_BATCH):
                with factory.begin() as session:
                    ensure_embeddings(session, embedder, todo[start:start + REBUILD_BATCH],
                                      progress=bar.update)
            # incidents created meanwhile are embedded here, then the index is built anew
            synced = load_or_rebuild(path, factory, embedder, progress=bar.update, fresh=True)
            embedded = bar.n
        typer.echo(f"{incidents} incidents, {embedded} embedded now, {len(synced)} in the index "
                   f"({embedder.model_name}) -> {path}")
    finally:
        engine.dispose()


@index_app.command("status")
def index_status(path: IndexPath = DEFAULT_INDEX_PATH) -> None:
    """Counts: incidents, embedded with the current model, in the index file; in sync or not."""
    from sqlalchemy import func, select

    from indexer.sync import SyncedIndex, database_keys, pending_changes, stale_ids
    from models.db import make_session_factory
    from models.tables import Incident

    engine = _engine()
    try:
        embedder = _embedder()
        synced = SyncedIndex.load(path, model_name=embedder.model_name, dim=embedder.dim)
        with make_session_factory(engine)() as session:
            incidents = session.scalar(select(func.count()).select_from(Incident)) or 0
            embedded = len(database_keys(session, embedder.model_name))
            stale = len(stale_ids(session, embedder.model_name))
            pending = pending_changes(session, synced) if synced is not None else None
        in_sync = stale == 0 and pending is not None and not pending.changed
        typer.echo(f"incidents: {incidents}")
        typer.echo(f"embedded with {embedder.model_name}: {embedded} ({stale} to embed)")
        typer.echo(f"index {path}: " + (f"{len(synced)} vectors" if synced is not None
                                        else "missing or unusable (see the warning)"))
        if in_sync:
            typer.echo("in sync: yes")
        else:
            index = ("no usable index" if pending is None
                     else f"index +{pending.added} ~{pending.updated} -{pending.removed}")
            typer.echo(f"in sync: no ({stale} to embed; {index})")
    finally:
        engine.dispose()


@app.command("eval")
def eval_cmd(data: Annotated[list[Path], typer.Argument(exists=True, file_okay=False, help="data set folders")],
             weights: Annotated[Path | None, typer.Option("--weights", exists=True, dir_okay=False)] = None,
             rules: Annotated[Path | None, typer.Option("--rules", exists=True, file_okay=False)] = None,
             json_output: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
             semantic: Annotated[bool, typer.Option("--semantic/--no-semantic",
                                                    help="rank similar incidents by meaning too")] = False) -> None:
    """Replay each data set and print grouping and similar-incident metrics beside built-in baselines."""
    from service.evaluate import main as run

    raise typer.Exit(run(data, weights, rules, json_output, semantic))


@app.command()
def tune(data: Annotated[list[Path], typer.Argument(exists=True, file_okay=False, help="labelled data sets")],
         out: Annotated[Path, typer.Option("--out", help="the weights file to write")],
         target_precision: Annotated[float, typer.Option("--target-precision", min=0.5, max=1.0)] = 0.97,
         seed: Annotated[int, typer.Option("--seed")] = 0,
         base: Annotated[Path | None, typer.Option("--base", exists=True, dir_okay=False,
                                                   help="weights file to start from (default: shipped)")] = None,
         history: Annotated[list[Path] | None, typer.Option(
             "--history", exists=True, file_okay=False,
             help="a data set used by its history only (second half replayed against the first): "
                  "real systems whose stream is kept for evaluation")] = None,
         rounds: Annotated[int, typer.Option("--rounds", min=0, max=10,
                                             help="refits on the pairs the online grouping meets")] = 2
         ) -> None:
    """Learn the scorer's weights and thresholds from labelled data (scikit-learn)."""
    from service.tune import main as run

    raise typer.Exit(run(list(data), out, target_precision=target_precision, seed=seed,
                         base=base, history=list(history or []), rounds=rounds))


@app.command()
def export(out: Annotated[Path, typer.Argument(file_okay=False, help="folder to write the data set to")],
           labels: Annotated[str, typer.Option("--labels", help="human: manual/historical links only; "
                                                                 "resolved: also the links of incidents resolved with a root cause")]
           = "resolved",
           split_at: Annotated[datetime | None, typer.Option("--split-at", help="alerts from then on form the "
                                                                                "stream, with truth.json")] = None
           ) -> None:
    """Write the database (ALERTLINK_DATABASE_URL) as a labelled data set."""
    from service.export import main as run

    if labels not in ("human", "resolved"):
        raise typer.BadParameter("human or resolved", param_hint="--labels")
    if split_at is not None and split_at.tzinfo is None:
        split_at = split_at.replace(tzinfo=UTC)
    raise typer.Exit(run(out, labels=labels, split_at=split_at))


def main() -> None:
    app()
