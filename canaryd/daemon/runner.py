"""`canaryd run`: wires the adapters, the controller, the scheduler and the HTTP server together.

The daemon keeps only caches in memory (the desired set from the newest good sync); everything a restart
needs is in the cluster (ModelRollouts) or in Git.

With leader election (`leader.enabled`) every replica serves HTTP (/healthz, /readyz, /metrics, the
webhook), but only the holder of the Lease syncs Git and ticks services: a standby keeps its scheduler
paused, and every write the daemon's Kubernetes client makes is fenced by `LeaderElector.guard`, so a
tick still running when leadership is lost cannot write afterwards. A push webhook on a standby is
answered as usual and only logged: the leader gets its own deliveries and polls anyway.

SIGTERM: stop starting ticks, let the running ones finish (each saves its ModelRollout before it acts
and every action is absolute, so one cut short is repaired by the next leader), release the Lease so a
standby takes over at once, and exit 0 within `shutdownTimeoutS`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

from canaryd.adapters.events import EventRecorder
from canaryd.adapters.git import GitSource, GitSyncError
from canaryd.adapters.hooks import WebhookCaller
from canaryd.adapters.isvc_cache import InferenceServiceCache
from canaryd.adapters.kserve import KServeAdapter
from canaryd.adapters.kube import NotLeader, make_api_client
from canaryd.adapters.notify import Notifier
from canaryd.adapters.outbound import OutboundMetrics, OutboundRules
from canaryd.adapters.prometheus import PrometheusSource
from canaryd.adapters.statestore import StateStore
from canaryd.config import Settings
from canaryd.daemon.controller import Adapters, Controller
from canaryd.daemon.leader import KubeLeaseClient, LeaderElector, LeaderMetrics
from canaryd.daemon.metrics import Metrics, NotificationCollector
from canaryd.daemon.scheduler import TickScheduler
from canaryd.daemon.server import make_app
from canaryd.desired import DesiredService, DesiredSet, ServiceKey, load_desired
from canaryd.httpserver import ThreadedServer
from canaryd.parsecache import ParsedFileCache
from canaryd.policy import policy_snapshot
from canaryd.rollout.model import Desired
from canaryd.rollout.state import RolloutState, TargetRef

log = logging.getLogger("canaryd")

#: How long before the shutdown bound the wait for running ticks ends, to leave time for the release.
_RELEASE_RESERVE_S = 3.0


def default_identity() -> str:
    """hostname-pid: unique per process (the chart passes the pod name instead)."""
    return f"{socket.gethostname()}-{os.getpid()}"


class ReportedOnce:
    """What was already reported (logged, put in an Event) for the current commit, so a poll that finds
    the same commit does not repeat it. Only the newest commit's markers are kept: a new commit reports
    its own problems afresh, and the set never grows with the history of the repo (it held every error
    text of every commit before, for the life of the process)."""

    def __init__(self) -> None:
        self.commit: str | None = None
        self._seen: set[str] = set()

    def first(self, commit: str, marker: str) -> bool:
        """True the first time `marker` is seen for `commit` (which forgets every other commit's)."""
        if commit != self.commit:
            self.commit, self._seen = commit, set()
        if marker in self._seen:
            return False
        self._seen.add(marker)
        return True

    def __len__(self) -> int:
        return len(self._seen)


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        k = settings.kubernetes
        self.metrics = Metrics()
        self.leader_metrics = LeaderMetrics(self.metrics.registry)
        self.leader: LeaderElector | None = None
        self.lease_ref: str | None = None
        if settings.leader.enabled:
            le = settings.leader
            # Its own client, without the write fence: the elector must be able to renew and release.
            lease_api = make_api_client(k.kubeconfig, k.context, component="daemon")
            namespace = le.namespace or (k.namespaces[0] if k.namespaces else "default")
            self.lease_ref = f"{namespace}/{le.lease_name}"
            self.leader = LeaderElector(
                KubeLeaseClient(lease_api, namespace, le.lease_name), le.identity or default_identity(),
                lease_duration_s=le.lease_duration_s, renew_deadline_s=le.renew_deadline_s,
                retry_period_s=le.retry_period_s, on_started_leading=self._started_leading,
                on_stopped_leading=self._stopped_leading, metrics=self.leader_metrics,
                call_timeout_s=min(5.0, le.renew_deadline_s),
            )
        api = make_api_client(k.kubeconfig, k.context, component="daemon",
                              write_guard=self.leader.guard if self.leader is not None else None)
        p = settings.prometheus
        basic = (p.basic_auth_user, p.basic_auth_password_file) if p.basic_auth_user and p.basic_auth_password_file \
            else None
        self.store = StateStore(api)
        # InferenceServices are read from a list+watch cache (its own client: watches hold connections),
        # not with a GET per service per tick; until it has listed, reads fall back to GETs.
        self.isvc_cache: InferenceServiceCache | None = None
        if k.watch_cache:
            self.isvc_cache = InferenceServiceCache(make_api_client(k.kubeconfig, k.context, component="daemon"),
                                                    k.namespaces or None)
        self.kserve = KServeAdapter(api, cache=self.isvc_cache)
        o = settings.outbound
        self.outbound_metrics = OutboundMetrics(self.metrics.registry)
        self.notifier = Notifier(settings.notifications, max_response_bytes=o.max_response_bytes,
                                 metrics=self.outbound_metrics)
        self.metrics.registry.register(NotificationCollector(lambda: self.notifier.stats))
        # Gate URLs come from config-repo authors: the daemon config (cluster admins) says where they may go.
        self.hooks = WebhookCaller(
            OutboundRules(allow_loopback=o.allow_loopback, allow_link_local=o.allow_link_local,
                          allow_hosts=tuple(o.allow_hosts), max_response_bytes=o.max_response_bytes),
            metrics=self.outbound_metrics, max_response_bytes=o.max_response_bytes,
        )
        self.adapters = Adapters(
            hooks=self.hooks,
            kserve=self.kserve,
            store=self.store,
            events=EventRecorder(api),
            notifier=self.notifier,
            prometheus=PrometheusSource(
                p.url, timeout_s=p.timeout_s, bearer_token_file=p.bearer_token_file, basic_auth=basic,
                ca_file=p.ca_file, profile=p.profile, scrape_interval_s=p.scrape_interval_s,
                max_sample_age_s=p.max_sample_age_s, batch=True,
                max_response_bytes=o.max_prometheus_response_bytes, metrics=self.outbound_metrics,
            ),
        )
        self.default_policy = settings.load_default_policy()
        self.controller = Controller(self.adapters, self.default_policy,
                                     namespaces=frozenset(settings.kubernetes.namespaces))
        self.controller.on_decision.append(self.metrics.observe_state)
        self.controller.on_analysis.append(self.metrics.analysis_duration.observe)
        r = settings.repo
        self.git = GitSource(r.url, branch=r.branch, workdir=r.workdir, paths=r.paths, depth=r.depth,
                             username=r.username, token_file=r.token_file, ssh_key_file=r.ssh_key_file,
                             known_hosts_file=r.known_hosts_file, fetch_retries=r.fetch_retries,
                             timeout=r.timeout_s)
        self.sched = TickScheduler(self._tick, workers=settings.workers)
        # A gate's answer ticks its service at once (the tick that started the call did not wait for it).
        self.hooks.on_answer.append(self.sched.trigger)
        self.desired: dict[ServiceKey, DesiredService] = {}
        self.commit: str | None = None
        # A sync costs what changed: unchanged files are not parsed again, an unchanged commit not read again.
        self.parse_cache = ParsedFileCache()
        self._loaded: tuple[str, DesiredSet] | None = None
        self._reported = ReportedOnce()
        self._synced = False
        self._prune_safe = False
        self._api_ok_at: float | None = None
        self._sync_lock = threading.Lock()
        self._stop = threading.Event()
        # Serialises "start acting" (elector thread) with "stop acting for good" (shutdown).
        self._lifecycle = threading.Lock()
        # Leadership terms: the first sync of each term ticks every service (as after a restart).
        self._term = 0
        self._synced_term = -1
        self.server = ThreadedServer(
            make_app(self.metrics.registry, self._healthy, self._ready, webhook=settings.webhook,
                     branch=settings.repo.branch, on_push=self.request_sync,
                     webhook_requests=self.metrics.webhook_requests, role=self._role),
            host=settings.server.host, port=settings.server.port, name="canaryd-http",
            header_timeout_s=settings.server.header_timeout_s, body_timeout_s=settings.server.body_timeout_s,
            keep_alive_s=settings.server.keep_alive_s,
        )

    # -- health ----------------------------------------------------------------------------------
    def _healthy(self) -> tuple[bool, str]:
        return (True, "ok") if self.sched.running else (False, "scheduler stopped")

    def _ready(self) -> tuple[bool, str]:
        contacts = [t for t in (self._api_ok_at, self.leader.last_contact if self.leader else None) if t is not None]
        api_ok = bool(contacts) and time.monotonic() - max(contacts) <= 120
        if self.leader is not None and not self.leader.is_leader:
            # A standby is Ready: it can take over at any moment, as long as it reaches the API.
            if not api_ok:
                return False, "standby; Kubernetes API (the Lease) not reached in the last 2 minutes"
            return True, f"standby; leader: {self.leader.holder or 'none'}"
        if not self._synced:
            return False, "config repo not synced yet"
        if not api_ok:
            return False, "Kubernetes API not reached in the last 2 minutes"
        return True, f"synced {self.commit}"

    def _role(self) -> dict[str, object]:
        if self.leader is None:
            return {"role": "leader", "leaderElection": False}
        return {"role": "leader" if self.leader.is_leader else "standby", "leaderElection": True,
                "identity": self.leader.identity, "holder": self.leader.holder}

    # -- leadership ------------------------------------------------------------------------------
    def _started_leading(self) -> None:
        """Called by the elector thread: start syncing and ticking (must not block: renewals wait)."""
        with self._lifecycle:
            if self._stop.is_set():
                return  # shutting down: the Lease is released in stop()
            self._term += 1
            self.sched.resume()
            self.sched.every("sync", self.sync, self.settings.repo.poll_interval_s)
        log.info("reconciling as leader", extra={"term": self._term})

    def _stopped_leading(self, why: str) -> None:
        """Called by the elector: no new tick or sync; running ones are fenced by the write guard."""
        with self._lifecycle:
            self.sched.pause()
            self.metrics.forget_rollouts()
        log.warning("not reconciling: standby", extra={"reason": why})

    # -- git -------------------------------------------------------------------------------------
    def request_sync(self) -> None:
        """Sync as soon as possible (a push webhook). Bursts coalesce into one pending sync job.

        On a standby the push is accepted and only logged: the leader is the one that syncs, and it polls.
        """
        if self.leader is not None and not self.leader.is_leader:
            log.info("webhook push on a standby: no sync here (the leader syncs and polls)",
                     extra={"leader": self.leader.holder})
            return
        self.sched.once("sync-now", self.sync)

    def sync(self) -> None:
        """Fetch the config repo and tick every service whose desired state changed."""
        with self._sync_lock:
            term = self._term
            try:
                result = self.git.sync()
            except GitSyncError as exc:
                self.metrics.syncs.labels("error").inc()
                log.error("config repo sync failed; keeping the last good desired state",
                          extra={"error": str(exc)})
                return
            ds = self._load(result.commit, result.root)
            if ds.refused is not None:
                # Over a repo-wide limit found while parsing (the node budget): like a failed sync. Taking
                # the empty set would read as "every service left Git" and abort every canary in flight.
                self.metrics.syncs.labels("error").inc()
                self.metrics.config_errors.set(ds.problem_count)
                if self._reported.first(result.commit, "refused"):
                    log.error("config repo commit refused; keeping the last good desired state",
                              extra={"commit": result.commit, "problem": str(ds.refused)})
                return
            self.metrics.syncs.labels("ok").inc()
            self.metrics.last_sync.set(time.time())
            self.metrics.config_errors.set(ds.problem_count)
            for err in ds.errors:
                if self._reported.first(result.commit, str(err)):
                    (log.error if err.severity == "error" else log.warning)(
                        "config repo problem", extra={"commit": result.commit, "problem": str(err),
                                                      "service": str(err.service) if err.service else None})
            new = dict(ds.services)
            for key, why in ds.blocked.items():
                if key in self.desired:
                    new[key] = self.desired[key]  # a broken document keeps the last good desired state
                if self._reported.first(result.commit, f"blocked:{key}"):
                    log.error("service not rolled out", extra={"service": str(key), "reason": why})
                    self._warn_service(key, why)
            changed = {k for k in new.keys() | self.desired.keys()
                       if (new.get(k) is None) != (self.desired.get(k) is None)
                       or (k in new and k in self.desired and new[k].spec_hash != self.desired[k].spec_hash)}
            first = not self._synced or self._synced_term != term
            self._synced_term = term
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

    def _load(self, commit: str, root: Path) -> DesiredSet:
        """The desired set of `commit`: the same as last time if the commit did not change (the checkout is
        reset to it, and the set is a pure function of its files and our settings), else read with the
        parsed-file cache, so only files whose git blob changed are parsed."""
        if self._loaded is not None and self._loaded[0] == commit:
            return self._loaded[1]
        s = self.settings
        self.parse_cache.refresh(root)
        ds = load_desired(root, s.repo.paths, s.kubernetes.default_namespace, self.default_policy,
                          s.kubernetes.namespaces or None, read_file=self.parse_cache.read)
        self._loaded = (commit, ds)
        return ds

    def _resume_known(self) -> None:
        """Services with a ModelRollout that left Git still get ticks (their rollout must end cleanly).

        With `kubernetes.namespaces` set, ModelRollouts are listed in each of them: namespaced RBAC (the
        chart's Roles) forbids a cluster-wide list.
        """
        states: list[RolloutState] = []
        scopes: list[str | None] = list(self.settings.kubernetes.namespaces) or [None]
        for namespace in scopes:
            try:
                states.extend(self.store.list(namespace))
            except Exception as exc:
                log.warning("could not list ModelRollouts", extra={"namespace": namespace, "error": str(exc)})
                continue
            self._api_ok_at = time.monotonic()
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
        except NotLeader as exc:
            # Leadership was lost during this tick and the write fence stopped it: not a failure to
            # report (the new leader re-reads the saved ModelRollout and carries on).
            log.info("tick cut short: not the leader any more", extra={"service": key_text, "error": str(exc)})
            return None
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
        extra: dict[str, object] = {"port": self.server.port, "repo_branch": self.settings.repo.branch}
        if self.leader is not None:
            extra.update(identity=self.leader.identity, lease=self.lease_ref)
        log.info("canaryd started", extra=extra)
        if self.isvc_cache is not None:
            self.isvc_cache.start()  # on a standby too: a warm cache when it takes over
        self.sched.start()
        if self.leader is None:
            self.leader_metrics.leader.set(1)  # alone: always the one that acts
            self._started_leading()
        else:
            self.sched.pause()  # a standby until the Lease is ours
            self.leader.start()

    def stop(self) -> bool:
        """Stop within `shutdownTimeoutS`; False if a tick was still running and had to be abandoned.

        Order matters: stop acting first (the running tick finishes while we still hold the Lease), then
        release the Lease (a standby takes over at its next retry), then the rest.
        """
        bound = self.settings.shutdown_timeout_s
        deadline = time.monotonic() + bound
        log.info("canaryd stopping", extra={"timeout_s": bound})
        with self._lifecycle:  # from here on, becoming the leader no longer starts any work
            self._stop.set()
            self.sched.pause()
        reserve = min(_RELEASE_RESERVE_S, bound / 4)
        drained = self.sched.drain(max(0.0, deadline - time.monotonic() - reserve))
        if not drained:
            log.warning("abandoning the work still running at the shutdown bound; its ModelRollout was "
                        "saved before it acted, so the next leader resumes it", extra={"timeout_s": bound})
        if self.leader is not None:
            self.leader.stop(release=True, timeout=max(0.5, min(5.0, deadline - time.monotonic())))
        self.sched.shutdown(wait=False)
        if self.isvc_cache is not None:
            self.isvc_cache.stop(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
        self.notifier.close(timeout=max(0.0, min(5.0, deadline - time.monotonic() - 0.5)))
        self.hooks.close()
        self.server.stop(timeout=max(0.1, min(2.0, deadline - time.monotonic())))
        log.info("canaryd stopped", extra={"clean": drained})
        return drained

    def run_forever(self) -> int:
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal received", extra={"signal": signal.Signals(signum).name})
            self._stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        self._stop.wait()
        if not self.stop():
            # A worker thread is still busy (a hung call); the interpreter would wait for it at exit.
            # Everything that matters is already done: leave now, within the bound.
            logging.shutdown()
            os._exit(0)
        return 0

