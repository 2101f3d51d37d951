"""canaryd's rollouts from Python: what `canaryd status/history/pause/...` run, for a notebook or a pipeline.

Data scientists used the KFServing SDK to roll a model out and back; with canaryd the rollout starts from
a Git push, and this client is how a notebook or a deploy job follows it and steers it::

    from canaryd.client import Client, RolloutFailed

    rollouts = Client.connect()                  # kubeconfig found as kubectl finds it
    r = rollouts.get("iris", namespace="models")
    print(r.phase, r.step_label, r.weight, r.last_verdict)
    try:
        r = rollouts.wait("iris", namespace="models", commit="1a2b3c4", timeout_s=900)
    except RolloutFailed as failed:
        print("rolled back:", failed.rollout.message)
    rollouts.pause("iris", namespace="models")   # and resume / promote / abort

Everything is read from and written to the ModelRollout objects (never the daemon's memory), so it works
from anywhere the kubeconfig reaches, against whichever replica leads. Requests are recorded in
`spec.control` and carried out by the daemon at its next check (see `canaryd.operator`).
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from kubernetes import client as k8s

from canaryd.adapters.kube import RetryPolicy, discover_api_client
from canaryd.adapters.statestore import StateStore
from canaryd.operator import OperatorError, Request, request
from canaryd.rollout.state import TERMINAL, HistoryRecord, Phase, RolloutState, step_label, steps_of

__all__ = ["Client", "ClientError", "HistoryEntry", "Rollout", "RolloutFailed", "WaitTimeout"]


class ClientError(RuntimeError):
    """A request that cannot apply, or a rollout that does not exist: the message says which."""


class RolloutFailed(RuntimeError):
    """`wait` saw the rollout end without promoting (Failed or Aborted): `rollout` is what it saw."""

    def __init__(self, rollout: Rollout) -> None:
        super().__init__(f"{rollout.key} {rollout.phase}: {rollout.message}")
        self.rollout = rollout


class WaitTimeout(TimeoutError):
    """`wait` ran out of time; `rollout` is the last state seen (None: no ModelRollout yet)."""

    def __init__(self, message: str, rollout: Rollout | None) -> None:
        super().__init__(message)
        self.rollout = rollout


@dataclass(frozen=True)
class Rollout:
    """One service's rollout as a person reads it; `state` is the whole stored state."""

    namespace: str
    name: str
    phase: Phase
    component: str
    step: int | None  # 1-based; None before the first step
    steps: int
    weight: int
    stable_revision: str | None
    canary_revision: str | None
    commit: str | None
    message: str
    last_verdict: str | None
    since: datetime | None
    state: RolloutState

    @classmethod
    def of(cls, state: RolloutState) -> Rollout:
        st = state.status
        return cls(
            namespace=state.spec.target.namespace, name=state.spec.target.name, phase=st.phase,
            component=state.spec.component, step=st.step + 1 if st.step >= 0 else None, steps=steps_of(state),
            weight=st.weight, stable_revision=st.stable_revision, canary_revision=st.canary_revision,
            commit=state.spec.commit, message=st.message, last_verdict=st.last_verdict, since=st.phase_since,
            state=state,
        )

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def step_label(self) -> str:
        return step_label(self.state.status.step, self.steps)

    @property
    def done(self) -> bool:
        """The rollout ended (promoted, rolled back, aborted, or nothing to roll out)."""
        return self.phase in TERMINAL

    @property
    def succeeded(self) -> bool:
        """Git's spec is what serves: promoted, or adopted without a rollout (Idle)."""
        return self.phase in (Phase.SUCCEEDED, Phase.IDLE)

    def is_commit(self, commit: str) -> bool:
        """Whether this rollout is of `commit` (a full SHA or a prefix of at least 4 characters)."""
        return self.commit is not None and len(commit) >= 4 and self.commit.startswith(commit.lower())


@dataclass(frozen=True)
class HistoryEntry:
    """One phase transition of a service's rollouts (oldest first in `Client.history`)."""

    at: datetime
    phase: Phase
    reason: str
    message: str
    step: int | None  # 1-based; None before the first step
    steps: int
    weight: int
    commit: str | None
    component: str | None

    @classmethod
    def of(cls, record: HistoryRecord, steps: int) -> HistoryEntry:
        return cls(at=record.at, phase=record.phase, reason=record.reason, message=record.message,
                   step=record.step + 1 if record.step >= 0 else None, steps=steps, weight=record.weight,
                   commit=record.commit, component=record.component)

    @property
    def step_label(self) -> str:
        return step_label(self.step - 1 if self.step is not None else -1, self.steps)


class Client:
    """Reads and steers canaryd's rollouts through the Kubernetes API (the ModelRollout objects)."""

    #: A person or a pipeline waits for a dead cluster less long than the daemon does.
    RETRY = RetryPolicy(attempts=3, total_s=4.0)

    def __init__(self, api: k8s.ApiClient) -> None:
        self._api = api
        self._store = StateStore(api)
        self._store.retry = self.RETRY

    @property
    def host(self) -> str:
        """The API server this client talks to (for messages)."""
        return str(self._api.configuration.host)

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> Client:
        """A client for the cluster kubectl would talk to: `kubeconfig` (a path, or several joined with
        os.pathsep), else `$KUBECONFIG`, else `~/.kube/config`, else the pod's service account."""
        return cls(discover_api_client(kubeconfig, context))

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- reading ---

    def find(self, name: str, namespace: str = "default") -> Rollout | None:
        state = self._store.load(namespace, name)
        return Rollout.of(state) if state is not None else None

    def get(self, name: str, namespace: str = "default") -> Rollout:
        found = self.find(name, namespace)
        if found is None:
            raise ClientError(f"no ModelRollout {namespace}/{name}: canaryd has not rolled this service out")
        return found

    def list(self, namespace: str | None = None) -> list[Rollout]:
        """Every rollout (in `namespace`, or in all namespaces the credentials may list), by name."""
        return sorted((Rollout.of(s) for s in self._store.list(namespace)), key=lambda r: r.key)

    def history(self, name: str, namespace: str = "default") -> builtins.list[HistoryEntry]:
        """The phase transitions of the service's rollouts, oldest first (as many as the ModelRollout keeps)."""
        state = self.get(name, namespace).state
        steps = steps_of(state)
        return [HistoryEntry.of(h, steps) for h in state.status.history]

    def wait(self, name: str, namespace: str = "default", *, commit: str | None = None, timeout_s: float = 900.0,
             poll_s: float = 2.0, on_change: Callable[[Rollout], None] | None = None) -> Rollout:
        """Until the rollout ends: its Rollout when promoted (or adopted, Idle); RolloutFailed when it
        was rolled back or aborted; WaitTimeout after `timeout_s`.

        With `commit`, only a rollout of that commit counts (a deploy job that just pushed must not take
        the previous rollout's Succeeded for its own): until canaryd picked the commit up, it waits.
        `on_change` sees every new phase, step or commit while waiting.
        """
        deadline = time.monotonic() + timeout_s
        last: Rollout | None = None
        seen: tuple[object, ...] | None = None
        while True:
            last = self.find(name, namespace)
            if last is not None:
                now = (last.phase, last.step, last.commit, last.component)
                if on_change is not None and now != seen:
                    on_change(last)
                seen = now
                if last.done and (commit is None or last.is_commit(commit)):
                    if last.succeeded:
                        return last
                    raise RolloutFailed(last)
            left = deadline - time.monotonic()
            if left <= 0:
                what = f"{namespace}/{name}" + (f" at commit {commit}" if commit else "")
                where = (f"{last.phase} at {last.step_label}, commit {(last.commit or '-')[:8]}" if last is not None
                         else "no ModelRollout yet")
                raise WaitTimeout(f"{what} did not finish within {timeout_s:g}s ({where})", last)
            time.sleep(min(poll_s, left))

    # --- steering (recorded in spec.control; the daemon acts at its next check) ---

    def pause(self, name: str, namespace: str = "default") -> str:
        """Hold the rollout where it is (traffic kept); no new rollout starts until `resume`."""
        return self._request(name, namespace, "pause")

    def resume(self, name: str, namespace: str = "default") -> str:
        return self._request(name, namespace, "resume")

    def promote(self, name: str, namespace: str = "default") -> str:
        """Promote the canary in flight to 100 % now (e.g. past a confirm-promotion gate)."""
        return self._request(name, namespace, "promote")

    def abort(self, name: str, namespace: str = "default") -> str:
        """Roll the canary in flight back; its spec is not retried until Git changes."""
        return self._request(name, namespace, "abort")

    def _request(self, name: str, namespace: str, what: Request) -> str:
        try:
            return request(self._api, namespace, name, what)
        except OperatorError as exc:
            raise ClientError(str(exc)) from None
