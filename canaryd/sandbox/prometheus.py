"""A real Prometheus (the Debian `prometheus` binary) for the sandbox, the demo and contract tests.

It runs in a private temp dir, listens on an OS-picked port of 127.0.0.1 (learnt from its log, as
Prometheus prints `msg="Listening on" address=…`), and scrapes targets listed in a file_sd JSON file,
so `set_targets` can move the scrape while it runs. The process never outlives its owner: `stop()`
terminates then kills it, and an atexit hook does the same if the owner forgets.

Timing facts (DESIGN §7): `/-/ready` answers within ~0.1 s, but the scrape manager applies new targets
on a 5 s tick, so the first sample lands ~5-6 s after start (or after `set_targets`): poll with
`wait_for_series`, never sleep.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from canaryd.durations import format_duration

_LISTENING = re.compile(r'msg="Listening on" address=(\S+)')
TargetGroup = tuple[Iterable[str], Mapping[str, str]]


class PrometheusNotInstalled(RuntimeError):
    """The `prometheus` binary is not on PATH."""


class PrometheusStartError(RuntimeError):
    """Prometheus exited or did not come up; the message carries the tail of its log."""


def find_prometheus() -> str:
    path = shutil.which("prometheus")
    if path is None:
        raise PrometheusNotInstalled(
            "the `prometheus` binary is not on PATH; install it with `apt-get install -y prometheus`"
        )
    return path


class PrometheusServer:
    """One Prometheus process with its own storage, config and file_sd targets."""

    def __init__(
        self,
        *,
        scrape_interval_s: float = 1.0,
        metrics_path: str = "/metrics",
        job: str = "sandbox",
        binary: str | None = None,
        retention: str = "2h",
        extra_args: Iterable[str] = (),
    ) -> None:
        if scrape_interval_s <= 0:
            raise ValueError("scrape interval must be positive")
        self.scrape_interval_s = scrape_interval_s
        self.metrics_path = metrics_path
        self.job = job
        self._binary = binary
        self._retention = retention
        self._extra_args = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._address: str | None = None
        self._client: httpx.Client | None = None

    # --- paths and addresses ---

    @property
    def workdir(self) -> Path:
        if self._dir is None:
            raise RuntimeError("Prometheus is not started")
        return self._dir

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    @property
    def targets_path(self) -> Path:
        return self.workdir / "targets.json"

    @property
    def url(self) -> str:
        if self._address is None:
            raise RuntimeError("Prometheus is not started")
        return f"http://{self._address}"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def _http(self) -> httpx.Client:
        if self._client is None:
            raise RuntimeError("Prometheus is not started")
        return self._client

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # --- lifecycle ---

    def _config(self) -> dict[str, Any]:
        interval = format_duration(self.scrape_interval_s)
        return {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "scrape_configs": [
                {
                    "job_name": self.job,
                    "metrics_path": self.metrics_path,
                    "honor_labels": True,
                    "file_sd_configs": [{"files": [str(self.targets_path)], "refresh_interval": "1s"}],
                }
            ],
        }

    def start(self, timeout: float = 15.0) -> PrometheusServer:
        if self._proc is not None:
            raise RuntimeError("Prometheus is already started")
        binary = self._binary or find_prometheus()
        self._client = httpx.Client(timeout=5.0, trust_env=False)
        self._dir = Path(tempfile.mkdtemp(prefix="canaryd-prometheus-"))
        config = self.workdir / "prometheus.yml"
        config.write_text(json.dumps(self._config(), indent=2))  # JSON is YAML
        self.set_targets([])
        args = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--storage.tsdb.retention.time={self._retention}",
            "--web.listen-address=127.0.0.1:0",
            "--web.enable-lifecycle",
            *self._extra_args,
        ]
        atexit.register(self.stop)
        try:
            with self.log_path.open("wb") as log:
                self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            self._address = self._wait_for_address(timeout)
            self.wait_ready(timeout)
        except BaseException:
            self.stop()  # the exception already carries the log tail
            raise
        return self

    def _wait_for_address(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            match = _LISTENING.search(self.log_path.read_text(errors="replace"))
            if match:
                return match.group(1)
            self._raise_if_exited("before it listened")
            if time.monotonic() > deadline:
                raise PrometheusStartError(f"Prometheus did not listen within {timeout}s\n{self.log_tail()}")
            time.sleep(0.02)

    def _raise_if_exited(self, when: str) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise PrometheusStartError(f"Prometheus exited with code {self._proc.returncode} {when}\n{self.log_tail()}")

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Poll `/-/ready` until it answers 200 (TSDB open, config loaded)."""
        self._poll(lambda: self._http.get(f"{self.url}/-/ready").status_code == 200, timeout, "become ready")

    def _poll(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            self._raise_if_exited(f"while waiting to {what}")
            try:
                if ready():
                    return
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise TimeoutError(f"Prometheus did not {what} within {timeout}s {last}\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 5.0, *, keep_dir: bool = False) -> None:
        """Terminate, then kill after `timeout`; remove the temp dir unless `keep_dir`. Idempotent."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._dir is not None and not keep_dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return "(no Prometheus log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- targets ---

    def set_targets(self, targets: Iterable[str], labels: Mapping[str, str] | None = None) -> None:
        """Scrape exactly these `host:port` targets (with extra target labels); [] scrapes nothing."""
        self.set_target_groups([(targets, labels or {})])

    def set_target_groups(self, groups: Iterable[TargetGroup]) -> None:
        """Write the file_sd file atomically, so Prometheus never reads half of it."""
        data = [{"targets": list(t), "labels": dict(lbl)} for t, lbl in groups]
        data = [g for g in data if g["targets"]]
        tmp = self.targets_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.targets_path)

    def reload(self) -> None:
        """Ask Prometheus to re-read its config (enabled by `--web.enable-lifecycle`)."""
        self._http.post(f"{self.url}/-/reload").raise_for_status()

    # --- queries ---

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The raw `data.result` of an instant query; raises on a Prometheus error."""
        resp = self._http.get(f"{self.url}/api/v1/query", params={"query": promql})
        body = resp.json()
        if resp.status_code != 200 or body.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: HTTP {resp.status_code} {body.get('error', body)}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for_series(self, promql: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Poll until `promql` returns a non-empty result (the first scrape lands ~5-6 s after start)."""
        found: list[dict[str, Any]] = []

        def ready() -> bool:
            nonlocal found
            found = self.query(promql)
            return bool(found)

        self._poll(ready, timeout, f"return data for {promql!r}")
        return found


@contextmanager
def running_prometheus(
    targets: Iterable[str] = (), labels: Mapping[str, str] | None = None, **kwargs: Any
) -> Iterator[PrometheusServer]:
    """A started, ready Prometheus scraping `targets`; the body of a pytest fixture:

    @pytest.fixture(scope="module")
    def prometheus() -> Iterator[PrometheusServer]:
        with running_prometheus([dataplane_address]) as prom:
            yield prom
    """
    with PrometheusServer(**kwargs) as prom:
        prom.set_targets(targets, labels)
        yield prom
