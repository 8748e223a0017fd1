"""What happened to the requests, when: the plugin's append-only events table, the source of its metrics.

The ledger (:mod:`mlflow_unlearn_plugins.ledger`) writes one row into ``mlflow_unlearn_events`` in the same
transaction as each state change it makes, so an event exists exactly when its change was committed, whichever
process (server worker, launcher, webhook receiver) made it:

* ``submitted``: a request recorded by :meth:`~mlflow_unlearn_plugins.ledger.Ledger.open` (status ``queued``, or the
  final status of a refused request);
* ``admitted``: a request that took a job slot (:meth:`~mlflow_unlearn_plugins.ledger.Ledger.dispatch`), with its
  wait since ``submitted``;
* ``running``: the job started;
* ``finished``: the request reached a final status (``succeeded``, ``failed``, or any other final status of the
  ledger: the status is the event's label, so a new one needs no change here), with its run time since ``running``;
* ``launcher_replaced``: recovery found the request's launcher dead and started a new one.

The rows carry the request ID, model name and version, status and time, never the request's value (an ``ids:`` path
can name whose data it is). The table stays bounded: :func:`fold` moves the events older than
:data:`KEEP_DAYS` into ``mlflow_unlearn_event_totals`` (per event, status and duration bucket: a count and a sum) and
deletes them, so counters computed as totals plus the remaining events never go down.
:func:`aggregate` is that computation, one read transaction for every scrape of every server worker: in-process
counters would disagree between workers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa

SUBMITTED, ADMITTED, RUNNING, FINISHED, LAUNCHER_REPLACED = (
    "submitted", "admitted", "running", "finished", "launcher_replaced")
#: Events kept row by row; older ones are folded into the totals table by :func:`fold`.
KEEP_DAYS = 7
#: Upper bounds (seconds) of the duration buckets of the wait- and run-time histograms: a second to a day.
BUCKETS_S = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
#: ``le_ms`` of an event without a duration, and of a duration above the last bound.
NO_DURATION, OVERFLOW = -1, 2**62

metadata = sa.MetaData()
events_table = sa.Table(
    "mlflow_unlearn_events", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("status", sa.String(20)),
    sa.Column("duration_ms", sa.BigInteger),
    sa.Column("at_ms", sa.BigInteger, nullable=False),
    sa.Index("mlflow_unlearn_events_at", "at_ms"),
    sa.Index("mlflow_unlearn_events_request", "request_id"),
)
totals_table = sa.Table(
    "mlflow_unlearn_event_totals", metadata,
    sa.Column("event", sa.String(32), primary_key=True),
    sa.Column("status", sa.String(20), primary_key=True),
    sa.Column("le_ms", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("sum_ms", sa.BigInteger, nullable=False),
)


def _now_ms() -> int:
    return int(time.time() * 1000)


def create_tables(engine: sa.engine.Engine) -> None:
    """Create the events tables where they are missing (called by the ledger's schema code)."""
    metadata.create_all(engine, checkfirst=True)


def record(conn, *, request_id: str, name: str, version: int, event: str, status: str | None,
           since: str | None = None) -> None:
    """Append one event in the caller's transaction.

    Args:
        since: an earlier event of the same request; the new event's duration is the time since its latest one
            (none if the request has no such event, e.g. one imported from the first ledger).
    """
    now, duration = _now_ms(), None
    status = "" if status is None else str(getattr(status, "value", status))  # a RequestStatus, or a plain string
    if since is not None:
        start = conn.execute(sa.select(events_table.c.at_ms).where(
            events_table.c.request_id == request_id, events_table.c.event == since)
            .order_by(events_table.c.id.desc()).limit(1)).scalar()
        if start is not None:
            duration = max(0, now - start)
    conn.execute(events_table.insert().values(request_id=request_id or "", name=name, version=int(version),
                                              event=event, status=status, duration_ms=duration, at_ms=now))


def _bucket() -> sa.ColumnElement:
    """``le_ms`` of an event's duration: the smallest bucket bound that holds it. The bounds are rendered inline (no
    bound parameters), so that the same expression in SELECT and GROUP BY is one expression on every dialect."""
    duration = events_table.c.duration_ms
    whens = [(duration <= sa.literal_column(str(s * 1000)), sa.literal_column(str(s * 1000))) for s in BUCKETS_S]
    return sa.case((duration.is_(None), sa.literal_column(str(NO_DURATION))), *whens,
                   else_=sa.literal_column(str(OVERFLOW)))


def _grouped(*where) -> sa.Select:
    bucket = _bucket()
    return (sa.select(events_table.c.event, events_table.c.status, bucket.label("le_ms"), sa.func.count(),
                      sa.func.coalesce(sa.func.sum(events_table.c.duration_ms), 0))
            .where(*where).group_by(events_table.c.event, events_table.c.status, bucket))


@dataclass(frozen=True)
class Tally:
    """The events of one kind and status with a duration up to ``le_ms`` (non-cumulative): how many, total ms."""

    event: str
    status: str
    le_ms: int
    count: int
    sum_ms: int


def aggregate(conn) -> list[Tally]:
    """Every event ever recorded, as tallies: the folded totals plus the rows still kept."""
    merged: dict[tuple[str, str, int], list[int]] = {}
    rows = list(conn.execute(sa.select(totals_table.c.event, totals_table.c.status, totals_table.c.le_ms,
                                       totals_table.c.count, totals_table.c.sum_ms)))
    rows += list(conn.execute(_grouped()))
    for event, status, le_ms, count, sum_ms in rows:
        tally = merged.setdefault((event, status or "", int(le_ms)), [0, 0])
        tally[0] += int(count)
        tally[1] += int(sum_ms)
    return [Tally(e, s, le, c, t) for (e, s, le), (c, t) in sorted(merged.items())]


def fold(conn, *, now_ms: int | None = None, keep_days: float = KEEP_DAYS) -> int:
    """Move the events older than ``keep_days`` into the totals table, in the caller's transaction; return how many.

    Counts computed by :func:`aggregate` are the same before and after.
    """
    cutoff = (_now_ms() if now_ms is None else now_ms) - int(keep_days * 86_400_000)
    last = conn.execute(sa.select(sa.func.max(events_table.c.id)).where(events_table.c.at_ms < cutoff)).scalar()
    if last is None:
        return 0
    old = (events_table.c.id <= last, events_table.c.at_ms < cutoff)
    folded = 0
    for event, status, le_ms, count, sum_ms in list(conn.execute(_grouped(*old))):
        key = (totals_table.c.event == event, totals_table.c.status == (status or ""), totals_table.c.le_ms == le_ms)
        moved = conn.execute(totals_table.update().where(*key).values(
            count=totals_table.c.count + int(count), sum_ms=totals_table.c.sum_ms + int(sum_ms))).rowcount
        if moved != 1:  # a concurrent fold's insert fails on the key; the caller retries the whole transaction
            conn.execute(totals_table.insert().values(event=event, status=status or "", le_ms=int(le_ms),
                                                      count=int(count), sum_ms=int(sum_ms)))
        folded += int(count)
    conn.execute(events_table.delete().where(*old))
    return folded


def histogram(tallies: list[Tally], event: str, status: str | None = None) -> tuple[list[tuple[str, int]], float]:
    """Cumulative Prometheus buckets (``le`` in seconds, ``+Inf`` last) and the sum in seconds of the durations of
    ``event`` (of one ``status`` if given); events without a duration are not observations."""
    counts = dict.fromkeys([s * 1000 for s in BUCKETS_S] + [OVERFLOW], 0)
    total_ms = 0
    for tally in tallies:
        if tally.event == event and (status is None or tally.status == status) and tally.le_ms != NO_DURATION:
            counts[tally.le_ms if tally.le_ms in counts else OVERFLOW] += tally.count
            total_ms += tally.sum_ms
    buckets, running = [], 0
    for le_ms, count in counts.items():
        running += count
        buckets.append(("+Inf" if le_ms == OVERFLOW else _seconds(le_ms), running))
    return buckets, total_ms / 1000


def _seconds(ms: int) -> str:
    return str(ms // 1000) if ms % 1000 == 0 else str(ms / 1000)


def statuses(tallies: list[Tally], event: str) -> Iterator[tuple[str, int]]:
    """``(status, count)`` of ``event``, by status."""
    counts: dict[str, int] = {}
    for tally in tallies:
        if tally.event == event:
            counts[tally.status] = counts.get(tally.status, 0) + tally.count
    yield from sorted(counts.items())
