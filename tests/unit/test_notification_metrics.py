"""`canaryd_notifications_total{result}` (issue 15): the notifier's delivery counters on /metrics."""

from __future__ import annotations

from prometheus_client import generate_latest

from canaryd.adapters.notify import NotifyStats
from canaryd.daemon.metrics import Metrics, NotificationCollector


def test_notification_results_are_read_from_the_notifier_at_scrape_time() -> None:
    metrics = Metrics()
    stats = NotifyStats()
    metrics.registry.register(NotificationCollector(lambda: stats))
    text = generate_latest(metrics.registry).decode()
    assert "# TYPE canaryd_notifications_total counter" in text
    assert 'canaryd_notifications_total{result="sent"} 0.0' in text
    stats.sent, stats.failed, stats.dropped, stats.suppressed = 7, 1, 2, 3
    text = generate_latest(metrics.registry).decode()
    for result, n in (("sent", 7), ("failed", 1), ("dropped", 2), ("suppressed", 3)):
        assert f'canaryd_notifications_total{{result="{result}"}} {n}.0' in text
