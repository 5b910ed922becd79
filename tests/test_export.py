"""`service.export`: the database written as a labelled data set (bench/DATASET.md).

One small database, built through the ORM and the repository, holds every case: incidents
resolved with and without a root cause, an open one, links of every type, removed links, a
noise alert, an alert linked twice, and alerts after 05:00 for the split."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import load_score
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from models.db import make_engine, make_session_factory, migrate
from models.tables import Alert, AlertIncidentLink, Incident
from service import export as export_module
from service import repository as repo
from service.export import export, read_only_session
from service.replay import load_history, read_jsonl, replay
from service.rules import load_rules
from service.settings import Settings
from service.weights import Weights

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench"
SPLIT = datetime(2026, 1, 1, 5, 0, tzinfo=UTC)


def t(hhmm: str) -> datetime:
    return datetime.fromisoformat(f"2026-01-01T{hhmm}+00:00")


def z(hhmm: str) -> str:
    return f"2026-01-01T{hhmm}:00Z" if hhmm.count(":") == 1 else f"2026-01-01T{hhmm}Z"


def settings() -> Settings:
    return Settings(severity_map={}, default_severity="medium", rules_dir=None, weights_path=None)


def load(path: Path) -> list[dict[str, Any]]:
    return list(read_jsonl(path))


# ------------------------------------------------------------------ the database

class World:
    """Names -> rows of the database built by `build`; ids are the database's own."""

    def __init__(self) -> None:
        self.incidents: dict[str, Incident] = {}
        self.alerts: dict[str, Alert] = {}

    def i(self, name: str) -> str:
        return str(self.incidents[name].id)

    def a(self, name: str) -> str:
        return str(self.alerts[name].id)


def _alert(session: Session, w: World, name: str, at: datetime, *, env: str = "prod",
           resolved: datetime | None = None, severity: str = "high", last: datetime | None = None) -> Alert:
    labels = {"alertname": f"Alert{name}", "severity": severity, "environment": env, "service": "checkout"}
    row = Alert(fingerprint=f"fp-{name}", title=f"alert {name} fired", source="prometheus", severity=severity,
                fired_at=at, resolved_at=resolved, status="resolved" if resolved else "firing", labels=labels,
                annotations={"summary": f"alert {name} fired", "runbook_url": f"https://rb/{name}"},
                delivery_count=1, received_at=at, last_received_at=last or at)
    session.add(row)
    session.flush()
    w.alerts[name] = row
    return row


def _link(session: Session, w: World, alert: str, incident: str, link_type: str, *,
          removed: datetime | None = None, by: str = "alertlink") -> None:
    a, i = w.alerts[alert], w.incidents[incident]
    link = repo.add_link(session, alert=a, incident=i, link_type=link_type, linked_at=a.fired_at, linked_by=by)
    if removed is not None:
        link.removed_at, link.removed_by = removed, "alice"
    session.flush()


def build(session: Session) -> World:
    w = World()

    def incident(name: str, created: str, *, resolved: str | None, root_cause: str | None,
                 summary: str | None = None, severity: str = "high") -> None:
        w.incidents[name] = repo.create_incident(
            session, title=f"incident {name}", severity=severity, created_at=t(created), summary=summary,
            root_cause=root_cause, status="resolved" if resolved else "open",
            resolved_at=t(resolved) if resolved else None)

    incident("I1", "01:00", resolved="02:00", root_cause="disk full", summary="cleaned /var", severity="critical")
    incident("I2", "03:00", resolved="03:30", root_cause=None)       # resolved without a root cause
    incident("I3", "04:00", resolved=None, root_cause=None)          # still open
    incident("I4", "00:30", resolved="00:45", root_cause="bad deploy")  # came from an imported history
    incident("I5", "04:50", resolved="06:00", root_cause="dns outage")  # spans the 05:00 split

    # A1 fires at a fraction of a second: exported times are cut to seconds
    _alert(session, w, "A1", t("01:00:00.500000"), resolved=t("01:30"))
    _alert(session, w, "A2", t("01:05"), resolved=t("01:40"))
    _alert(session, w, "A3", t("01:10"), env="staging", last=t("01:12"))  # still firing, delivered again
    _alert(session, w, "A4", t("01:15"), resolved=t("01:20"))
    _alert(session, w, "A5", t("03:00"), severity="medium")
    _alert(session, w, "A6", t("03:05"))
    _alert(session, w, "A7", t("04:00"))
    _alert(session, w, "A8", t("04:05"))
    _alert(session, w, "A9", t("00:30"), resolved=t("00:40"))
    _alert(session, w, "A10", t("02:30"), severity="info")           # noise: never linked
    _alert(session, w, "A11", t("01:20"))                            # linked twice
    _alert(session, w, "A12", t("04:55"))                            # before the split, I5's first
    _alert(session, w, "A13", t("05:10"))
    _alert(session, w, "A14", t("05:20"), severity="info")           # noise in the stream
    _alert(session, w, "A15", t("05:30"), env="staging")             # a responder put it into open I3
    _alert(session, w, "A16", t("05:40"))                            # I5's, removed by a responder

    _link(session, w, "A1", "I1", "auto_created")
    _link(session, w, "A2", "I1", "auto_correlated")
    _link(session, w, "A3", "I1", "manual", by="bob")
    _link(session, w, "A4", "I1", "auto_correlated", removed=t("01:50"))
    _link(session, w, "A5", "I2", "auto_created")
    _link(session, w, "A6", "I2", "manual", by="bob")
    _link(session, w, "A7", "I3", "auto_created")
    _link(session, w, "A8", "I3", "manual", by="bob")
    _link(session, w, "A9", "I4", "historical", by="history")
    _link(session, w, "A11", "I1", "auto_correlated")
    _link(session, w, "A11", "I4", "manual", by="bob")  # later, but a human's: it wins
    _link(session, w, "A12", "I5", "auto_created")
    _link(session, w, "A13", "I5", "auto_correlated")
    _link(session, w, "A15", "I3", "manual", by="bob")
    _link(session, w, "A16", "I5", "auto_correlated", removed=t("05:45"))
    return w


@pytest.fixture
def world(migrated_engine: Engine) -> tuple[Engine, World]:
    with make_session_factory(migrated_engine).begin() as session:
        w = build(session)
    return migrated_engine, w


@pytest.fixture
def sqlite_world(tmp_path: Path) -> tuple[Engine, World]:
    engine = make_engine(f"sqlite:///{tmp_path / 'world.db'}")
    migrate(engine)
    with make_session_factory(engine).begin() as session:
        w = build(session)
    yield engine, w
    engine.dispose()


def run_export(engine: Engine, out: Path, **kwargs: Any) -> export_module.ExportReport:
    with engine.connect() as conn, read_only_session(conn) as session:
        return export(session, out, **kwargs)


def past_end(a: Alert) -> datetime:
    """A history row's end: resolved_at, or for an alert still firing its last delivery."""
    return a.resolved_at or a.last_received_at


def alert_row(w: World, name: str, incident: str | None = None, *, stream: bool = False) -> dict[str, Any]:
    a = w.alerts[name]
    end = a.resolved_at if stream else past_end(a)
    row = {"id": str(a.id), "fingerprint": a.fingerprint, "title": a.title, "source": "prometheus",
           "severity": a.severity, "fired_at": a.fired_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
           "resolved_at": end.strftime("%Y-%m-%dT%H:%M:%SZ") if end else None,
           "labels": dict(a.labels), "annotations": dict(a.annotations)}
    if incident is not None:
        row["incident_id"] = w.i(incident)
    return row


def incident_row(w: World, name: str) -> dict[str, Any]:
    i = w.incidents[name]
    return {"id": str(i.id), "title": i.title, "severity": i.severity,
            "created_at": i.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "resolved_at": i.resolved_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "root_cause": i.root_cause or "", "summary": i.summary or ""}


# in (fired_at, id) order; label in "resolved" mode, label in "human" mode
ALERTS = [("A9", "I4", "I4"), ("A1", "I1", None), ("A2", "I1", None), ("A3", "I1", "I1"), ("A4", None, None),
          ("A11", "I4", "I4"), ("A10", None, None), ("A5", None, None), ("A6", "I2", "I2"),
          ("A7", None, None), ("A8", None, None), ("A12", "I5", None), ("A13", "I5", None),
          ("A14", None, None), ("A15", None, None), ("A16", None, None)]
PAST = ["I4", "I1", "I2", "I5"]  # resolved, by created_at


# ------------------------------------------------------------------ whole files

def test_resolved_labels_whole_files(world: tuple[Engine, World], tmp_path: Path) -> None:
    engine, w = world
    out = tmp_path / "export"
    report = run_export(engine, out)

    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "README.md", "history/alerts.jsonl", "history/incidents.jsonl", "labels/removed_links.jsonl"]
    assert load(out / "history" / "incidents.jsonl") == [incident_row(w, n) for n in PAST]
    assert load(out / "history" / "alerts.jsonl") == [alert_row(w, n, label) for n, label, _ in ALERTS]
    assert load(out / "labels" / "removed_links.jsonl") == [
        {"alert_id": w.a("A4"), "incident_id": w.i("I1"), "removed_by": "alice", "removed_at": z("01:50"),
         "link_type": "auto_correlated"},
        {"alert_id": w.a("A16"), "incident_id": w.i("I5"), "removed_by": "alice", "removed_at": z("05:45"),
         "link_type": "auto_correlated"}]
    # the fraction of a second is cut; I2 has no root cause and I4 no summary: "" in the file
    first = load(out / "history" / "alerts.jsonl")[1]
    assert first["id"] == w.a("A1") and first["fired_at"] == "2026-01-01T01:00:00Z"
    # A3 still fires: its last delivery ends it in the history
    assert load(out / "history" / "alerts.jsonl")[3]["resolved_at"] == z("01:12")
    assert incident_row(w, "I2")["root_cause"] == "" and incident_row(w, "I4")["summary"] == ""

    assert report.as_dict() == {
        "labels": "resolved", "split_at": None, "history_incidents": 4, "history_alerts": 16,
        "history_labelled_alerts": 8, "stream_alerts": 0, "stream_labelled_alerts": 0, "scenarios": 0,
        "moved_to_stream": 0, "removed_links": 2, "history_still_firing": 12,
        # A5 (I2 has no root cause), A7 (automatic, I3 open), A8 and A15 (manual, but I3 is open)
        "linked_but_unlabelled": 4, "resolved_without_root_cause": 1,
        "files": ["README.md", "history/alerts.jsonl", "history/incidents.jsonl", "labels/removed_links.jsonl"]}
    readme = (out / "README.md").read_text()
    assert "## Labels: resolved" in readme and "history/incidents.jsonl` (4)" in readme
    assert "(16, 8 with `incident_id`)" in readme and "labels/removed_links.jsonl` (2)" in readme
    assert "No split time was given" in readme


def test_human_labels_leave_every_automatic_link_out(world: tuple[Engine, World], tmp_path: Path) -> None:
    engine, w = world
    report = run_export(engine, tmp_path / "export", labels="human")
    out = tmp_path / "export"
    assert load(out / "history" / "alerts.jsonl") == [alert_row(w, n, label) for n, _, label in ALERTS]
    assert load(out / "history" / "incidents.jsonl") == [incident_row(w, n) for n in PAST]  # the same incidents
    assert report.history_labelled_alerts == 4 and report.labels == "human"  # A9, A3, A11, A6
    assert "## Labels: human" in (out / "README.md").read_text()


def test_removed_links_are_negatives_only(world: tuple[Engine, World], tmp_path: Path) -> None:
    engine, w = world
    for mode in ("human", "resolved"):
        out = tmp_path / mode
        run_export(engine, out, labels=mode, split_at=SPLIT)
        removed = {(r["alert_id"], r["incident_id"]) for r in load(out / "labels" / "removed_links.jsonl")}
        assert removed == {(w.a("A4"), w.i("I1")), (w.a("A16"), w.i("I5"))}
        labelled = {(r["id"], r.get("incident_id")) for r in load(out / "history" / "alerts.jsonl")}
        labelled |= set(json.loads((out / "truth.json").read_text())["alerts"].items())
        assert not removed & labelled
        assert {a for a, _ in removed} <= {a for a, i in labelled if i is None}


def test_export_is_deterministic_and_reads_in_batches(world: tuple[Engine, World], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    engine, _ = world
    run_export(engine, tmp_path / "one", split_at=SPLIT)
    monkeypatch.setattr(export_module, "BATCH", 2)  # many round trips over the same rows
    run_export(engine, tmp_path / "two", split_at=SPLIT)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert len(files) == 6
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f
    for line in (tmp_path / "one" / "history" / "alerts.jsonl").read_text().splitlines():
        assert line == json.dumps(json.loads(line), sort_keys=True, ensure_ascii=False)


def test_refuses_a_folder_that_is_not_empty(sqlite_world: tuple[Engine, World], tmp_path: Path) -> None:
    engine, _ = sqlite_world
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "truth.json").write_text("{}")
    with pytest.raises(FileExistsError):
        run_export(engine, tmp_path / "old")
    with pytest.raises(ValueError):
        run_export(engine, tmp_path / "new", labels="everything")  # type: ignore[arg-type]
    run_export(engine, tmp_path / "empty")  # a new folder is fine, an empty one too
    (tmp_path / "empty2").mkdir()
    run_export(engine, tmp_path / "empty2")


def test_the_export_transaction_is_read_only(migrated_engine: Engine) -> None:
    with migrated_engine.connect() as conn:
        with read_only_session(conn) as session:
            with pytest.raises(DBAPIError):
                session.execute(text("DELETE FROM alerts"))
        conn.execute(text("DELETE FROM alerts"))  # the same connection is writable again afterwards
        conn.commit()


# ------------------------------------------------------------------ split

def test_split_writes_stream_truth_and_whole_scenarios(world: tuple[Engine, World], tmp_path: Path) -> None:
    engine, w = world
    out = tmp_path / "export"
    report = run_export(engine, out, split_at=SPLIT)

    # I5 (A12 before the split, A13 after) and open I3 (A15 after the split, put there by a human) are
    # the scenarios: out of the history, with their earlier labelled alerts (A12, A8) moved to the stream
    assert load(out / "history" / "incidents.jsonl") == [incident_row(w, n) for n in ("I4", "I1", "I2")]
    history = ["A9", "A1", "A2", "A3", "A4", "A11", "A10", "A5", "A6", "A7"]
    labels = dict((n, label) for n, label, _ in ALERTS)
    assert load(out / "history" / "alerts.jsonl") == [alert_row(w, n, labels[n]) for n in history]
    stream = ["A8", "A12", "A13", "A14", "A15", "A16"]
    assert load(out / "stream" / "alerts.jsonl") == [alert_row(w, n, stream=True) for n in stream]
    assert json.loads((out / "truth.json").read_text()) == {
        "alerts": {w.a("A8"): w.i("I3"), w.a("A12"): w.i("I5"), w.a("A13"): w.i("I5"), w.a("A14"): None,
                   w.a("A15"): w.i("I3"), w.a("A16"): None},
        "scenarios": {
            # I3's alerts are in prod and staging: no common env; created 04:00, before its first alert
            w.i("I3"): {"title": "incident I3", "root_cause": "", "start": z("04:00")},
            w.i("I5"): {"title": "incident I5", "root_cause": "dns outage", "start": z("04:50"), "env": "prod"}}}
    assert (report.stream_alerts, report.stream_labelled_alerts, report.scenarios, report.moved_to_stream) == (
        6, 4, 2, 2)
    assert (report.history_incidents, report.history_alerts, report.history_labelled_alerts) == (3, 10, 6)
    readme = (out / "README.md").read_text()
    assert "no `similar` grades" in readme and "2026-01-01T05:00:00Z" in readme


def test_split_with_human_labels(sqlite_world: tuple[Engine, World], tmp_path: Path) -> None:
    engine, w = sqlite_world
    out = tmp_path / "export"
    run_export(engine, out, labels="human", split_at=SPLIT)
    # only I3 is a scenario (A15's manual link); I5's automatic links are no labels: I5 stays past
    assert [r["id"] for r in load(out / "history" / "incidents.jsonl")] == [w.i(n) for n in ("I4", "I1", "I2", "I5")]
    truth = json.loads((out / "truth.json").read_text())
    assert truth["alerts"] == {w.a("A8"): w.i("I3"), w.a("A13"): None, w.a("A14"): None,
                               w.a("A15"): w.i("I3"), w.a("A16"): None}
    assert list(truth["scenarios"]) == [w.i("I3")]
    # A12 fired before the split and is no label of a scenario: it stays in the history, unlabelled
    assert alert_row(w, "A12") in load(out / "history" / "alerts.jsonl")


def test_naive_split_time_means_utc(sqlite_world: tuple[Engine, World], tmp_path: Path) -> None:
    engine, _ = sqlite_world
    run_export(engine, tmp_path / "aware", split_at=SPLIT)
    run_export(engine, tmp_path / "naive", split_at=SPLIT.replace(tzinfo=None))
    assert (tmp_path / "aware" / "truth.json").read_bytes() == (tmp_path / "naive" / "truth.json").read_bytes()


# ------------------------------------------------------------------ round trip, replay, score

def test_round_trip_through_load_history(world: tuple[Engine, World], tmp_path: Path) -> None:
    engine, w = world
    for mode in ("resolved", "human"):
        out = tmp_path / mode
        run_export(engine, out, labels=mode)
        fresh = make_engine("sqlite://")
        try:
            migrate(fresh)
            with make_session_factory(fresh).begin() as session:
                loaded = load_history(session, out, settings())
            with make_session_factory(fresh)() as session:
                incidents = {i.external_id: (i.title, i.severity, i.status, i.created_at, i.resolved_at,
                                             i.root_cause or None, i.summary or None)
                             for i in session.scalars(select(Incident))}
                alerts = {a.external_id: (a.fingerprint, a.title, a.source, a.severity, a.fired_at, a.resolved_at,
                                          a.labels, a.annotations) for a in session.scalars(select(Alert))}
                external = {v: k for k, v in loaded.items()}
                links = {(str(a_ext), external[i], lt) for a_ext, i, lt in session.execute(
                    select(Alert.external_id, AlertIncidentLink.incident_id, AlertIncidentLink.link_type)
                    .join(Alert, Alert.id == AlertIncidentLink.alert_id))}
        finally:
            fresh.dispose()

        assert incidents == {
            w.i(n): (i.title, i.severity, "resolved", i.created_at, i.resolved_at, i.root_cause, i.summary)
            for n, i in w.incidents.items() if n in PAST}
        # every alert, with the same content (A1's fraction of a second is cut)
        assert alerts == {
            w.a(n): (a.fingerprint, a.title, a.source, a.severity, a.fired_at.replace(microsecond=0), past_end(a),
                     a.labels, a.annotations) for n, a in w.alerts.items()}
        column = 1 if mode == "resolved" else 2
        assert links == {(w.a(row[0]), w.i(row[column]), "historical") for row in ALERTS if row[column]}




def test_split_export_replays_and_scores(sqlite_world: tuple[Engine, World], tmp_path: Path) -> None:
    engine, w = sqlite_world
    data = tmp_path / "data"
    run_export(engine, data, split_at=SPLIT)
    s = settings()
    result = replay(data, s, load_rules(None, s.severity_words()), Weights.load(None))
    stream_ids = [r["id"] for r in load(data / "stream" / "alerts.jsonl")]
    assert [p["alert_id"] for p in result.predictions] == stream_ids
    assert result.history_incidents == 3 and result.stream_alerts == 6

    score = load_score()
    ours = score.score(data, result.predictions)
    assert ours["alerts"] == 6 and ours["true_incidents"] == 2 and ours["missing_predictions"] == 0
    assert ours["incident_alerts"] == 4 and ours["noise_alerts"] == 2
    for key in ("bcubed_precision", "bcubed_recall", "bcubed_f1", "incident_bcubed_f1"):
        assert 0.0 <= ours[key] <= 1.0, key
    # no `similar` grades: retrieval is not measured (NaN), and nothing fails for want of them
    assert all(math.isnan(ours[k]) for k in ours if k.startswith(("first_alert_", "all_alerts_")))
    for name in score.BASELINES:
        assert score.score(data, score.baseline_predictions(data, name))["alerts"] == 6

    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps(p) + "\n" for p in result.predictions))
    done = subprocess.run([sys.executable, str(BENCH / "score.py"), str(data), str(predictions),
                           "--baseline", "all"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "bcubed_f1" in done.stdout


# ------------------------------------------------------------------ main (what the CLI calls)

def test_main_exports_the_configured_database(sqlite_world: tuple[Engine, World], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    engine, _ = sqlite_world
    monkeypatch.setenv("ALERTLINK_DATABASE_URL", str(engine.url))
    assert export_module.main(tmp_path / "out", labels="resolved", split_at=SPLIT) == 0
    err = capsys.readouterr().err
    assert "3 past incidents, 10 past alerts (6 labelled), 2 removed links" in err
    assert "6 alerts (4 labelled) in 2 scenarios" in err
    run_export(engine, tmp_path / "direct", split_at=SPLIT)
    for name in ("history/alerts.jsonl", "stream/alerts.jsonl", "truth.json", "README.md"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "direct" / name).read_bytes()

    assert export_module.main(tmp_path / "out", labels="resolved", split_at=None) == 2  # not empty
    assert "not an empty folder" in capsys.readouterr().err


def test_main_refuses_a_database_that_is_not_migrated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ALERTLINK_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    assert export_module.main(tmp_path / "out", labels="resolved", split_at=None) == 1
    assert "alertlink migrate" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
