"""Notifications end to end: the daemon posts Slack-format messages about a rollout to a local receiver."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from canaryd.rollout.state import Phase
from canaryd.sandbox.receiver import WebhookReceiver
from tests.e2e.helpers import FAST_POLICY, Env, isvc_yaml, policy_yaml, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


def test_slack_messages_for_start_steps_and_promotion(env: Env, receiver: WebhookReceiver) -> None:
    url_file = env.dir / "slack-url"
    secret_url = receiver.url("/services/T000/B000/s3cr3t-token")
    url_file.write_text(secret_url + "\n")
    settings = env.settings(notifications={"notifiers": [{"kind": "slack", "urlFile": str(url_file)}],
                                           "minInterval": "1s"})
    c1 = env.repo.commit({"services/loud.yaml": isvc_yaml("loud", env.ns, "gs://e2e/v1"),
                          "policies/loud.yaml": policy_yaml("loud", env.ns, FAST_POLICY)}, "v1")
    env.start_daemon(settings)
    env.wait_phase("loud", {Phase.SUCCEEDED}, c1, timeout=30)
    wait_until(lambda: (s := env.state("loud")) and s.status.stable_revision, 20, "v1 Ready")
    env.load(["loud"], rate=25)
    c2 = env.repo.commit({"services/loud.yaml": isvc_yaml("loud", env.ns, "gs://e2e/v2")}, "v2")
    env.wait_phase("loud", {Phase.SUCCEEDED}, c2, timeout=60)

    def kinds() -> list[str]:
        return [str(r.body["text"]).split("]", 1)[1].split(":", 1)[0].strip() for r in receiver.delivered
                if isinstance(r.body, dict) and "text" in r.body]

    wait_until(lambda: "promoted" in kinds(), 15, "a promoted message")
    assert kinds()[0] == "started" and "step" in kinds()
    promoted = next(r.body for r in receiver.delivered if "promoted:" in str(r.body["text"]))
    assert f"[{env.ns}/loud]" in promoted["text"]
    att = promoted["attachments"][0]
    assert att["color"].startswith("#") and {"title", "value", "short"} <= set(att["fields"][0])
    assert any(f["title"] == "commit" and f["value"] == c2[:8] for f in att["fields"])
    assert "s3cr3t-token" not in (env.dir / "canaryd.log").read_text()
    # delivery is counted on /metrics (issue 15), and the URL is in none of it
    daemon = env.daemon
    assert daemon is not None
    delivered = len(receiver.delivered)

    def sent() -> float:
        text = httpx.get(f"{daemon.url}/metrics", timeout=5).text
        assert "s3cr3t-token" not in text
        line = next(x for x in text.splitlines() if x.startswith('canaryd_notifications_total{result="sent"}'))
        return float(line.split()[-1])

    wait_until(lambda: sent() >= delivered, 10, f"{delivered} notifications counted as sent")
    assert 'canaryd_notifications_total{result="failed"} 0.0' in httpx.get(f"{daemon.url}/metrics", timeout=5).text
