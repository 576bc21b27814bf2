"""``GET /metrics``: the broker's numbers in Prometheus text, asked at each scrape.

This is the exporter pattern: a custom collector on a private registry turns
the broker's own counters (events since it started) and state counts into
metric families, so the numbers are the same whichever dashboard is scraped and
however often. When no broker answers, the scrape still succeeds with
``queuectl_broker_up 0`` and nothing else, as exporters conventionally do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from itertools import accumulate
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from queuectl.client import QueueError
from queuectl.proto.states import Event

from .charts import STATES
from .source import Source

log = logging.getLogger(__name__)

HELP = {
    Event.ENQUEUED: "Jobs enqueued since the broker started.",
    Event.COMPLETED: "Jobs completed since the broker started.",
    Event.FAILED: ("Failed attempts since the broker started (including the last one of a job "
                   "that went to the DLQ)."),
    Event.DEAD: "Jobs moved to the dead-letter queue since the broker started.",
    Event.CANCELED: "Jobs canceled since the broker started.",
}
if HELP.keys() != set(Event):  # a new counter needs its help text here
    raise ImportError(f"no /metrics help for {sorted(set(Event) - HELP.keys())}")


class BrokerCollector:
    def __init__(self, source: Source):
        self.source = source

    def describe(self) -> list[Metric]:
        return []  # the families depend on what the broker answers

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("queuectl_broker_up",
                               "1 if the broker answered this scrape, else 0.")
        try:
            status, metrics = self.source.status(), self.source.metrics()
        except QueueError as exc:
            log.warning("metrics scrape: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _state_gauges(status)
        if metrics is not None:
            yield from _event_metrics(metrics)


def _state_gauges(status: dict[str, Any]) -> Iterator[Metric]:
    counts = status["counts"]
    jobs = GaugeMetricFamily("queuectl_jobs", "Jobs in the store by state.", labels=["state"])
    for state in STATES:
        jobs.add_metric([state], counts.get(state, 0))
    yield jobs
    yield GaugeMetricFamily("queuectl_queue_depth", "Jobs waiting to run (pending + failed).",
                            value=counts.get("pending", 0) + counts.get("failed", 0))
    yield GaugeMetricFamily("queuectl_dlq", "Jobs in the dead-letter queue.", value=status["dlq"])
    yield GaugeMetricFamily("queuectl_agents", "Connected agents.", value=status["agents"])
    slots = GaugeMetricFamily("queuectl_slots", "Agent execution slots.", labels=["kind"])
    slots.add_metric(["busy"], status["slots"]["busy"])
    slots.add_metric(["total"], status["slots"]["total"])
    yield slots


def _event_metrics(metrics: dict[str, Any]) -> Iterator[Metric]:
    counters = metrics.get("counters") or {}
    for event in Event:
        yield CounterMetricFamily(f"queuectl_jobs_{event.value}_total", HELP[event],
                                  value=counters.get(event.value, 0))
    histogram = metrics.get("duration")
    if histogram:
        cumulative = list(accumulate(histogram["counts"]))
        # One count more than bounds (the last is above every bound): +Inf, below.
        buckets = [(floatToGoString(bound), count)
                   for bound, count in zip(histogram["bounds"], cumulative, strict=False)]
        buckets.append(("+Inf", cumulative[-1] if cumulative else histogram.get("count", 0)))
        yield HistogramMetricFamily(
            "queuectl_job_duration_seconds",
            "Durations of finished attempts (completed or failed) since the broker started.",
            buckets=buckets, sum_value=histogram["sum"])


def registry_for(source: Source) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(source))
    return registry


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The body and content type of one scrape."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
