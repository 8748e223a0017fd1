"""Bounded history: per-request logs kept for ``MLFLOW_UNLEARN_LOG_RETENTION_DAYS``, old events folded into totals.

The scheduler's recovery (:meth:`mlflow_unlearn_plugins.scheduler.Scheduler.recover`: a server's first registry
call, then every 30 s of calls; the webhook receiver's loop) calls :func:`apply`, which does its work at most once
every :data:`EVERY_S` seconds per process:

* deletes ``<request ID>.log`` files in the log directory that were last written more than the retention ago, unless
  their request is queued or running (an active request's log is never deleted, however old);
* folds the events older than :data:`mlflow_unlearn_plugins.events.KEEP_DAYS` into the totals table
  (:func:`mlflow_unlearn_plugins.events.fold`), so the events table stays bounded and the metrics' counters do not
  go down.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow_unlearn_plugins.ledger import Ledger

#: Seconds between two retention passes of one process.
EVERY_S = 600.0
#: The log files the scheduler writes: ``<request ID>.log``, the ID a UUID4 in hex.
_LOG_NAME = re.compile(r"[0-9a-f]{32}\.log")
_last: dict[str, float] = {}
_lock = threading.Lock()
_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pruned:
    """What one retention pass removed."""

    logs: int = 0
    events: int = 0


def _due(key: str, now: float) -> bool:
    with _lock:
        if now - _last.get(key, float("-inf")) < EVERY_S:
            return False
        _last[key] = now
        return True


def apply(ledger: Ledger, log_dir: str | Path, retention_days: int, *, force: bool = False,
          now: float | None = None) -> Pruned:
    """Delete the expired logs of requests that are not active, and fold old events (at most every :data:`EVERY_S`).

    Args:
        ledger: the request ledger (which requests are active; the events table).
        log_dir: the launchers' log directory.
        retention_days: days a log is kept after its last write; 0 keeps every log.
        force: run even if this process ran a pass less than :data:`EVERY_S` ago.
        now: the time (seconds since the epoch) to count ages from; default: now.

    Returns:
        How many log files and events were removed (0 and 0 when the pass was not due).
    """
    now = time.time() if now is None else now
    if not force and not _due(f"{id(ledger.engine)}|{log_dir}", now):
        return Pruned()
    logs = prune_logs(ledger, log_dir, retention_days, now=now)
    folded = ledger.fold_events(now_ms=int(now * 1000))
    if logs or folded:
        _logger.info("Retention: %d request log(s) older than %d days deleted, %d event(s) folded into totals", logs,
                     retention_days, folded)
    return Pruned(logs, folded)


def prune_logs(ledger: Ledger, log_dir: str | Path, retention_days: int, *, now: float | None = None) -> int:
    """Delete ``<request ID>.log`` files of ``log_dir`` last written over ``retention_days`` ago whose request is not
    queued or running; return how many. Nothing for a retention of 0 or a missing directory."""
    folder = Path(log_dir)
    if retention_days <= 0 or not folder.is_dir():
        return 0
    cutoff = (time.time() if now is None else now) - retention_days * 86_400
    expired = []
    for path in folder.iterdir():
        try:
            if _LOG_NAME.fullmatch(path.name) and path.is_file() and path.stat().st_mtime < cutoff:
                expired.append(path)
        except OSError:  # deleted meanwhile
            continue
    if not expired:
        return 0
    # read after listing: a request that became active since has a fresh log, or is in this set
    active = {state.request_id for state in ledger.active()}
    deleted = 0
    for path in expired:
        if path.stem in active:
            continue
        try:
            path.unlink()
            deleted += 1
        except FileNotFoundError:
            continue
    return deleted
