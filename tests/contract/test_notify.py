"""The Notifier against a local webhook receiver over real HTTP: shapes, retries, failures, secrecy.

Every test captures all log records (DEBUG and up, httpx's request log included) and checks at teardown
that the secret part of the webhook URL appears in none of them.
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from canaryd.adapters.notify import Notifier
from canaryd.config import NotificationSettings
from canaryd.sandbox.receiver import WebhookReceiver

TOKEN = secrets.token_hex(12)
SECRET_PATH = f"/services/T0001/B0002/{TOKEN}"
FIELDS = {"weight": "100%", "canary": "iris-predictor-00002", "commit": "abc1234"}

MakeNotifier = Callable[..., Notifier]


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    for when in ("setup", "call", "teardown"):
        for record in caplog.get_records(when):
            text = f"{record.getMessage()} {record.exc_text or ''}"
            assert TOKEN not in text, f"secret URL leaked in log: {record.name}: {text}"
            assert "/services/T0001" not in text


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


@pytest.fixture
def make_notifier(tmp_path: Path) -> Iterator[MakeNotifier]:
    made: list[Notifier] = []

    def make(*targets: tuple[str, str, list[str]], min_interval: str = "1m", **kwargs: Any) -> Notifier:
        notifiers = []
        for i, (kind, url, events) in enumerate(targets):
            url_file = tmp_path / f"url-{i}"
            url_file.write_text(url + "\n")
            notifiers.append({"kind": kind, "urlFile": str(url_file), "events": events})
        settings = NotificationSettings.model_validate(
            {"notifiers": notifiers, "minInterval": min_interval, "timeout": "5s"})
        kwargs.setdefault("backoff", 0.01)
        notifier = Notifier(settings, **kwargs)
        made.append(notifier)
        return notifier

    yield make
    for n in made:
        n.close(timeout=5)


def error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and r.name == "canaryd.adapters.notify"]


def test_slack_teams_and_generic_messages_arrive_in_their_formats(
        receiver: WebhookReceiver, make_notifier: MakeNotifier, caplog: pytest.LogCaptureFixture) -> None:
    notifier = make_notifier(("slack", receiver.url(SECRET_PATH), []),
                             ("teams", receiver.url("/teams"), []),
                             ("generic", receiver.url("/generic"), []))
    notifier.send("models/iris", "promoted", "iris-predictor-00002 serves 100%", FIELDS)
    assert notifier.close(timeout=10)

    by_path = {r.path: r for r in receiver.requests}
    assert set(by_path) == {SECRET_PATH, "/teams", "/generic"}
    assert all(r.ok and r.headers["content-type"] == "application/json" for r in by_path.values())

    slack = by_path[SECRET_PATH].body
    assert slack["text"] == "[models/iris] promoted: iris-predictor-00002 serves 100%"
    (attachment,) = slack["attachments"]
    assert attachment["color"] == "#2EB886"
    assert {f["title"]: f["value"] for f in attachment["fields"]} == FIELDS

    teams = by_path["/teams"].body
    assert teams["@type"] == "MessageCard" and teams["themeColor"] == "2EB886"
    assert teams["sections"][0]["facts"] == [{"name": k, "value": v} for k, v in FIELDS.items()]

    generic = by_path["/generic"].body
    assert {k: generic[k] for k in ("service", "kind", "message", "fields")} == {
        "service": "models/iris", "kind": "promoted", "message": "iris-predictor-00002 serves 100%",
        "fields": FIELDS,
    }
    assert generic["time"].endswith("Z")
    assert notifier.stats.sent == 3 and notifier.stats.failed == 0
    # httpx logged the request, with the secret URL cut down to its host (checked by the autouse fixture)
    host = receiver.url("/").rstrip("/")
    assert any("HTTP Request" in r.getMessage() and host in r.getMessage() for r in caplog.records)


def test_server_errors_are_retried_and_delivered_once(
        receiver: WebhookReceiver, make_notifier: MakeNotifier, caplog: pytest.LogCaptureFixture) -> None:
    receiver.respond_with(500, 503)
    notifier = make_notifier(("slack", receiver.url(SECRET_PATH), []))
    notifier.send("models/iris", "rolled-back", "error rate 0.2 > 0.01", FIELDS)
    assert notifier.close(timeout=10)

    assert [r.status for r in receiver.requests] == [500, 503, 200]
    assert len(receiver.delivered) == 1
    assert notifier.stats.sent == 1 and notifier.stats.failed == 0
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2 and "HTTP 500" in retries[0]
    assert not error_lines(caplog)


def test_client_errors_are_not_retried(
        receiver: WebhookReceiver, make_notifier: MakeNotifier, caplog: pytest.LogCaptureFixture) -> None:
    receiver.respond_with(400)
    notifier = make_notifier(("generic", receiver.url(SECRET_PATH), []))
    notifier.send("models/iris", "error", "prometheus unreachable", {})
    assert notifier.close(timeout=10)

    assert [r.status for r in receiver.requests] == [400]
    assert notifier.stats.failed == 1 and notifier.stats.sent == 0
    (line,) = error_lines(caplog)
    assert "HTTP 400" in line and receiver.url("/").rstrip("/") in line


def test_receiver_down_logs_an_error_without_the_url(
        make_notifier: MakeNotifier, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    notifier = make_notifier(("slack", f"http://127.0.0.1:{port}{SECRET_PATH}", []), attempts=2)
    notifier.send("models/iris", "rolled-back", "error rate 0.2 > 0.01", FIELDS)  # must not raise
    assert notifier.close(timeout=10)

    assert notifier.stats.failed == 1
    (line,) = error_lines(caplog)
    assert f"http://127.0.0.1:{port}" in line and "ConnectError" in line


def test_unreadable_url_file_is_an_error_not_an_exception(
        receiver: WebhookReceiver, make_notifier: MakeNotifier, caplog: pytest.LogCaptureFixture,
        tmp_path: Path) -> None:
    notifier = make_notifier(("slack", receiver.url(SECRET_PATH), []))
    (tmp_path / "url-0").unlink()
    notifier.send("models/iris", "error", "boom", {})
    assert notifier.close(timeout=10)
    assert notifier.stats.failed == 1 and receiver.requests == []
    (line,) = error_lines(caplog)
    assert "cannot read URL file" in line


def test_rate_limit_suppresses_and_counts_but_lets_transitions_through(
        receiver: WebhookReceiver, make_notifier: MakeNotifier) -> None:
    now = [0.0]
    notifier = make_notifier(("generic", receiver.url("/g"), []), min_interval="1m", clock=lambda: now[0])
    notifier.send("models/iris", "step", "traffic 10%", {})
    now[0] = 5
    notifier.send("models/iris", "step", "traffic 20%", {})  # held back
    notifier.send("models/iris", "promoted", "serves 100%", {})  # a transition: out at once
    notifier.send("models/iris", "promoted", "serves 100%", {})  # the same again: a repeat
    now[0] = 61
    notifier.send("models/iris", "step", "traffic 10%", {})  # due, but the same text as before
    notifier.send("models/iris", "step", "traffic 30%", {})
    assert notifier.close(timeout=10)

    got = [(r.body["kind"], r.body["message"]) for r in receiver.delivered]
    assert got == [("step", "traffic 10%"), ("promoted", "serves 100%"),
                   ("step", "traffic 30% (2 similar suppressed)")]
    assert notifier.stats.suppressed == 3


def test_events_filter_per_notifier(receiver: WebhookReceiver, make_notifier: MakeNotifier) -> None:
    notifier = make_notifier(("slack", receiver.url("/slack"), ["promoted", "rolled-back"]),
                             ("generic", receiver.url("/all"), []))
    notifier.send("models/iris", "step", "traffic 10%", {})
    notifier.send("models/iris", "promoted", "serves 100%", {})
    assert notifier.close(timeout=10)
    assert sorted((r.path, r.body.get("kind", "slack")) for r in receiver.delivered) == [
        ("/all", "promoted"), ("/all", "step"), ("/slack", "slack")]


def test_a_rotated_url_file_is_picked_up(
        receiver: WebhookReceiver, make_notifier: MakeNotifier, tmp_path: Path) -> None:
    notifier = make_notifier(("generic", receiver.url("/old"), []))
    notifier.send("models/iris", "started", "rolling out abc1234", {})
    receiver.wait_for(1)
    (tmp_path / "url-0").write_text(receiver.url("/rotated") + "\n")
    notifier.send("models/iris", "promoted", "serves 100%", {})
    assert notifier.close(timeout=10)
    assert [r.path for r in receiver.delivered] == ["/old", "/rotated"]


def test_a_full_queue_drops_the_oldest(receiver: WebhookReceiver, make_notifier: MakeNotifier) -> None:
    notifier = make_notifier(("generic", receiver.url("/g"), []), queue_size=2)
    receiver.hold()
    notifier.send("models/a", "started", "a", {})
    receiver.wait_in_flight(1)  # the worker is busy with "a": the next ones wait in the queue
    for name in "bcd":
        notifier.send(f"models/{name}", "started", name, {})
    assert notifier.stats.dropped == 1
    receiver.release()
    assert notifier.close(timeout=10)
    assert [r.body["service"] for r in receiver.delivered] == ["models/a", "models/c", "models/d"]


def test_close_gives_up_after_its_timeout(receiver: WebhookReceiver, make_notifier: MakeNotifier) -> None:
    notifier = make_notifier(("generic", receiver.url("/g"), []))
    receiver.hold()
    notifier.send("models/a", "started", "a", {})
    receiver.wait_in_flight(1)
    notifier.send("models/b", "started", "b", {})
    notifier.send("models/c", "started", "c", {})
    assert not notifier.close(timeout=0.2)
    assert notifier.stats.dropped == 2
    notifier.send("models/d", "started", "d", {})  # after close: dropped, not raised
    assert notifier.stats.dropped == 3
    receiver.release()
    receiver.wait_for(1)
