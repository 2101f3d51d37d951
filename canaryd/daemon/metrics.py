"""canaryd's own Prometheus metrics (`canaryd_` prefix), on a private registry served at /metrics.

A private registry (not the global default) keeps tests that start several daemons in one process from
colliding, and keeps the exposition limited to what we define.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from canaryd.rollout.state import Phase, RolloutState


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rollouts = Gauge("canaryd_rollouts", "Services by rollout phase", ["phase"], registry=r)
        self.weight = Gauge("canaryd_canary_weight_percent", "Canary traffic percent canaryd wants, per service",
                            ["namespace", "service"], registry=r)
        self.analyses = Counter("canaryd_analyses_total", "Canary analyses by outcome",
                                ["namespace", "service", "outcome"], registry=r)
        self.transitions = Counter("canaryd_transitions_total", "Rollout phase transitions",
                                   ["namespace", "service", "phase"], registry=r)
        self.ticks = Histogram("canaryd_tick_duration_seconds", "Duration of one reconcile tick", registry=r,
                               buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.analysis_duration = Histogram("canaryd_analysis_duration_seconds",
                                           "Duration of the Prometheus queries of one analysis", registry=r,
                                           buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.tick_errors = Counter("canaryd_tick_errors_total", "Reconcile ticks that raised", ["namespace", "service"],
                                   registry=r)
        self.syncs = Counter("canaryd_git_syncs_total", "Config repo syncs by result", ["result"], registry=r)
        self.last_sync = Gauge("canaryd_git_last_sync_success_timestamp_seconds",
                               "Unix time of the last successful config repo sync", registry=r)
        self.config_errors = Gauge("canaryd_config_errors", "Invalid documents in the config repo at the last sync",
                                   registry=r)
        self.drift = Counter("canaryd_drift_total", "Live changes made outside canaryd, detected and corrected",
                             ["namespace", "service"], registry=r)
        self.services = Gauge("canaryd_desired_services", "Services declared in the config repo", registry=r)
        self.webhook_requests = Counter("canaryd_webhook_requests_total", "POST /hooks/git requests by result",
                                        ["provider", "result"], registry=r)
        self._phases: dict[str, Phase] = {}
        for p in Phase:
            self.rollouts.labels(str(p)).set(0)

    def forget_rollouts(self) -> None:
        """A replica that is no longer the leader stops deciding: its per-phase counts and wanted weights
        would go stale and, summed over replicas, count each rollout twice. Counters stay (they only grow)."""
        self._phases.clear()
        for p in Phase:
            self.rollouts.labels(str(p)).set(0)
        self.weight.clear()

    def observe_state(self, old: RolloutState, new: RolloutState) -> None:
        t = new.spec.target
        self._phases[t.key] = new.status.phase
        tally = Tally(self._phases.values())
        for p in Phase:
            self.rollouts.labels(str(p)).set(tally.get(p, 0))
        self.weight.labels(t.namespace, t.name).set(new.status.weight)
        if new.status.analyses_run > old.status.analyses_run and new.status.analyses:
            self.analyses.labels(t.namespace, t.name, new.status.analyses[-1].verdict.outcome).inc()
        if new.status.drift_count > old.status.drift_count:
            self.drift.labels(t.namespace, t.name).inc(new.status.drift_count - old.status.drift_count)
        if new.status.phase != old.status.phase or len(new.status.history) != len(old.status.history):
            self.transitions.labels(t.namespace, t.name, str(new.status.phase)).inc()


class NotificationCollector(Collector):
    """`canaryd_notifications_total{result}`: what happened to each notification (sent, failed after its
    retries, dropped from a full queue, suppressed by the rate limit). Read from the notifier's own
    counters at scrape time, so there is one count, not two to keep in step."""

    RESULTS = ("sent", "failed", "dropped", "suppressed")

    def __init__(self, stats: Callable[[], object]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("canaryd_notifications", "Notifications by result (per notifier target)",
                                     labels=["result"])
        now = self._stats()
        for result in self.RESULTS:
            family.add_metric([result], float(getattr(now, result)))
        yield family
