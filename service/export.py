"""`alertlink export DIR`: the service's database written as a labelled data set
(`../shared/bench/DATASET.md`), so weights and rules can be tuned on a team's real
history and not only on generated worlds.

What counts as a label
----------------------
A link says "this alert belongs to that incident". Who made it decides whether it is
a label:

- `manual` and `historical` links are what responders said (or what an imported
  history said): always labels.
- `auto_created` and `auto_correlated` links are what alertlink guessed. With
  `labels="resolved"` (the default) they count once a human confirmed the incident
  by resolving it *with a root cause* (a non-blank `root_cause`); a resolve without
  one may be housekeeping, so it confirms nothing. With `labels="human"` they never
  count.
- A link a responder removed (`removed_at` set) is never a label: it is a negative,
  written to `labels/removed_links.jsonl`.

An alert carries at most one label (`incident_id`): a human link before an automatic
one, then the earliest link. An alert without one is either noise (never linked, or
all its links removed) or unlabelled (linked only by guesses nobody confirmed); the
README written into the folder counts the second kind.

Layout written
--------------
    DIR/history/incidents.jsonl     resolved incidents (not those of the stream)
    DIR/history/alerts.jsonl        alerts, with incident_id when labelled
    DIR/stream/alerts.jsonl         with split_at: alerts fired at or after it
    DIR/truth.json                  with split_at: the stream's labels
    DIR/labels/removed_links.jsonl  the negatives, always
    DIR/README.md                   what was exported, how, and the counts

With `split_at`, an incident any stream alert belongs to is a scenario of the
stream: it is left out of the history, and its labelled alerts fired before
`split_at` go to the stream too, so each scenario is whole and no history alert
names an incident the history lacks. `truth.json` has no `similar` grades (nothing
in the database says which past incidents were alike); `score.py` then reports the
retrieval metrics as NaN and the grouping metrics as usual.

Ids are the database ids as strings; times are UTC `YYYY-MM-DDTHH:MM:SSZ`
(sub-second parts are cut). A history alert still firing gets its last delivery as
`resolved_at` (history rows always end, and `replay.load_history` needs the time);
in the stream it stays null. Text a responder never wrote (`root_cause`, `summary`)
is `""`, not null. The database is read in batches, in one read-only
transaction (`main`), so a large one is neither loaded at once nor changed.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

from sqlalchemy import Connection, and_, case, func, or_, select
from sqlalchemy.orm import Session

from models.tables import Alert, AlertIncidentLink, Incident

Labels = Literal["human", "resolved"]
HUMAN_LINKS = ("manual", "historical")
AUTO_LINKS = ("auto_created", "auto_correlated")
BATCH = 1000  # rows fetched per round trip
_IN_CHUNK = 500  # ids per IN (...) list


@dataclass
class ExportReport:
    labels: str
    split_at: str | None
    history_incidents: int = 0
    history_alerts: int = 0
    history_labelled_alerts: int = 0
    stream_alerts: int = 0
    stream_labelled_alerts: int = 0
    scenarios: int = 0
    # labelled alerts fired before split_at, in the stream because their incident continues after it
    moved_to_stream: int = 0
    removed_links: int = 0
    # history alerts still firing: their resolved_at is the last time alertlink received them
    history_still_firing: int = 0
    # alerts written without incident_id although a link not removed exists: automatic links of an
    # incident nobody confirmed, or a link to an incident still open (not in the history)
    linked_but_unlabelled: int = 0
    # resolved incidents without a root cause: their automatic links are no labels in "resolved" mode
    resolved_without_root_cause: int = 0
    files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fmt_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False)


def _confirmed():
    """SQL: the incident was resolved with a root cause."""
    return and_(Incident.status == "resolved", Incident.root_cause.is_not(None),
                func.trim(Incident.root_cause) != "")


def _label_links(labels: Labels):
    """Per alert, its one label: (alert_id, incident_id, incident_status) - a subquery."""
    counts = AlertIncidentLink.link_type.in_(HUMAN_LINKS)
    if labels == "resolved":
        counts = or_(counts, and_(AlertIncidentLink.link_type.in_(AUTO_LINKS), _confirmed()))
    elif labels != "human":
        raise ValueError(f"labels must be 'human' or 'resolved', not {labels!r}")
    rank = func.row_number().over(
        partition_by=AlertIncidentLink.alert_id,
        order_by=(case((AlertIncidentLink.link_type.in_(HUMAN_LINKS), 0), else_=1),
                  AlertIncidentLink.linked_at, AlertIncidentLink.id))
    ranked = (select(AlertIncidentLink.alert_id, AlertIncidentLink.incident_id,
                     Incident.status.label("incident_status"), rank.label("rank"))
              .join(Incident, Incident.id == AlertIncidentLink.incident_id)
              .where(AlertIncidentLink.removed_at.is_(None), counts)
              .subquery("ranked"))
    return select(ranked.c.alert_id, ranked.c.incident_id, ranked.c.incident_status) \
        .where(ranked.c.rank == 1).subquery("label")


def _alert_row(a: Any) -> dict[str, Any]:
    return {"id": str(a.id), "fingerprint": a.fingerprint, "title": a.title, "source": a.source,
            "severity": a.severity, "fired_at": fmt_time(a.fired_at), "resolved_at": fmt_time(a.resolved_at),
            "labels": dict(a.labels or {}), "annotations": dict(a.annotations or {})}


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for i in range(0, len(ids), _IN_CHUNK):
        yield ids[i:i + _IN_CHUNK]


def _prepare(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder: export into a new or empty one")
    out.mkdir(parents=True, exist_ok=True)


def export(session: Session, out: Path, *, labels: Labels = "resolved",
           split_at: datetime | None = None) -> ExportReport:
    """Write the database behind `session` into `out` (new or empty) in the data set layout.
    Reads only; the caller owns the transaction (one snapshot: see `read_only_session`)."""
    if labels not in ("human", "resolved"):
        raise ValueError(f"labels must be 'human' or 'resolved', not {labels!r}")
    if split_at is not None and split_at.tzinfo is None:
        split_at = split_at.replace(tzinfo=UTC)  # naive means UTC, as everywhere in alertlink
    _prepare(out)
    report = ExportReport(labels=labels, split_at=fmt_time(split_at))
    label = _label_links(labels)

    # 1. the stream's scenarios: incidents a stream alert is labelled with
    scenarios: set[int] = set()
    if split_at is not None:
        scenarios = set(session.scalars(
            select(label.c.incident_id).join(Alert, Alert.id == label.c.alert_id)
            .where(Alert.fired_at >= split_at).distinct()))

    # 2. every alert once, in (fired_at, id) order, into the history or the stream
    has_link = select(AlertIncidentLink.id).where(AlertIncidentLink.alert_id == Alert.id,
                                                  AlertIncidentLink.removed_at.is_(None)).exists()
    alerts_q = (select(Alert.id, Alert.fingerprint, Alert.title, Alert.source, Alert.severity, Alert.fired_at,
                       Alert.resolved_at, Alert.last_received_at, Alert.labels, Alert.annotations,
                       label.c.incident_id,
                       label.c.incident_status, has_link.label("has_link"))
                .outerjoin(label, label.c.alert_id == Alert.id)
                .order_by(Alert.fired_at, Alert.id)
                .execution_options(yield_per=BATCH))
    truth_alerts: dict[str, str | None] = {}
    starts: dict[int, datetime] = {}
    envs: dict[int, set[str | None]] = {}
    (out / "history").mkdir()
    with ExitStack() as files:
        history = files.enter_context((out / "history" / "alerts.jsonl").open("w"))
        stream: IO[str] | None = None
        if split_at is not None:
            (out / "stream").mkdir()
            stream = files.enter_context((out / "stream" / "alerts.jsonl").open("w"))
        for a in session.execute(alerts_q):
            row = _alert_row(a)
            incident_id = a.incident_id
            if stream is not None and (a.fired_at >= split_at or incident_id in scenarios):
                stream.write(_dump(row) + "\n")
                report.stream_alerts += 1
                truth_alerts[row["id"]] = None if incident_id is None else str(incident_id)
                if incident_id is not None:
                    report.stream_labelled_alerts += 1
                    report.moved_to_stream += a.fired_at < split_at
                    starts[incident_id] = min(starts.get(incident_id, a.fired_at), a.fired_at)
                    envs.setdefault(incident_id, set()).add((a.labels or {}).get("environment"))
                elif a.has_link:
                    report.linked_but_unlabelled += 1
                continue
            if a.resolved_at is None:
                # the history is the past: every row ends (replay's load_history needs the time); the
                # last delivery is the latest evidence of the alert that there is
                row["resolved_at"] = fmt_time(max(a.fired_at, a.last_received_at))
                report.history_still_firing += 1
            if incident_id is not None and a.incident_status == "resolved":
                row["incident_id"] = str(incident_id)
                report.history_labelled_alerts += 1
            elif a.has_link:
                report.linked_but_unlabelled += 1
            history.write(_dump(row) + "\n")
            report.history_alerts += 1

    # 3. past incidents: the resolved ones, less the stream's
    incidents_q = (select(Incident.id, Incident.title, Incident.severity, Incident.created_at,
                          Incident.resolved_at, Incident.last_activity_at, Incident.root_cause, Incident.summary)
                   .where(Incident.status == "resolved")
                   .order_by(Incident.created_at, Incident.id)
                   .execution_options(yield_per=BATCH))
    with (out / "history" / "incidents.jsonl").open("w") as fh:
        for i in session.execute(incidents_q):
            if not (i.root_cause or "").strip():
                report.resolved_without_root_cause += 1
            if i.id in scenarios:
                continue
            # text fields are "" when empty (consumers concatenate them); a resolved incident
            # always has resolved_at, else its last activity stands in (null would reopen it)
            fh.write(_dump({"id": str(i.id), "title": i.title, "severity": i.severity,
                            "created_at": fmt_time(i.created_at),
                            "resolved_at": fmt_time(i.resolved_at or i.last_activity_at),
                            "root_cause": i.root_cause or "", "summary": i.summary or ""}) + "\n")
            report.history_incidents += 1

    # 4. the stream's answers
    if split_at is not None:
        found: dict[str, dict[str, Any]] = {}
        for ids in _chunks(sorted(scenarios)):
            for i in session.execute(select(Incident.id, Incident.title, Incident.root_cause, Incident.created_at)
                                     .where(Incident.id.in_(ids))):
                scenario: dict[str, Any] = {"title": i.title, "root_cause": i.root_cause or "",
                                            "start": fmt_time(min(i.created_at, starts.get(i.id, i.created_at)))}
                env = envs.get(i.id, set())
                if len(env) == 1 and None not in env:
                    scenario["env"] = next(iter(env))
                found[str(i.id)] = scenario
        report.scenarios = len(found)
        (out / "truth.json").write_text(_dump({"alerts": truth_alerts, "scenarios": found}) + "\n")

    # 5. the negatives: links a responder removed
    (out / "labels").mkdir()
    removed_q = (select(AlertIncidentLink.alert_id, AlertIncidentLink.incident_id, AlertIncidentLink.removed_by,
                        AlertIncidentLink.removed_at, AlertIncidentLink.link_type)
                 .where(AlertIncidentLink.removed_at.is_not(None))
                 .order_by(AlertIncidentLink.removed_at, AlertIncidentLink.alert_id, AlertIncidentLink.incident_id)
                 .execution_options(yield_per=BATCH))
    with (out / "labels" / "removed_links.jsonl").open("w") as fh:
        for r in session.execute(removed_q):
            fh.write(_dump({"alert_id": str(r.alert_id), "incident_id": str(r.incident_id),
                            "removed_by": r.removed_by, "removed_at": fmt_time(r.removed_at),
                            "link_type": r.link_type}) + "\n")
            report.removed_links += 1

    report.files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) + ["README.md"]
    report.files.sort()
    (out / "README.md").write_text(readme(report))
    return report


def readme(r: ExportReport) -> str:
    mode = {
        "resolved": "`resolved` (the default): `manual` and `historical` links, and the automatic links "
                    "(`auto_created`, `auto_correlated`) of incidents a responder resolved with a root cause. "
                    f"{r.resolved_without_root_cause} resolved incident(s) had no root cause: their automatic "
                    "links are not labels.",
        "human": "`human`: only `manual` and `historical` links (what responders, or an imported history, said); "
                 "every automatic link is left out.",
    }[r.labels]
    split = (f"Alerts fired at or after {r.split_at} are in `stream/alerts.jsonl` ({r.stream_alerts}, "
             f"{r.stream_labelled_alerts} labelled); the {r.scenarios} incident(s) they belong to are the "
             f"scenarios of `truth.json` and are left out of the history. {r.moved_to_stream} labelled alert(s) "
             "fired before that time belong to such an incident and are in the stream too, so every scenario "
             "is whole."
             if r.split_at else "No split time was given: there is no `stream/` and no `truth.json`.")
    stream_files = "" if not r.split_at else (
        "\n- `stream/alerts.jsonl`: alerts in the history's format, without `incident_id`; `resolved_at` is\n"
        "  null for an alert still firing.\n"
        "- `truth.json`: `alerts` (stream alert id -> incident id, or null for no label) and `scenarios`\n"
        "  (incident id -> `title`, `root_cause`, `start` (its creation or its first alert, the earlier),\n"
        "  and `env` when all its alerts share one `environment` label). There are no `similar` grades,\n"
        "  no `mode` and no `root`: nothing in the database says which past incidents were alike, so\n"
        "  `score.py` reports the retrieval metrics as NaN and the grouping metrics as usual.")
    return f"""# alertlink export

A labelled data set written from an alertlink database by `alertlink export`, in the layout of
`bench/DATASET.md`. Ids are the database ids as strings; times are UTC `YYYY-MM-DDTHH:MM:SSZ`
(sub-second parts cut). Every file is sorted (by time, then id) and written with sorted keys, so
the same database gives the same bytes.

## Labels: {r.labels}
{mode}

A link a responder removed is never a label. An alert carries at most one `incident_id`: a human
link before an automatic one, then the earliest. An alert without `incident_id` is noise (never
linked, or every link removed) or unlabelled: {r.linked_but_unlabelled} alert(s) had a link that is
no label here (an automatic link nobody confirmed, or a link to an incident still open, which is
not in the history) and are written without one.

## Files
- `history/incidents.jsonl` ({r.history_incidents}): resolved incidents: `id`, `title`, `severity`
  (alertlink's levels: critical, high, medium, low, info), `created_at`, `resolved_at`,
  `root_cause` and `summary` (`""` when none was written).
- `history/alerts.jsonl` ({r.history_alerts}, {r.history_labelled_alerts} with `incident_id`):
  `id`, `fingerprint`, `title`, `source`, `severity` (alertlink's level; the sender's own word
  stays in `labels.severity` when it sent one), `fired_at`, `resolved_at`, `labels`,
  `annotations`, and `incident_id` when labelled. {r.history_still_firing} of them were still firing
  when exported: their `resolved_at` is the last time alertlink received them (a past alert always
  ends; `replay`'s `load_history` needs the time).
- `labels/removed_links.jsonl` ({r.removed_links}): the negatives, links a responder removed:
  `alert_id`, `incident_id`, `removed_by`, `removed_at`, `link_type` (who had made the link). The
  alert and the incident may be in the history or in the stream, or the incident not exported at
  all (still open).{stream_files}

## Split
{split}
"""


@contextmanager
def read_only_session(conn: Connection) -> Iterator[Session]:
    """A session over one read-only transaction (one snapshot on PostgreSQL, a read lock on SQLite)."""
    sqlite = conn.dialect.name == "sqlite"
    if sqlite:
        conn.exec_driver_sql("PRAGMA query_only=ON")
        conn.exec_driver_sql("BEGIN")  # pysqlite starts no transaction for reads: one snapshot for all queries
    else:
        conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    try:
        with Session(bind=conn) as session:
            yield session
    finally:
        conn.rollback()
        if sqlite:
            conn.exec_driver_sql("PRAGMA query_only=OFF")
            conn.commit()


def main(out: Path, *, labels: Labels = "resolved", split_at: datetime | None = None) -> int:
    """`alertlink export DIR`: the configured database into DIR; counts to stderr. Exit code."""
    from models.db import current_revision, head_revision, make_engine
    from service.settings import Settings

    engine = make_engine(Settings().database_url)
    try:
        if (at := current_revision(engine)) != head_revision():
            print(f"database at revision {at}, expected {head_revision()}: run `alertlink migrate`",
                  file=sys.stderr)
            return 1
        try:
            with engine.connect() as conn, read_only_session(conn) as session:
                report = export(session, out, labels=labels, split_at=split_at)
        except (FileExistsError, ValueError) as exc:
            print(f"export: {exc}", file=sys.stderr)
            return 2
    finally:
        engine.dispose()
    print(f"exported to {out} (labels: {report.labels}): {report.history_incidents} past incidents, "
          f"{report.history_alerts} past alerts ({report.history_labelled_alerts} labelled), "
          f"{report.removed_links} removed links", file=sys.stderr)
    if report.split_at:
        print(f"stream from {report.split_at}: {report.stream_alerts} alerts ({report.stream_labelled_alerts} "
              f"labelled) in {report.scenarios} scenarios", file=sys.stderr)
    if report.linked_but_unlabelled:
        print(f"{report.linked_but_unlabelled} linked alerts carry no label (unconfirmed or open incidents)",
              file=sys.stderr)
    return 0
