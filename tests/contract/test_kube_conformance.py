"""The API emulator answers the conformance probe exactly as a real kube-apiserver 1.28.7 did.

The probe (../shared/kube-conformance/probe.py) makes the calls canaryd relies on through the ordinary
`kubernetes` client; its golden output was recorded against a real server with the real KServe CRD.
The probe runs as a separate process, as any client would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from canaryd.sandbox.kubeapi import KubeApiEmulator, load_crds

REPO_ROOT = Path(__file__).resolve().parents[2]


def _shared() -> Path | None:
    env = os.environ.get("CANARYD_SHARED")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / "shared")
    for cand in candidates:
        if (cand / "kube-conformance" / "probe.py").is_file():
            return cand
    return None


SHARED = _shared()
pytestmark = pytest.mark.skipif(
    SHARED is None,
    reason="shared/ (kube-conformance probe, golden file, KServe CRD) not found beside the repo or in $CANARYD_SHARED",
)


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    assert SHARED is not None
    crds = load_crds([SHARED / "kserve" / "serving.kserve.io_inferenceservices.yaml"])
    with KubeApiEmulator(crds) as emulator:
        yield emulator.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")


def test_probe_output_equals_the_real_apiserver_golden_file(kubeconfig: Path) -> None:
    assert SHARED is not None
    probe = SHARED / "kube-conformance" / "probe.py"
    golden = (SHARED / "kube-conformance" / "golden-kube-apiserver-1.28.7.txt").read_text()
    run = subprocess.run([sys.executable, str(probe), str(kubeconfig)], capture_output=True, text=True,
                         timeout=120, cwd=REPO_ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == golden.splitlines()
