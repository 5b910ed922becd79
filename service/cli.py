"""The `alertlink` command."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

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
           = False) -> None:
    """Replay a labelled data set through the live pipeline in event time."""
    from service.replay import replay as run, write_predictions
    from service.rules import load_rules
    from service.settings import Settings
    from service.weights import Weights

    settings = Settings()
    started = time.perf_counter()
    scorer = None if rules_only else Weights.load(weights or settings.weights_path)
    result = run(data, settings, load_rules(rules or settings.rules_dir, settings.severity_words()), scorer)
    write_predictions(result.predictions, out)
    typer.echo(f"{result.stream_alerts} stream alerts over {result.history_incidents} past incidents: "
               f"{result.incidents_opened} incidents opened, {time.perf_counter() - started:.1f}s -> {out}",
               err=True)


def main() -> None:
    app()
