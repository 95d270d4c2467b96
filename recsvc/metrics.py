"""Prometheus metrics of the service: one registry per process, names fixed so dashboards can rely on them.

Counters here are incremented by the decision code; request latency histograms are observed by the metrics
middleware; gauges that describe state (model versions, decision-log backlog) are refreshed when /metrics is scraped.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

# Answers that did not come from the full personalized path, by surface and why:
# reason = no_model | degraded | cold_start | no_candidates | live_scoring_pending
FALLBACKS = Counter("recsvc_fallbacks_total", "Answers served by a fallback path", ["surface", "reason"],
                    registry=REGISTRY)
# Answers served while the feature store was down or slow (marked degraded: true).
DEGRADED = Counter("recsvc_degraded_total", "Answers served in degraded mode (feature store unavailable)",
                   ["surface"], registry=REGISTRY)
MODEL_VERSION = Gauge("recsvc_model_version", "Version of each family's champion being served (0: none)",
                      ["family"], registry=REGISTRY)
MODEL_LOAD_ERRORS = Counter("recsvc_model_load_errors_total", "Champion checks or loads that failed (last good kept)",
                            ["family"], registry=REGISTRY)
DECISIONS_LOGGED = Counter("recsvc_decisions_logged_total", "Decision records written to the offline log",
                           registry=REGISTRY)
DECISIONS_DROPPED = Counter("recsvc_decisions_dropped_total", "Decision records dropped (store down, buffer full)",
                            registry=REGISTRY)
REQUEST_LATENCY = Histogram(
    "recsvc_request_seconds", "Request latency by route template, method and status class", ["route", "method", "status"],
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
