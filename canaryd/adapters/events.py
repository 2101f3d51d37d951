"""Kubernetes Events on the InferenceService: `kubectl describe isvc` tells the rollout's story.

An Event is best-effort: a failure to record one is logged and swallowed, never allowed to stop a
rollout or a rollback. Events carry both the legacy fields (`source`, `firstTimestamp`,
`lastTimestamp`, `count`) that `kubectl describe` shows and the newer ones (`eventTime`,
`reportingComponent`, `reportingInstance`, `action`); the API server requires the latter three whenever
`eventTime` is set.

A failed create is retried once, quickly (`kube.EVENT_RETRY`): a tick must not stall on an Event. A repeat
after an attempt whose answer was lost may record the Event twice (each create gets a generated name);
a duplicate line in `kubectl describe` is the price of not losing it to one 503.
"""

from __future__ import annotations

import logging
import re
import socket
from datetime import UTC, datetime
from typing import Any, Literal, cast

from kubernetes import client

from canaryd.adapters.kube import EVENT_RETRY, REQUEST_TIMEOUT, RetryPolicy, call
from canaryd.rollout.state import TargetRef

log = logging.getLogger(__name__)

MAX_MESSAGE = 1024
MAX_REASON = 128
_MAX_INSTANCE = 128
_WORD = re.compile(r"[A-Za-z0-9]+")


def camel_case(reason: str) -> str:
    """Event reasons are CamelCase by convention ("analysis failed" -> "AnalysisFailed")."""
    words = _WORD.findall(reason)
    joined = "".join(w[:1].upper() + w[1:] for w in words)
    return (joined or "Unknown")[:MAX_REASON]


def truncate(message: str, limit: int = MAX_MESSAGE) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


class EventRecorder:
    #: How a create is retried (a class default; tests set another one on an instance).
    retry: RetryPolicy = EVENT_RETRY

    def __init__(self, api_client: client.ApiClient, component: str = "canaryd",
                 instance: str | None = None,
                 timeout: tuple[float, float] | float = REQUEST_TIMEOUT) -> None:
        self._api = client.CoreV1Api(api_client)
        self.component = component
        self.instance = (instance or f"{component}-{socket.gethostname()}")[:_MAX_INSTANCE]
        self._timeout = timeout

    def record(self, ref: TargetRef, reason: str, message: str,
               type: Literal["Normal", "Warning"] = "Normal", uid: str | None = None) -> bool:
        """Create the Event; False (and a log line) if the API server did not take it."""
        body = self.event_body(ref, reason, message, type, uid, datetime.now(UTC))
        try:
            # A plain dict keeps the exact wire format (timestamps) instead of the model's rendering.
            call(f"record Event {body['reason']} on {ref.kind} {ref.key}", lambda: self._api.create_namespaced_event(
                ref.namespace, cast(Any, body), _request_timeout=self._timeout), self.retry)
        except Exception as exc:  # an Event must never break the caller
            log.warning("event not recorded: %s", exc)
            return False
        return True

    def event_body(self, ref: TargetRef, reason: str, message: str, type: str, uid: str | None,
                   now: datetime) -> dict[str, Any]:
        involved: dict[str, Any] = {
            "apiVersion": ref.api_version, "kind": ref.kind, "name": ref.name, "namespace": ref.namespace,
        }
        if uid:
            involved["uid"] = uid
        reason = camel_case(reason)
        stamp = now.astimezone(UTC)
        return {
            "apiVersion": "v1",
            "kind": "Event",
            # The server appends a unique suffix: two Events in the same instant cannot collide.
            "metadata": {"generateName": f"{ref.name}-", "namespace": ref.namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": truncate(message),
            "type": type,
            "count": 1,
            "firstTimestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "eventTime": stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": self.instance,
            "action": reason,
        }
