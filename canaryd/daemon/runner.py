"""`canaryd run`: wires the adapters, the controller, the scheduler and the HTTP server together.

The daemon keeps only caches in memory (the desired set from the newest good sync); everything a restart
needs is in the cluster (ModelRollouts) or in Git.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from types import FrameType

from canaryd.adapters.events import EventRecorder
from canaryd.adapters.git import GitSource, GitSyncError
from canaryd.adapters.kserve import KServeAdapter
from canaryd.adapters.kube import make_api_client
from canaryd.adapters.notify import Notifier
from canaryd.adapters.prometheus import PrometheusSource
from canaryd.adapters.statestore import StateStore
from canaryd.config import Settings
from canaryd.daemon.controller import Adapters, Controller
from canaryd.daemon.metrics import Metrics
from canaryd.daemon.scheduler import TickScheduler
from canaryd.daemon.server import make_app
from canaryd.desired import DesiredService, ServiceKey, load_desired
from canaryd.httpserver import ThreadedServer
from canaryd.policy import policy_snapshot
from canaryd.rollout.model import Desired
from canaryd.rollout.state import TargetRef

log = logging.getLogger("canaryd")


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        k = settings.kubernetes
        api = make_api_client(k.kubeconfig, k.context)
        p = settings.prometheus
        basic = (p.basic_auth_user, p.basic_auth_password_file) if p.basic_auth_user and p.basic_auth_password_file \
            else None
        self.store = StateStore(api)
        self.kserve = KServeAdapter(api)
        self.notifier = Notifier(settings.notifications)
        self.adapters = Adapters(
            kserve=self.kserve,
            store=self.store,
            events=EventRecorder(api),
            notifier=self.notifier,
            prometheus=PrometheusSource(
                p.url, timeout_s=p.timeout_s, bearer_token_file=p.bearer_token_file, basic_auth=basic,
                ca_file=p.ca_file, profile=p.profile, scrape_interval_s=p.scrape_interval_s,
            ),
        )
        self.default_policy = settings.load_default_policy()
        self.controller = Controller(self.adapters, self.default_policy)
        self.metrics = Metrics()
        self.controller.on_decision.append(self.metrics.observe_state)
        self.controller.on_analysis.append(self.metrics.analysis_duration.observe)
        r = settings.repo
        self.git = GitSource(r.url, branch=r.branch, workdir=r.workdir, paths=r.paths, depth=r.depth,
                             username=r.username, token_file=r.token_file, ssh_key_file=r.ssh_key_file,
                             known_hosts_file=r.known_hosts_file, fetch_retries=r.fetch_retries)
        self.sched = TickScheduler(self._tick, workers=settings.workers)
        self.desired: dict[ServiceKey, DesiredService] = {}
        self.commit: str | None = None
        self._reported: set[str] = set()
        self._synced = False
        self._prune_safe = False
        self._api_ok_at: float | None = None
        self._sync_lock = threading.Lock()
        self._stop = threading.Event()
        self.server = ThreadedServer(
            make_app(self.metrics.registry, self._healthy, self._ready, webhook=settings.webhook,
                     branch=settings.repo.branch, on_push=self.request_sync,
                     webhook_requests=self.metrics.webhook_requests),
            host=settings.server.host, port=settings.server.port, name="canaryd-http",
        )

    # -- health ----------------------------------------------------------------------------------
    def _healthy(self) -> tuple[bool, str]:
        return (True, "ok") if self.sched.running else (False, "scheduler stopped")

    def _ready(self) -> tuple[bool, str]:
        if not self._synced:
            return False, "config repo not synced yet"
        if self._api_ok_at is None or time.monotonic() - self._api_ok_at > 120:
            return False, "Kubernetes API not reached in the last 2 minutes"
        return True, f"synced {self.commit}"

    # -- git -------------------------------------------------------------------------------------
    def request_sync(self) -> None:
        """Sync as soon as possible (a push webhook). Bursts coalesce into one pending sync job."""
        self.sched.once("sync-now", self.sync)

    def sync(self) -> None:
        """Fetch the config repo and tick every service whose desired state changed."""
        with self._sync_lock:
            try:
                result = self.git.sync()
            except GitSyncError as exc:
                self.metrics.syncs.labels("error").inc()
                log.error("config repo sync failed; keeping the last good desired state",
                          extra={"error": str(exc)})
                return
            s = self.settings
            ds = load_desired(result.root, s.repo.paths, s.kubernetes.default_namespace, self.default_policy,
                              s.kubernetes.namespaces or None)
            self.metrics.syncs.labels("ok").inc()
            self.metrics.last_sync.set(time.time())
            self.metrics.config_errors.set(len(ds.problems))
            for err in ds.errors:
                marker = f"{result.commit}:{err}"
                if marker not in self._reported:
                    self._reported.add(marker)
                    (log.error if err.severity == "error" else log.warning)(
                        "config repo problem", extra={"commit": result.commit, "problem": str(err),
                                                      "service": str(err.service) if err.service else None})
            new = dict(ds.services)
            for key, why in ds.blocked.items():
                if key in self.desired:
                    new[key] = self.desired[key]  # a broken document keeps the last good desired state
                marker = f"{result.commit}:blocked:{key}"
                if marker not in self._reported:
                    self._reported.add(marker)
                    log.error("service not rolled out", extra={"service": str(key), "reason": why})
                    self._warn_service(key, why)
            changed = {k for k in new.keys() | self.desired.keys()
                       if (new.get(k) is None) != (self.desired.get(k) is None)
                       or (k in new and k in self.desired and new[k].spec_hash != self.desired[k].spec_hash)}
            first = not self._synced
            self._prune_safe = ds.prune_safe
            self.desired = new
            self.commit = result.commit
            self.metrics.services.set(len(new))
            self._synced = True
            for key in new.keys() if first else changed:
                self.sched.trigger(str(key))
            for key in new:
                if not self.sched.scheduled(str(key)) and key not in changed:
                    self.sched.trigger(str(key))
            if first:
                self._resume_known()

    def _resume_known(self) -> None:
        """Services with a ModelRollout that left Git still get ticks (their rollout must end cleanly)."""
        try:
            states = self.store.list(None)
        except Exception as exc:
            log.warning("could not list ModelRollouts", extra={"error": str(exc)})
            return
        allowed = set(self.settings.kubernetes.namespaces)
        for st in states:
            key = ServiceKey(st.spec.target.namespace, st.spec.target.name)
            if allowed and key.namespace not in allowed:
                continue  # another shard's (or nobody's) business: never act outside our namespaces
            if key not in self.desired:
                log.warning("service has a ModelRollout but is no longer in Git; leaving it running (no prune)",
                            extra={"service": str(key)})
                self.sched.trigger(str(key))

    def _warn_service(self, key: ServiceKey, why: str) -> None:
        ref = TargetRef(namespace=key.namespace, name=key.name)
        self.adapters.events.record(ref, "InvalidConfig", why[:1000], "Warning")

    # -- ticks -----------------------------------------------------------------------------------
    def _tick(self, key_text: str) -> datetime | None:
        ns, name = key_text.split("/", 1)
        key = ServiceKey(ns, name)
        d = self.desired.get(key)
        desired = None
        if d is not None:
            desired = Desired(manifest=d.manifest, spec_hash=d.spec_hash, commit=self.commit,
                              policy=policy_snapshot(d.policy), policy_source=d.policy_source)
        api_version = d.manifest.get("apiVersion", "serving.kserve.io/v1beta1") if d else "serving.kserve.io/v1beta1"
        target = TargetRef(api_version=api_version, namespace=ns, name=name)
        started = time.monotonic()
        try:
            prune = d is None and self.settings.prune and self._prune_safe
            result = self.controller.tick(target, desired, d.policy if d else None, prune=prune)
        except Exception as exc:
            self.metrics.tick_errors.labels(ns, name).inc()
            self.notifier.send(key_text, "error", f"reconcile failed: {type(exc).__name__}: {exc}"[:500], {})
            raise
        finally:
            self.metrics.ticks.observe(time.monotonic() - started)
        self._api_ok_at = time.monotonic()
        nxt = result.next_check_at
        if nxt is None:
            return None
        # Never sleep past the next repo poll: a tick is cheap and catches anything a sync missed.
        cap = datetime.now(UTC) + timedelta(seconds=max(self.settings.repo.poll_interval_s, 1.0))
        return min(nxt, cap)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.server.start()
        if self.settings.server.port_file:
            self.settings.server.port_file.write_text(str(self.server.port))
        log.info("canaryd started", extra={"port": self.server.port, "repo_branch": self.settings.repo.branch})
        self.sched.start()
        self.sched.every("sync", self.sync, self.settings.repo.poll_interval_s)

    def stop(self) -> None:
        log.info("canaryd stopping")
        self.sched.shutdown(wait=True)
        self.notifier.close(timeout=5)
        self.server.stop()

    def run_forever(self) -> int:
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal received", extra={"signal": signal.Signals(signum).name})
            self._stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        self._stop.wait()
        self.stop()
        return 0

