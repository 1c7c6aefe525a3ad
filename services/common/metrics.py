"""Metrics every service exports (prometheus-client). Names carry their unit, per Prometheus."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
