"""An operator request that collides with the daemon's own save still lands (issue 12).

The daemon writes the ModelRollout whenever a tick changes something, so `canaryd pause` can read the
object, meet a save, and have its write refused with 409. The test forces that collision on a real API
emulator: a request hook lets a daemon-like client replace the object between the CLI's read and its
write, so the CLI's precondition is genuinely stale. The request must be re-read, re-checked and land.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client
from starlette.responses import Response

from canaryd import operator
from canaryd.adapters.kube import make_api_client
from canaryd.adapters.statestore import StateStore
from canaryd.rollout.state import PLURAL, Phase
from canaryd.sandbox.kubeapi import KubeApiEmulator, load_crds
from canaryd.sandbox.kubeapi.requestinfo import RequestInfo
from tests.contract.test_statestore import ROLLOUT_CRD, T0, realistic

NS = "models"


@dataclass
class Clients:
    """The emulator, a daemon-like state store and the CLI's own API client, with a rollout in flight."""

    emulator: KubeApiEmulator
    daemon: StateStore
    cli_api: client.ApiClient


@pytest.fixture
def clients(tmp_path: Path) -> Iterator[Clients]:
    emulator = KubeApiEmulator(load_crds([ROLLOUT_CRD]), namespaces=[NS])
    emulator.start()
    kubeconfig = tmp_path / "kubeconfig"
    emulator.write_kubeconfig(kubeconfig)
    daemon_api = make_api_client(str(kubeconfig), component="daemon")
    cli_api = make_api_client(str(kubeconfig))
    try:
        daemon = StateStore(daemon_api)
        state = realistic("iris")
        assert state.status.phase == Phase.PROGRESSING
        daemon.save(state)
        yield Clients(emulator, daemon, cli_api)
    finally:
        daemon_api.close()
        cli_api.close()
        emulator.stop()


class SaveBeforeTheCliWrites:
    """Before each of the CLI's first `collisions` writes to the ModelRollout, the daemon saves it."""

    def __init__(self, daemon: StateStore, name: str, collisions: int) -> None:
        self.daemon, self.name, self.left = daemon, name, collisions
        self.saves = 0

    def _save(self) -> None:
        state = self.daemon.load(NS, self.name)
        assert state is not None
        self.daemon.save(state.evolve(inconclusive_in_row=state.status.inconclusive_in_row + 1))
        self.saves += 1

    async def __call__(self, info: RequestInfo) -> Response | None:
        if (self.left > 0 and info.resource == PLURAL and info.verb in ("patch", "update")
                and ") cli" in info.user_agent):
            self.left -= 1
            await asyncio.to_thread(self._save)  # served by the emulator meanwhile: a real, separate write
        return None


def test_operator_request_lands_when_the_daemon_saves_between_its_read_and_write(clients: Clients) -> None:
    hook = SaveBeforeTheCliWrites(clients.daemon, "iris", collisions=2)
    clients.emulator.hooks.append(hook)

    note = operator.request(clients.cli_api, NS, "iris", "pause")

    assert "pause recorded" in note
    assert hook.saves == 2, "the collision was not forced"
    refused = [c for c in clients.emulator.calls if c.resource == PLURAL and c.status == 409]
    assert len(refused) == 2, refused
    after = clients.daemon.load(NS, "iris")
    assert after is not None and after.spec.control.paused is True
    assert after.status.inconclusive_in_row == realistic("iris").status.inconclusive_in_row + 2, \
        "the daemon's saves were lost"


def test_operator_request_gives_up_with_a_clear_message_when_the_object_never_settles(clients: Clients) -> None:
    clients.emulator.hooks.append(SaveBeforeTheCliWrites(clients.daemon, "iris", collisions=1000))
    with pytest.raises(operator.OperatorError, match=r"kept changing .*run the command again"):
        operator.request(clients.cli_api, NS, "iris", "promote")


def test_a_request_is_checked_again_after_a_collision(clients: Clients) -> None:
    """The re-read matters: if the save that collided ended the canary, promote must say so, not land."""

    class EndTheCanary(SaveBeforeTheCliWrites):
        def _save(self) -> None:
            state = self.daemon.load(NS, self.name)
            assert state is not None
            done = state.transition(Phase.ROLLING_BACK, now=T0, reason="AnalysisFailed", message="x")
            self.daemon.save(done)
            self.saves += 1

    clients.emulator.hooks.append(EndTheCanary(clients.daemon, "iris", collisions=1))
    with pytest.raises(operator.OperatorError, match="no canary in flight"):
        operator.request(clients.cli_api, NS, "iris", "promote")
    after = clients.daemon.load(NS, "iris")
    assert after is not None and not after.spec.control.promote
