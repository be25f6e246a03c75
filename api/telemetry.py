"""Prometheus: the API's request latency (observed here, per process) and `GET /metrics`.

Two kinds of metrics, chosen so that several API processes report correctly:
- The state of the service (jobs by status, queue depth and oldest wait, time-in-queue and
  duration histograms, steps per second of each running job, points written, worker
  heartbeats) is computed from PostgreSQL and Redis at scrape time (`db/stats.py`,
  `traindepot/dispatch.py`). Every process reads the same rows, so any of them answers the
  same, and nothing is lost when a process restarts.
- What only a process can see, the latency of the requests it served (a histogram) and
  where its job documents came from (a counter), is kept per process. With
  `PROMETHEUS_MULTIPROC_DIR` set (an empty directory, shared by the API processes of a
  host, wiped before they start) prometheus-client keeps it in files there and a scrape of
  any process sums every process' files; without it, each process reports its own
  requests (one process: the whole truth).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from db.stats import BUCKETS, JobStats
from db.stats import Histogram as SqlHistogram

REQUEST_SECONDS = Histogram(
    "traindepot_http_request_duration_seconds",
    "Time from a request to its response's headers (a stream's start, not its end), by the "
    "route's template",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=None,
)

JOB_READS = Counter(
    "traindepot_job_reads",
    "`GET /jobs/{id}` documents by where they came from: `cache` (this process' job cache, "
    "api/job_docs.py) or `database`",
    ["source"],
    registry=None,
)


def _route(scope: Scope) -> str:
    """The matched route's template (`/jobs/{job_id}`), never the raw path: one series per
    route, whatever ids are requested. Unmatched paths share one label."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(path) if path else "(unmatched)"


class RequestLatency:
    """ASGI middleware observing `REQUEST_SECONDS` when the response starts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        observed = False

        def observe(status: int) -> None:
            nonlocal observed
            if not observed:
                observed = True
                REQUEST_SECONDS.labels(scope["method"], _route(scope), str(status)).observe(
                    time.perf_counter() - started
                )

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                observe(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except BaseException:
            observe(500)
            raise


class _Scraped(Collector):
    """The service's state, as read for this scrape."""

    def __init__(self, stats: JobStats, workers: list[tuple[str, str, float | None]] | None):
        self.stats = stats
        self.workers = workers

    def collect(self) -> Iterable[Metric]:
        s = self.stats
        jobs = GaugeMetricFamily(
            "traindepot_jobs",
            "Jobs by tenant, queue and status",
            labels=["tenant", "queue", "status"],
        )
        for tenant, queue, status, n in s.by_status:
            jobs.add_metric([tenant, queue, status], n)
        yield jobs
        depth = GaugeMetricFamily("traindepot_queue_depth", "Queued jobs", labels=["queue"])
        oldest = GaugeMetricFamily(
            "traindepot_queue_oldest_wait_seconds",
            "Age of the oldest queued job (since it was submitted)",
            labels=["queue"],
        )
        for queue, n, age in s.queued:
            depth.add_metric([queue], n)
            oldest.add_metric([queue], age)
        yield depth
        yield oldest
        held = GaugeMetricFamily(
            "traindepot_gang_held_devices",
            "Devices held by seats of gangs still forming (jobs of several nodes)",
            labels=["queue"],
        )
        for queue, devices in sorted(s.gang_held.items()):
            held.add_metric([queue], devices)
        yield held
        wait = HistogramMetricFamily(
            "traindepot_job_queue_seconds",
            "Time from submission to the first claim, of the jobs that started",
            labels=["queue"],
        )
        for queue, h in sorted(s.queue_wait.items()):
            wait.add_metric([queue], _buckets(h), sum_value=h.sum)
        yield wait
        duration = HistogramMetricFamily(
            "traindepot_job_duration_seconds",
            "Time from the first claim to the end, of the finished jobs that started",
            labels=["queue", "status"],
        )
        for (queue, status), h in sorted(s.duration.items()):
            duration.add_metric([queue, status], _buckets(h), sum_value=h.sum)
        yield duration
        speed = GaugeMetricFamily(
            "traindepot_job_steps_per_second",
            "Training steps per second of each running job (its progress snapshot)",
            labels=["job_id", "name", "tenant", "queue"],
        )
        step = GaugeMetricFamily(
            "traindepot_job_global_step",
            "The global step of each running job",
            labels=["job_id", "name", "tenant", "queue"],
        )
        for job in s.running:
            labels = [job.id, job.name, job.tenant, job.queue]
            rate = job.progress.get("steps_per_second")
            if isinstance(rate, int | float):
                speed.add_metric(labels, float(rate))
            at = job.progress.get("global_step")
            if isinstance(at, int | float):
                step.add_metric(labels, float(at))
        yield speed
        yield step
        yield CounterMetricFamily(
            "traindepot_metric_points_written",
            "Metric points written to job_metrics by the flushers (a re-logged point counts again)",
            value=s.points_written,
        )
        if self.workers is not None:
            beats = GaugeMetricFamily(
                "traindepot_worker_heartbeat_timestamp_seconds",
                "Unix time of each live worker's last registry refresh (every 15 s; a worker "
                "is gone from the list 45 s after its last)",
                labels=["queue", "worker"],
            )
            live: dict[str, int] = {}
            for queue, worker, beat in self.workers:
                live[queue] = live.get(queue, 0) + 1
                if beat is not None:
                    beats.add_metric([queue, worker], beat)
            yield beats
            count = GaugeMetricFamily(
                "traindepot_workers", "Live registered workers by queue", labels=["queue"]
            )
            for queue, n in sorted(live.items()):
                count.add_metric([queue], n)
            yield count
        yield GaugeMetricFamily(
            "traindepot_redis_up",
            "1 when the worker registry in Redis could be read for this scrape",
            value=0 if self.workers is None else 1,
        )


def _buckets(h: SqlHistogram) -> list[tuple[str, float]]:
    counts: list[tuple[str, float]] = [
        (repr(float(b)), float(n)) for b, n in zip(BUCKETS, h.buckets, strict=True)
    ]
    return [*counts, ("+Inf", float(h.count))]


def exposition(stats: JobStats, workers: list[tuple[str, str, float | None]] | None) -> bytes:
    """The text format of everything: the scraped state and the request latencies (every
    process' with `PROMETHEUS_MULTIPROC_DIR`, else this process')."""
    registry = CollectorRegistry()
    registry.register(_Scraped(stats, workers))
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(REQUEST_SECONDS)
        registry.register(JOB_READS)
    return generate_latest(registry)
