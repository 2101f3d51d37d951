"""The Kubernetes API retry policy (`canaryd.adapters.kube.call`), on errors made in-process: what is
retried, how long it waits, and where it stops. The same policy over real HTTP against the emulator is in
tests/contract/test_kube_retries.py."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from canaryd.adapters.kube import (
    DEFAULT_RETRY,
    Conflict,
    Invalid,
    KubeError,
    NotFound,
    NotLeader,
    RetryPolicy,
    call,
    error_from,
)

FAST = RetryPolicy(attempts=4, total_s=5.0, base_s=0.001, max_wait_s=0.004, max_retry_after_s=0.3)


def api_error(status: int, headers: dict[str, str] | None = None, body: dict[str, object] | None = None
              ) -> ApiException:
    exc = ApiException(status=status, reason="Reason")
    exc.headers = headers or {}
    exc.body = json.dumps(body or {"kind": "Status", "code": status, "reason": "Reason", "message": "m"})
    return exc


class Flaky:
    """Raises each error of `errors` in turn, then returns "ok"; counts the calls."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(status: int) -> None:
    fn = Flaky(api_error(status), api_error(status))
    assert call("read x", fn, FAST) == "ok"
    assert fn.calls == 3


@pytest.mark.parametrize("error", [
    urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")),
    urllib3.exceptions.ReadTimeoutError(None, "/x", "Read timed out."),  # type: ignore[arg-type]
    urllib3.exceptions.MaxRetryError(None, "/x", ConnectionRefusedError(111, "refused")),  # type: ignore[arg-type]
    ConnectionRefusedError(111, "Connection refused"),
])
def test_connection_failures_are_retried(error: BaseException) -> None:
    fn = Flaky(error)
    assert call("read x", fn, FAST) == "ok" and fn.calls == 2


@pytest.mark.parametrize(("status", "cls"), [(400, KubeError), (401, KubeError), (403, KubeError), (404, NotFound),
                                             (409, Conflict), (410, KubeError), (422, Invalid)])
def test_other_4xx_are_never_retried(status: int, cls: type[KubeError]) -> None:
    fn = Flaky(api_error(status))
    with pytest.raises(cls) as info:
        call("write x", fn, FAST)
    assert fn.calls == 1 and info.value.status == status and not info.value.retryable
    assert "attempts" not in str(info.value)


def test_not_leader_is_never_retried() -> None:
    fn = Flaky(NotLeader("not the leader any more"))
    with pytest.raises(NotLeader):
        call("write x", fn, FAST)
    assert fn.calls == 1


def test_attempts_are_bounded_and_the_last_error_says_how_many() -> None:
    fn = Flaky(*[api_error(503) for _ in range(10)])
    with pytest.raises(KubeError, match=r"HTTP 503 .*\(gave up after 4 attempts\)") as info:
        call("read x", fn, FAST)
    assert fn.calls == 4 and info.value.status == 503


def test_total_time_is_bounded_whatever_the_attempts() -> None:
    slow = RetryPolicy(attempts=100, total_s=0.5, base_s=0.1, max_wait_s=0.2)
    fn = Flaky(*[api_error(500) for _ in range(100)])
    started = time.monotonic()
    with pytest.raises(KubeError):
        call("read x", fn, slow)
    elapsed = time.monotonic() - started
    assert elapsed < 0.5 + 0.05, elapsed  # no attempt starts once its wait would end past total_s
    assert 2 <= fn.calls < 100


def test_retry_after_is_honoured_and_capped() -> None:
    policy = RetryPolicy(max_retry_after_s=7.0)
    assert policy.wait_s(1, error_from(api_error(429, {"Retry-After": "3"}), "x")) == 3.0
    assert policy.wait_s(1, error_from(api_error(429, {"Retry-After": "3600"}), "x")) == 7.0
    # kube-apiserver also says it in the Status; the header wins when both are there
    body = {"kind": "Status", "code": 429, "details": {"retryAfterSeconds": 2}}
    assert policy.wait_s(1, error_from(api_error(429, {}, body), "x")) == 2.0
    assert policy.wait_s(1, error_from(api_error(503, {"retry-after": "1"}, body), "x")) == 1.0
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    assert 3.5 <= policy.wait_s(1, error_from(api_error(429, {"Retry-After": when}), "x")) <= 5.0
    # garbage or a date in the past: no negative waits, and the backoff applies
    assert policy.wait_s(1, error_from(api_error(429, {"Retry-After": "soon"}), "x"), rng=lambda: 0.0) == 0.25
    assert error_from(api_error(404, {"Retry-After": "3"}), "x").retry_after is None  # only on retryable answers


def test_retry_after_is_waited_for() -> None:
    fn = Flaky(error_from(api_error(429, {"Retry-After": "0.2"}), "x"))
    started = time.monotonic()
    assert call("read x", fn, FAST) == "ok"
    assert 0.2 <= time.monotonic() - started < 0.5


def test_backoff_grows_with_equal_jitter_up_to_the_cap() -> None:
    p = DEFAULT_RETRY
    lows = [p.wait_s(n, None, rng=lambda: 0.0) for n in range(1, 8)]
    highs = [p.wait_s(n, None, rng=lambda: 1.0) for n in range(1, 8)]
    assert lows == [0.25, 0.5, 1.0, 2.0, 2.5, 2.5, 2.5]
    assert highs == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    # the worst case of the defaults: 5 attempts, 7.5 s of waiting at most, within total_s
    assert sum(highs[: p.attempts - 1]) <= p.total_s


def test_a_single_attempt_policy_does_not_retry() -> None:
    fn = Flaky(api_error(503))
    with pytest.raises(KubeError):
        call("read x", fn, RetryPolicy(attempts=1))
    assert fn.calls == 1
