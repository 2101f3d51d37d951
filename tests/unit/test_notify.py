"""Notification payload shapes (golden), the rate limiter's rules, URL redaction and URL files."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from canaryd.adapters.notify import (
    KINDS,
    Message,
    RateLimiter,
    UrlFile,
    UrlFileError,
    generic_payload,
    redact_url,
    scrub,
    slack_payload,
    teams_payload,
)

WHEN = datetime(2024, 5, 1, 12, 30, 0, tzinfo=UTC)
FIELDS = {"weight": "25%", "canary": "iris-predictor-00002", "commit": "abc1234"}
MSG = Message("models/iris", "rolled-back", "error rate 0.2 > 0.01 <at step 2>", FIELDS, WHEN, suppressed=3)


def test_slack_payload_golden() -> None:
    headline = "[models/iris] rolled-back: error rate 0.2 &gt; 0.01 &lt;at step 2&gt; (3 similar suppressed)"
    assert slack_payload(MSG) == {
        "text": headline,
        "attachments": [{
            "color": "#E01E5A",
            "fallback": headline,
            "fields": [
                {"title": "weight", "value": "25%", "short": True},
                {"title": "canary", "value": "iris-predictor-00002", "short": True},
                {"title": "commit", "value": "abc1234", "short": True},
            ],
            "footer": "canaryd",
            "ts": 1714566600,
        }],
    }


def test_generic_payload_golden() -> None:
    assert generic_payload(MSG) == {
        "service": "models/iris",
        "kind": "rolled-back",
        "message": "error rate 0.2 > 0.01 <at step 2> (3 similar suppressed)",
        "fields": FIELDS,
        "time": "2024-05-01T12:30:00Z",
    }


def test_teams_payload_golden() -> None:
    msg = Message("models/iris", "promoted", "iris-predictor-00002 serves 100%", {"commit": "abc1234"}, WHEN)
    assert teams_payload(msg) == {
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": "models/iris promoted",
        "themeColor": "2EB886",
        "title": "models/iris: promoted",
        "sections": [{
            "text": "iris-predictor-00002 serves 100%",
            "markdown": False,
            "facts": [{"name": "commit", "value": "abc1234"}],
        }],
    }


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_its_own_colour_entry(kind: str) -> None:
    msg = Message("ns/a", kind, "m", {}, WHEN)
    assert slack_payload(msg)["attachments"][0]["color"] != "#A0A0A0"
    assert teams_payload(msg)["themeColor"] != "A0A0A0"


def test_unknown_kind_gets_the_neutral_colour() -> None:
    assert slack_payload(Message("ns/a", "other", "m", {}, WHEN))["attachments"][0]["color"] == "#A0A0A0"


# -- rate limiting ------------------------------------------------------------------------------------


def test_one_message_per_interval_per_service_and_kind() -> None:
    rl = RateLimiter(min_interval=60)
    assert rl.admit("ns/a", "step", "traffic 10%", 0) == 0
    assert rl.admit("ns/a", "step", "traffic 20%", 30) is None  # too soon
    assert rl.admit("ns/b", "step", "traffic 20%", 30) == 0  # another service
    assert rl.admit("ns/a", "waiting", "gate", 30) == 0  # another kind
    assert rl.admit("ns/a", "step", "traffic 30%", 59.9) is None
    assert rl.admit("ns/a", "step", "traffic 40%", 60) == 2  # due, and reports the two held back


def test_transitions_with_a_new_text_always_go_out() -> None:
    rl = RateLimiter(min_interval=60)
    for kind in ("promoted", "rolled-back", "aborted", "error"):
        assert rl.admit("ns/a", kind, "first", 0) == 0
        assert rl.admit("ns/a", kind, "second", 1) == 0
        assert rl.admit("ns/a", kind, "second", 2) is None  # the same text again is a repeat
        assert rl.admit("ns/a", kind, "first", 3) is None  # alternating texts are repeats too
    # a non-transition kind with a new text still waits for the interval
    assert rl.admit("ns/a", "started", "v1", 0) == 0
    assert rl.admit("ns/a", "started", "v2", 1) is None


def test_identical_messages_are_suppressed_past_the_interval_until_the_repeat_interval() -> None:
    rl = RateLimiter(min_interval=60, repeat_interval=600)
    assert rl.admit("ns/a", "error", "prometheus unreachable", 0) == 0
    for t in range(10, 600, 10):  # a stuck rollout repeating itself every tick
        assert rl.admit("ns/a", "error", "prometheus unreachable", t) is None
    assert rl.admit("ns/a", "error", "prometheus unreachable", 600) == 59  # a reminder, with the count
    assert rl.admit("ns/a", "error", "api server unreachable", 601) == 0  # a new error at once


def test_repeat_interval_is_never_shorter_than_the_min_interval() -> None:
    assert RateLimiter(min_interval=120, repeat_interval=10).repeat_interval == 120
    assert RateLimiter(min_interval=60).repeat_interval == 3600


# -- secrets ---------------------------------------------------------------------------------------------

SECRET = "https://hooks.slack.com/services/T0001/B0002/SecretTokenXyz?x=1"


def test_redact_keeps_only_scheme_and_host() -> None:
    assert redact_url(SECRET) == "https://hooks.slack.com"
    assert redact_url("http://user:pw@127.0.0.1:8099/a/b") == "http://127.0.0.1:8099"
    assert "SecretTokenXyz" not in redact_url(SECRET)
    assert redact_url("hooks.slack.com/services/SecretTokenXyz") == "<invalid URL>"
    assert redact_url("") == "<invalid URL>"


def test_scrub_removes_url_and_path_from_messages() -> None:
    text = f"Client error for url '{SECRET}' (path /services/T0001/B0002/SecretTokenXyz)"
    cleaned = scrub(text, SECRET)
    assert "SecretTokenXyz" not in cleaned
    assert "<redacted>" in cleaned


def test_url_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "url"
    path.write_text("https://hooks.example.com/one\n")
    f = UrlFile(path)
    assert f.read() == "https://hooks.example.com/one"
    path.write_text("https://hooks.example.com/second")  # another size: a changed file, whatever the mtime
    assert f.read() == "https://hooks.example.com/second"
    path.write_text("https://hooks.example.com/third!")  # the same size: told apart by its mtime
    os.utime(path, ns=(2, 2))
    assert f.read() == "https://hooks.example.com/third!"


def test_url_file_errors_never_quote_the_contents(tmp_path: Path) -> None:
    path = tmp_path / "url"
    path.write_text("ftp://hooks.example.com/SecretTokenXyz")
    with pytest.raises(UrlFileError) as bad:
        UrlFile(path).read()
    assert "SecretTokenXyz" not in str(bad.value)
    assert str(path) in str(bad.value)
    with pytest.raises(UrlFileError, match="cannot read URL file"):
        UrlFile(tmp_path / "missing").read()
    path.write_text("  \n")
    with pytest.raises(UrlFileError, match="does not hold"):
        UrlFile(path).read()
