"""Operator requests from the CLI: pause, resume, promote, abort.

They are written into the ModelRollout's `spec.control` (a merge patch carrying the resourceVersion that
was read), never acted out by the CLI itself: the daemon's next tick turns them into traffic changes, so
they survive restarts and leader changes, and a Git sync cannot undo them.

The daemon saves the same object at every tick that changes something, so a request can meet a save
between its read and its write (409). That is not the person's problem: the request is read, checked and
written again, a few times, exactly as a person running the command again would do. The precondition
stays, so what was checked (a canary in flight, which spec) is what the write is based on.
"""

from __future__ import annotations

from typing import Any, Literal

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random

from canaryd.adapters.kube import REQUEST_TIMEOUT
from canaryd.adapters.statestore import StateStore
from canaryd.rollout.state import ACTIVE, GROUP, PLURAL, VERSION, Phase

Request = Literal["pause", "resume", "promote", "abort"]


class OperatorError(RuntimeError):
    """The request cannot apply (no such rollout, nothing in flight): the message says why."""


#: How often a request that collided with the daemon's own save is read, checked and written again.
COLLISION_ATTEMPTS = 6


class _Collision(Exception):
    """The ModelRollout changed between our read and our write (409): read and decide again."""


def request(api: client.ApiClient, namespace: str, name: str, what: Request) -> str:
    """Record `what` for the rollout of `namespace/name`; the note to show the person."""
    try:
        for attempt in Retrying(stop=stop_after_attempt(COLLISION_ATTEMPTS), wait=wait_random(0.05, 0.4),
                                retry=retry_if_exception_type(_Collision), reraise=True):
            with attempt:
                return _request_once(api, namespace, name, what)
    except _Collision:
        raise OperatorError(f"the ModelRollout {namespace}/{name} kept changing while writing the request"
                            f" ({COLLISION_ATTEMPTS} attempts); run the command again") from None
    raise AssertionError("unreachable: Retrying either returns or raises")


def _request_once(api: client.ApiClient, namespace: str, name: str, what: Request) -> str:
    state = StateStore(api).load(namespace, name)
    if state is None:
        raise OperatorError(f"no ModelRollout {namespace}/{name}: canaryd has not rolled this service out")
    st = state.status
    control: dict[str, Any]
    if what == "pause":
        control = {"paused": True}
        note = (f"pause recorded; {namespace}/{name} is {st.phase} at {st.weight}%: traffic is held there and no"
                " new rollout starts until `canaryd resume`")
    elif what == "resume":
        control = {"paused": False}
        note = f"resume recorded for {namespace}/{name}"
    else:
        if st.phase not in ACTIVE or st.phase in (Phase.PROMOTING, Phase.ROLLING_BACK):
            raise OperatorError(f"{namespace}/{name} is {st.phase}: there is no canary in flight to {what}")
        if what == "promote" and st.canary_revision is None:
            raise OperatorError(f"{namespace}/{name}: the canary revision is not Ready yet; nothing to promote")
        # The request names this rollout attempt: it is spent when the attempt ends, so it can never
        # promote or abort a later canary (even one of the same spec).
        control = {what: state.attempt_id}
        note = (f"{what} recorded for {namespace}/{name} ({state.attempt_id}: spec {state.spec.spec_hash}, commit "
                f"{(state.spec.commit or '?')[:8]}); canaryd acts on its next check")
    body = {"metadata": {"resourceVersion": state.resource_version}, "spec": {"control": control}}
    try:
        client.CustomObjectsApi(api).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, body, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as exc:
        if exc.status == 409:
            raise _Collision() from None
        raise OperatorError(f"could not record the request: HTTP {exc.status} {exc.reason}") from None
    return note
