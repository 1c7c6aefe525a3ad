"""Metrics every service exports (prometheus-client). Names carry their unit, per Prometheus."""

from __future__ import annotations

from collections import Counter as Counts
from collections.abc import Iterable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

SERVICE_UP = Gauge("rdx_service_up", "1 while the service is ready", ["service"])
HTTP_REQUESTS = Counter("rdx_http_requests_total", "HTTP requests served", ["service", "method", "route", "status"])
HTTP_LATENCY = Histogram("rdx_http_request_duration_seconds", "HTTP request latency", ["service", "method", "route"])
EVENTS_PUBLISHED = Counter("rdx_kafka_events_published_total", "events acknowledged by the broker", ["service", "topic"])
EVENTS_CONSUMED = Counter("rdx_kafka_events_consumed_total", "events applied by a consumer (duplicates excluded)", ["service", "topic"])
EVENTS_DUPLICATE = Counter("rdx_kafka_events_duplicate_total", "events skipped because their id was already applied", ["service", "topic"])
DEAD_LETTERS = Counter("rdx_kafka_dead_letters_total", "records a consumer could not apply and dead-lettered",
                       ["service", "topic", "reason"])
DEAD_LETTERS_UNFORWARDED = Gauge("rdx_kafka_dead_letters_unforwarded",
                                 "dead letters kept locally, not yet acknowledged by the dead-letter topic", ["service"])
HANDLER_RETRIES = Counter("rdx_kafka_handler_retries_total", "handler runs that raised and were retried",
                          ["service", "topic"])
CONSUMER_LAG = Gauge("rdx_kafka_consumer_lag_events", "events in the topic not yet consumed", ["service", "topic"])


def plain_counter(name: str, documentation: str, label: str, keys: Iterable[str]) -> Counts[str]:
    """A counter by ``label`` that the hot path bumps as a plain dict (``counts[key] += 1``) and
    /metrics reads at scrape time, as ``<name>_total``: a prometheus_client Counter's inc() (a lock,
    a labelled child) costs ~2 us, too much for something done thousands of times a second. Every
    key is there from the start, so a scrape from another thread never sees the dict change size."""
    counts: Counts[str] = Counts(dict.fromkeys(keys, 0))

    class _Collector:
        def collect(self) -> Iterable[CounterMetricFamily]:
            family = CounterMetricFamily(name, documentation, labels=[label])
            for key, n in counts.items():
                family.add_metric([key], n)
            yield family

    REGISTRY.register(_Collector())
    return counts
