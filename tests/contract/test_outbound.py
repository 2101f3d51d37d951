"""Issue 13, items 3 and 4: every outbound call has a total deadline, a capped answer, and (gates) address rules.

Against real sockets on 127.0.0.1 that misbehave on purpose (tests/badservers.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from canaryd.adapters.hooks import WebhookCaller
from canaryd.adapters.outbound import (
    DeadlineExceeded,
    OutboundMetrics,
    OutboundRefused,
    OutboundRules,
    ResponseTooLarge,
    admit,
    excerpt,
    request,
)
from canaryd.adapters.prometheus import PrometheusSource
from canaryd.rollout.model import GateCall
from tests.badservers import BadServer, answer, blackhole, huge, trickle_body, trickle_headers
from tests.polling import wait_for

LOOPBACK_OK = OutboundRules(allow_loopback=True)


def _run(coro: Any) -> Any:
    async def go() -> Any:
        async with httpx.AsyncClient(trust_env=False) as client:
            return await coro(client)

    return asyncio.run(go())


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[BadServer]:
    with BadServer(request.param) as s:
        yield s


# -- address rules -----------------------------------------------------------------------------------

@pytest.mark.parametrize("url, why", [
    ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "link-local"),
    ("http://[fe80::1]/x", "link-local"),
    ("http://127.0.0.1:8080/hooks", "loopback"),
    ("http://127.9.9.9/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://localhost/", "loopback"),
    ("http://0.0.0.0/", "unspecified"),
    ("https://kubernetes.default.svc/api/v1/secrets", "Kubernetes API"),
    ("https://kubernetes.default.svc.cluster.local/api", "Kubernetes API"),
])
def test_default_rules_refuse_metadata_loopback_and_the_api(url: str, why: str) -> None:
    rules = OutboundRules(api_host=None)
    with pytest.raises(OutboundRefused) as info:  # the API by its name, whether it resolves here or not
        asyncio.run(admit(url, rules))
    assert why in str(info.value) and "outbound.allow" in str(info.value)


def test_the_api_service_address_is_refused_and_admins_can_allow_things() -> None:
    rules = OutboundRules(api_host="10.96.0.1")
    assert rules.refusal("10.96.0.1", "10.96.0.1") == "the in-cluster Kubernetes API"
    assert rules.refusal("smoke.ml-tools", "10.12.0.7") is None  # an ordinary in-cluster service
    assert OutboundRules(allow_loopback=True).refusal("127.0.0.1", "127.0.0.1") is None
    assert OutboundRules(allow_link_local=True).refusal("169.254.1.1", "169.254.1.1") is None
    assert OutboundRules(allow_hosts=("169.254.10.0/24",)).refusal("x", "169.254.10.9") is None
    assert OutboundRules(allow_hosts=("169.254.10.0/24",)).refusal("x", "169.254.11.9") is not None
    assert OutboundRules(allow_hosts=("Kubernetes.Default.Svc",)).refusal("kubernetes.default.svc", "10.0.0.1") is None


@pytest.mark.parametrize("server", [answer(200, b"ok")], indirect=True)
def test_a_refused_gate_is_never_connected_to(server: BadServer) -> None:
    caller = WebhookCaller()  # default rules: loopback refused
    try:
        result = caller.call(GateCall("g", "pre-rollout", server.url(), 5.0, 2, {}))
    finally:
        caller.close()
    assert not result.ok and result.status is None and "loopback" in (result.error or "")
    assert server.requests == []


# -- total deadline ----------------------------------------------------------------------------------

@pytest.mark.parametrize("server", [trickle_body, trickle_headers, blackhole], indirect=True)
def test_a_trickling_or_silent_server_ends_at_the_total_deadline(server: BadServer) -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        _run(lambda c: request(c, "POST", server.url(), json={}, deadline_s=1.0, max_bytes=1 << 20,
                               rules=LOOPBACK_OK))
    took = time.monotonic() - started
    assert 0.9 <= took < 3.0, took  # ~1 s; a loaded machine may add a little, never another timeout's worth


# -- capped answers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("server", [huge(400 << 20)], indirect=True)
def test_a_400mb_answer_stops_at_the_cap_with_bounded_memory(server: BadServer) -> None:
    metrics = OutboundMetrics()
    tracemalloc.start()
    try:
        with pytest.raises(ResponseTooLarge) as info:
            _run(lambda c: request(c, "POST", server.url(), json={}, deadline_s=30, max_bytes=1 << 20,
                                   rules=LOOPBACK_OK))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    metrics.count("gate", info.value)
    assert "larger than 1048576 bytes" in str(info.value)
    assert peak < 16 << 20, peak
    assert metrics.too_large.labels("gate")._value.get() == 1


# -- gates: never inside the tick; only a status reaches the result --------------------------------

@pytest.mark.parametrize("server", [blackhole], indirect=True)
def test_poll_never_waits_for_a_gate_and_its_answer_comes_later(server: BadServer) -> None:
    caller = WebhookCaller(LOOPBACK_OK)
    answered: list[str] = []
    caller.on_answer.append(answered.append)
    call = GateCall("slow", "rollout", server.url(), 1.0, 0, {"name": "a", "namespace": "ns"})
    try:
        started = time.monotonic()
        first = caller.poll("ns/a", [call])
        assert time.monotonic() - started < 0.5
        assert [r.pending for r in first] == [True]
        assert caller.poll("ns/a", [call])[0].pending  # still running: not started twice
        wait_for("the gate's answer", lambda: answered)
        final = caller.poll("ns/a", [call])
        assert not final[0].pending and not final[0].ok and "timed out after 1s" in (final[0].error or "")
        assert len(server.requests) == 1
    finally:
        caller.close()


SECRET = (b'{"Code":"Success","AccessKeyId":"ASIAEXAMPLEKEY12345678",'
          b'"SecretAccessKey":"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY","Token":"IQoJb3JpZ2luX2VjEXAMPLETOKENVALUE"}')


@pytest.mark.parametrize("server", [answer(500, SECRET, "application/json")], indirect=True)
def test_a_gate_answer_body_stays_out_of_the_result_and_is_redacted_in_the_log(
        server: BadServer, caplog: pytest.LogCaptureFixture) -> None:
    caller = WebhookCaller(LOOPBACK_OK)
    try:
        with caplog.at_level(logging.INFO, logger="canaryd.hooks"):
            result = caller.call(GateCall("meta", "pre-rollout", server.url(), 5.0, 0, {}))
    finally:
        caller.close()
    assert not result.ok and result.status == 500 and result.error is None
    assert result.summary == "pre-rollout webhook meta: failed: HTTP 500"
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "500" in logged and "Code" in logged  # a short excerpt for the operator ...
    for secret in ("ASIAEXAMPLEKEY12345678", "wJalrXUtnFEMI", "IQoJb3JpZ2luX2VjEXAMPLETOKENVALUE"):
        assert secret not in logged  # ... without the credentials


def test_excerpt_is_short_printable_and_redacted() -> None:
    text = excerpt(b"error: password=hunter2 \x00\x1b[31m token: abcdefabcdefabcdefabcdefabcdef " + b"z" * 500)
    assert "hunter2" not in text and "abcdefabcdef" not in text and "\x1b" not in text
    assert len(text) <= 121
    # An echoed Authorization header, however short its credentials (a careless proxy's 401 page).
    assert excerpt("unauthorized: got Basic cDp3, Bearer x1") == "unauthorized: *** Basic ***, Bearer ***"


# -- Prometheus: capped and deadline-bound too -------------------------------------------------------

@pytest.mark.parametrize("server", [huge(100 << 20)], indirect=True)
def test_a_100mb_prometheus_answer_is_cut_at_the_cap(server: BadServer) -> None:
    metrics = OutboundMetrics()
    src = PrometheusSource(f"http://127.0.0.1:{server.port}", timeout_s=10, max_response_bytes=4 << 20,
                           metrics=metrics)
    tracemalloc.start()
    try:
        value, error = src.query("vector(1)")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        src.close()
    assert value is None and error is not None and "larger than 4194304 bytes" in error
    assert peak < 32 << 20, peak
    assert metrics.too_large.labels("prometheus")._value.get() == 1


@pytest.mark.parametrize("server", [trickle_body], indirect=True)
def test_a_trickling_prometheus_ends_near_its_timeout(server: BadServer) -> None:
    src = PrometheusSource(f"http://127.0.0.1:{server.port}", timeout_s=1)
    started = time.monotonic()
    try:
        value, error = src.query("vector(1)")
    finally:
        src.close()
    took = time.monotonic() - started
    assert value is None and error is not None and "not complete within 1s" in error
    assert took < 3.5, took  # the deadline plus at most one read timeout
