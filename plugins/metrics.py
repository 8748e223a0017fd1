"""The plugin's Prometheus metrics, computed from its database at every scrape.

``mlflow server`` runs several worker processes, and launchers and the webhook receiver change the requests' state
from other processes still: counters kept in one process's memory would disagree with each other. So
:class:`LedgerCollector` reads the ledger (:meth:`~mlflow_unlearn_plugins.ledger.Ledger.occupancy`) and its events
(:meth:`~mlflow_unlearn_plugins.ledger.Ledger.event_tallies`) on every scrape, and every worker answers the same.

The metrics carry no model name or version and no request (bounded cardinality; nothing about whose data is
forgotten); the only label is a request's ``status`` (its ledger string, so a new status appears by itself):

================================================== ========= =====================================================
metric                                             type      meaning
================================================== ========= =====================================================
``mlflow_unlearn_queue_depth``                     gauge     requests waiting for a job slot
``mlflow_unlearn_requests_admitted``               gauge     requests holding a slot whose launcher prepares them
``mlflow_unlearn_requests_running``                gauge     requests whose job runs
``mlflow_unlearn_job_slots``                       gauge     the cap, ``MLFLOW_UNLEARN_MAX_JOBS``
``mlflow_unlearn_requests_submitted_total``        counter   requests recorded (refused ones included)
``mlflow_unlearn_requests_finished_total{status}`` counter   requests that reached a final status, by status
``mlflow_unlearn_launcher_deaths_total``           counter   launchers found dead and replaced by recovery
``mlflow_unlearn_wait_seconds``                    histogram submitted -> admitted (took a job slot)
``mlflow_unlearn_run_seconds{status}``             histogram job started (``running``) -> final status
================================================== ========= =====================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from mlflow_unlearn_plugins import events
from mlflow_unlearn_plugins.ledger import Ledger

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PREFIX = "mlflow_unlearn"


class LedgerCollector:
    """A ``prometheus_client`` collector whose every ``collect()`` reads the ledger's database.

    Args:
        ledger: returns the ledger (called at each scrape; it may raise while the database cannot be opened).
        max_jobs: the job slots of this deployment.
    """

    def __init__(self, ledger: Callable[[], Ledger], max_jobs: int) -> None:
        self._ledger, self.max_jobs = ledger, max_jobs

    def describe(self) -> list:
        return []  # nothing is read when the collector is registered; collect() reads the database

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        ledger = self._ledger()
        occupancy, tallies = ledger.occupancy(), ledger.event_tallies()
        yield GaugeMetricFamily(f"{_PREFIX}_queue_depth", "Unlearning requests waiting for a job slot.",
                                value=occupancy.pop("waiting", 0))
        yield GaugeMetricFamily(f"{_PREFIX}_requests_admitted",
                                "Unlearning requests holding a job slot whose launcher prepares them.",
                                value=occupancy.pop("admitted", 0))
        yield GaugeMetricFamily(f"{_PREFIX}_requests_running", "Unlearning requests whose job runs.",
                                value=occupancy.pop("running", 0))
        yield GaugeMetricFamily(f"{_PREFIX}_job_slots", "Requests whose job may run at once (MLFLOW_UNLEARN_MAX_JOBS).",
                                value=self.max_jobs)
        submitted = CounterMetricFamily(f"{_PREFIX}_requests_submitted",
                                        "Unlearning requests recorded, refused ones included.")
        submitted.add_metric([], sum(count for _, count in events.statuses(tallies, events.SUBMITTED)))
        yield submitted
        finished = CounterMetricFamily(f"{_PREFIX}_requests_finished",
                                       "Unlearning requests that reached a final status, by status.",
                                       labels=["status"])
        for status, count in events.statuses(tallies, events.FINISHED):
            finished.add_metric([status], count)
        yield finished
        deaths = CounterMetricFamily(f"{_PREFIX}_launcher_deaths",
                                     "Launchers found dead and replaced by the scheduler's recovery.")
        deaths.add_metric([], sum(count for _, count in events.statuses(tallies, events.LAUNCHER_REPLACED)))
        yield deaths
        wait = HistogramMetricFamily(f"{_PREFIX}_wait_seconds",
                                     "Seconds from a request's submission to its admission into a job slot.")
        buckets, total = events.histogram(tallies, events.ADMITTED)
        wait.add_metric([], buckets, total)
        yield wait
        run = HistogramMetricFamily(f"{_PREFIX}_run_seconds",
                                    "Seconds from a request's job start to its final status, by status.",
                                    labels=["status"])
        for status, _ in events.statuses(tallies, events.FINISHED):
            buckets, total = events.histogram(tallies, events.FINISHED, status)
            if buckets[-1][1]:  # only statuses with a run time (a refused request never ran)
                run.add_metric([status], buckets, total)
        yield run


def render(ledger: Callable[[], Ledger], max_jobs: int) -> bytes:
    """The metrics in Prometheus's text format (:data:`CONTENT_TYPE`), read from the database now.

    Raises:
        Exception: whatever reading the database raised (the caller answers 503).
    """
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger, max_jobs))
    return generate_latest(registry)
