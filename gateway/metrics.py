"""Prometheus metrics. With ``--workers N`` every worker writes to ``$PROMETHEUS_MULTIPROC_DIR`` and
``/metrics`` sums them, so a scraper sees one gateway whichever worker it reaches."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Sub-millisecond answers are the normal case; the top buckets catch the deadline (1.5 s by default).
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    1.5,
    2.5,
    5.0,
)

REQUESTS = Counter(
    "routing_requests_total",
    "Webhook requests by protocol and outcome (routed, default, not_found, disconnect, bad_request, unauthorized, "
    "forbidden, method, too_large, error).",
    ["protocol", "outcome"],
)
LATENCY = Histogram(
    "routing_request_duration_seconds",
    "Time from request to answer, by protocol.",
    ["protocol"],
    buckets=LATENCY_BUCKETS,
)
RULES = Counter("routing_rule_matches_total", "Decisions made by each rule.", ["rule"])
LOOKUP_RESULTS = (
    "hit",
    "stale",
    "miss",
    "not_found",
    "rejected",
    "failed",
    "timeout",
    "open",
    "skipped",
    "abandoned",
)
LOOKUPS = Counter(
    "routing_lookups_total",
    "Caller lookups by result (hit, stale, miss, not_found, rejected: another 4xx, failed, timeout, "
    "open: the CRM's breaker is open, skipped: not a phone number, abandoned: a reload replaced the lookup).",
    ["result"],
)
LOOKUP_LATENCY = Histogram(
    "routing_lookup_duration_seconds",
    "Duration of requests made to the lookup service.",
    buckets=LATENCY_BUCKETS,
)
FALLBACKS = Counter(
    "routing_fallbacks_total",
    "Answers given without the full decision, by reason (deadline: out of time; store: Redis down, "
    "served in process, or its connection pool full for the whole wait).",
    ["reason"],
)
RELOADS = Counter(
    "routing_config_reloads_total",
    "Config reloads by result (ok, invalid, unchanged: the same version).",
    ["result"],
)
STORE_EVICTIONS = Counter(
    "routing_store_evictions_total",
    "Entries the in-process store dropped for room while still inside their TTL (a call record inside its "
    "retry window, a cached lookup): raise store.max_entries when this moves.",
)
LOG_DROPPED = Counter(
    "routing_log_lines_dropped_total", "Log lines dropped because the log output did not keep up."
)
JOURNAL_DROPPED = Counter(
    "routing_journal_dropped_total",
    "Decisions not recorded in the journal, by reason (store: Redis down or failing, full: the writer "
    "fell behind, refused, invalid, closed). The answers themselves were given.",
    ["reason"],
)
STORE_UP = Gauge(
    "routing_store_up",
    "1 while the store answers (Redis, or the in-process store); 0 while Redis is down.",
    multiprocess_mode="livemin",
)
CONFIG = Gauge(
    "routing_config_info",
    "The loaded config's version (1); with workers, versions no longer loaded stay at 0 until restart.",
    ["version"],
    multiprocess_mode="livemax",
)
CONFIG_LOADED = Gauge(
    "routing_config_loaded_timestamp_seconds",
    "When the running config was loaded (Unix time).",
    multiprocess_mode="livemax",
)


def _zero() -> None:
    # Every known label value has a series from the start, so an alert sees 0 rather than no data.
    for result in LOOKUP_RESULTS:
        LOOKUPS.labels(result)
    for reason in ("deadline", "store"):
        FALLBACKS.labels(reason)
    for result in ("ok", "invalid", "unchanged"):
        RELOADS.labels(result)
    for reason in ("store", "full"):
        JOURNAL_DROPPED.labels(reason)


_zero()


def observe_lookup(result: str, seconds: float | None) -> None:
    """The lookups' observer: results counted, request durations timed."""
    if seconds is not None:
        LOOKUP_LATENCY.observe(seconds)
    else:
        (_lookups.get(result) or _child(_lookups, LOOKUPS, result)).inc()


# The labelled series each answer touches, found once: prometheus-client's labels() costs more than
# the increment itself.
_requests: dict[tuple[str, str], Any] = {}
_latency: dict[str, Any] = {}
_rules: dict[str, Any] = {}
_fallbacks: dict[str, Any] = {}
_lookups: dict[str, Any] = {}


def _child(cache: dict, metric: Any, *labels: str) -> Any:
    key = labels if len(labels) > 1 else labels[0]
    child = cache.get(key)
    if child is None:
        child = cache[key] = metric.labels(*labels)
    return child


def answered(
    protocol: str, outcome: str, seconds: float, rule: str | None, fallback: str | None, degraded: bool
) -> None:
    """One webhook answered: counted by outcome, timed, its rule and any fallback counted. ``degraded``:
    a decision made while Redis was down, served in process."""
    child = _requests.get((protocol, outcome)) or _child(_requests, REQUESTS, protocol, outcome)
    child.inc()
    (_latency.get(protocol) or _child(_latency, LATENCY, protocol)).observe(seconds)
    if rule:
        (_rules.get(rule) or _child(_rules, RULES, rule)).inc()
    if fallback:
        (_fallbacks.get(fallback) or _child(_fallbacks, FALLBACKS, fallback)).inc()
    if degraded:
        (_fallbacks.get("store") or _child(_fallbacks, FALLBACKS, "store")).inc()


def journal_dropped(reason: str, count: int) -> None:
    JOURNAL_DROPPED.labels(reason).inc(count)


def config_loaded(version: str, previous: str | None, at: float) -> None:
    if previous and previous != version:
        if os.environ.get(MULTIPROCESS_ENV):
            # A worker's values live in its file, where a removed series would keep its last value: 0 there.
            CONFIG.labels(previous).set(0)
        else:
            CONFIG.remove(previous)
    CONFIG.labels(version).set(1)
    CONFIG_LOADED.set(at)


def render() -> tuple[bytes, str]:
    if os.environ.get(MULTIPROCESS_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def worker_exit(pid: int) -> None:
    """Drop a finished worker's live gauges (store up, config version)."""
    if os.environ.get(MULTIPROCESS_ENV):
        multiprocess.mark_process_dead(pid)
