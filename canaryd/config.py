"""Daemon settings: a YAML file, overridden by environment variables (`CANARYD_<SECTION>__<FIELD>`).

pydantic-settings does the env layering, so Helm can set anything through the file (a ConfigMap) and a
single value through `env:`. Secrets are never values here, only paths to files (mounted Secrets), so a
dump of the settings can be logged safely.
"""

from __future__ import annotations

import ipaddress
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from canaryd.desired import load_policy_file
from canaryd.durations import parse_duration
from canaryd.policy import PolicySpec


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RepoSettings(_Section):
    url: str = Field(description="config repo URL (anything git accepts)")
    branch: str = "main"
    paths: list[str] = Field(default_factory=lambda: ["."])
    poll_interval: str = Field(default="30s", alias="pollInterval")
    workdir: Path = Field(default=Path("/tmp/canaryd/repo"))
    depth: int | None = Field(default=1, ge=1, description="shallow fetch depth; null = full history")
    # Credentials are files (mounted Secrets), never values: see README "Private repos".
    username: str | None = Field(default=None, description="user for HTTPS token auth (default x-access-token)")
    token_file: Path | None = Field(default=None, alias="tokenFile", description="HTTPS token/password file")
    ssh_key_file: Path | None = Field(default=None, alias="sshKeyFile", description="SSH private key file")
    known_hosts_file: Path | None = Field(default=None, alias="knownHostsFile",
                                          description="SSH known_hosts file (host keys are always checked)")
    fetch_retries: int = Field(default=3, ge=0, le=10, alias="fetchRetries")
    timeout: str = Field(default="60s", description="longest one git clone/fetch may take before it is killed")

    @field_validator("poll_interval", "timeout")
    @classmethod
    def _d(cls, v: str) -> str:
        if parse_duration(v) <= 0:
            raise ValueError("must be a positive duration")
        return v

    @property
    def poll_interval_s(self) -> float:
        return parse_duration(self.poll_interval)

    @property
    def timeout_s(self) -> float:
        return parse_duration(self.timeout)


class KubernetesSettings(_Section):
    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("stateNamespace" in data or "state_namespace" in data):
            raise ValueError("kubernetes.stateNamespace was removed (it was never used): each service's state is"
                             " its ModelRollout, in the service's own namespace; delete the key")
        return data

    kubeconfig: str | None = Field(default=None, description="path; unset = in-cluster config")
    context: str | None = None
    namespaces: list[str] = Field(default_factory=list, description="namespaces canaryd may act on; [] = all")
    default_namespace: str = Field(default="default", alias="defaultNamespace")
    # One list+watch per namespace (or cluster-wide) instead of a GET per service per tick; off only for
    # RBAC that forbids list/watch on InferenceServices (reads then fall back to GETs anyway).
    watch_cache: bool = Field(default=True, alias="watchCache",
                              description="read InferenceServices from a watch-fed cache (needs list+watch)")


class PrometheusSettings(_Section):
    url: str = "http://prometheus-operated.monitoring:9090"
    timeout: str = "5s"
    profile: str = "knative-opencensus"
    scrape_interval: str = Field(default="15s", alias="scrapeInterval")
    max_sample_age: str | None = Field(
        default=None, alias="maxSampleAge",
        description="a counter sample older than this is not data (default: three scrape intervals)")
    bearer_token_file: Path | None = Field(default=None, alias="bearerTokenFile")
    basic_auth_user: str | None = Field(default=None, alias="basicAuthUser")
    basic_auth_password_file: Path | None = Field(default=None, alias="basicAuthPasswordFile")
    ca_file: Path | None = Field(default=None, alias="caFile")

    @field_validator("timeout", "scrape_interval", "max_sample_age")
    @classmethod
    def _d(cls, v: str | None) -> str | None:
        if v is not None and parse_duration(v) <= 0:
            raise ValueError("must be a positive duration")
        return v

    @model_validator(mode="after")
    def _age_covers_a_scrape(self) -> PrometheusSettings:
        # A limit under one scrape interval would call the newest sample stale half of the time.
        if self.max_sample_age_s < self.scrape_interval_s:
            raise ValueError(f"maxSampleAge ({self.max_sample_age}) must be at least scrapeInterval"
                             f" ({self.scrape_interval})")
        return self

    @property
    def timeout_s(self) -> float:
        return parse_duration(self.timeout)

    @property
    def scrape_interval_s(self) -> float:
        return parse_duration(self.scrape_interval)

    @property
    def max_sample_age_s(self) -> float:
        return parse_duration(self.max_sample_age) if self.max_sample_age else 3 * self.scrape_interval_s


class ServerSettings(_Section):
    """The HTTP server. Its time bounds keep half-open and trickling connections from piling up (see
    canaryd.httpserver); a connection over one is closed."""

    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    port_file: Path | None = Field(default=None, alias="portFile",
                                   description="write the bound port here (useful with port 0)")
    header_timeout: str = Field(default="10s", alias="headerTimeout",
                                description="a request's headers must be complete within this")
    body_timeout: str = Field(default="30s", alias="bodyTimeout",
                              description="longest pause while a request body is being received")
    keep_alive_timeout: str = Field(default="30s", alias="keepAliveTimeout",
                                    description="an idle connection is closed after this (whole seconds)")

    @field_validator("header_timeout", "body_timeout", "keep_alive_timeout")
    @classmethod
    def _bound(cls, v: str) -> str:
        seconds = parse_duration(v)
        if not 0 < seconds <= 3600:
            raise ValueError(f"must be a duration above 0 and at most 1h, got {v!r}")
        return v

    @property
    def header_timeout_s(self) -> float:
        return parse_duration(self.header_timeout)

    @property
    def body_timeout_s(self) -> float:
        return parse_duration(self.body_timeout)

    @property
    def keep_alive_s(self) -> int:
        """uvicorn counts keep-alive in whole seconds: rounded up, at least 1."""
        return max(1, math.ceil(parse_duration(self.keep_alive_timeout)))


class WebhookSettings(_Section):
    """`POST /hooks/git`: a push triggers an immediate sync (polling stays as the fallback)."""

    enabled: bool = True
    secret_file: Path | None = Field(default=None, alias="secretFile",
                                     description="shared secret (GitHub/Gitea HMAC, GitLab token); unset = 401")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, alias="maxBodyBytes")
    rate_per_second: float = Field(default=5.0, gt=0, alias="ratePerSecond",
                                   description="token bucket of authenticated requests (a valid signature)")
    burst: int = Field(default=20, ge=1)
    unauthenticated_rate_per_second: float = Field(
        default=1.0, gt=0, alias="unauthenticatedRatePerSecond",
        description="a separate token bucket for requests that fail authentication, are too large or are cut"
                    " off: they never spend the budget of signed pushes")
    unauthenticated_burst: int = Field(default=10, ge=1, alias="unauthenticatedBurst")


class NotifierSettings(_Section):
    kind: Literal["slack", "generic", "teams"] = "generic"
    url_file: Path = Field(alias="urlFile", description="file holding the webhook URL (it is a secret)")
    events: list[str] = Field(default_factory=list, description="kinds to send; [] = all")


class NotificationSettings(_Section):
    notifiers: list[NotifierSettings] = Field(default_factory=list)
    min_interval: str = Field(default="1m", alias="minInterval",
                              description="per service and kind: at most one message per interval")
    timeout: str = "5s"


class OutboundSettings(_Section):
    """Rules for calls to endpoints that config-repo authors name (gate webhooks), and response caps.

    Config-repo authors are trusted only in their namespaces, so by default a gate URL may not reach the
    daemon's loopback, a link-local address (the cloud metadata service hands out node credentials
    there) or the in-cluster Kubernetes API. Only cluster admins, who own this file, can allow them.
    """

    allow_loopback: bool = Field(default=False, alias="allowLoopback",
                                 description="let gate webhooks call 127.0.0.0/8 and ::1 (the sandbox does)")
    allow_link_local: bool = Field(default=False, alias="allowLinkLocal",
                                   description="let gate webhooks call 169.254.0.0/16 and fe80::/10 (metadata)")
    allow_hosts: list[str] = Field(default_factory=list, alias="allowHosts",
                                   description="host names or CIDR networks gate webhooks may call even if refused"
                                               " otherwise (e.g. the in-cluster API)")
    max_response_bytes: int = Field(default=1 << 20, ge=1024, alias="maxResponseBytes",
                                    description="longest gate or notification answer read; more is an error")
    max_prometheus_response_bytes: int = Field(default=64 << 20, ge=1024, alias="maxPrometheusResponseBytes",
                                               description="longest Prometheus answer read; more is an error")

    @field_validator("allow_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for e in v:
            e = e.strip()
            if not e or any(c.isspace() for c in e) or "://" in e:
                raise ValueError(f"{e!r}: each entry is a host name or a CIDR network, not a URL")
            if "/" in e:
                ipaddress.ip_network(e, strict=False)
        return [e.strip() for e in v]


class LeaderSettings(_Section):
    """Leader election through a `coordination.k8s.io/v1` Lease (client-go's semantics and timings).

    With it, several replicas may run and only the holder of the Lease reconciles; the others stand by and
    take over when the holder stops renewing (or releases the Lease on SIGTERM). The three durations must
    satisfy retryPeriod < renewDeadline < leaseDuration: a leader that cannot renew gives up at
    renewDeadline, before any standby may consider the Lease expired at leaseDuration.
    """

    enabled: bool = Field(default=False, description="off for a bare `canaryd run`; the Helm chart turns it on")
    lease_duration_s: int = Field(default=15, ge=1, alias="leaseDurationS",
                                  description="seconds a Lease is valid without renewal (the Lease field is integer)")
    renew_deadline_s: float = Field(default=10.0, gt=0, alias="renewDeadlineS",
                                    description="the leader stops acting this long after its last successful renew")
    retry_period_s: float = Field(default=2.0, gt=0, alias="retryPeriodS",
                                  description="time between attempts to acquire or renew")
    namespace: str | None = Field(default=None, description="namespace of the Lease; unset = the first of "
                                  "kubernetes.namespaces, or `default`")
    identity: str | None = Field(default=None, description="this replica's name in the Lease; unset = hostname-pid")
    lease_name: str = Field(default="canaryd", alias="leaseName", min_length=1)

    @model_validator(mode="after")
    def _ordered(self) -> LeaderSettings:
        if not self.renew_deadline_s < self.lease_duration_s:
            raise ValueError(f"leader.renewDeadlineS ({self.renew_deadline_s:g}) must be less than "
                             f"leader.leaseDurationS ({self.lease_duration_s}): a leader must stop acting "
                             "before a standby may take the Lease over")
        if not self.retry_period_s < self.renew_deadline_s:
            raise ValueError(f"leader.retryPeriodS ({self.retry_period_s:g}) must be less than "
                             f"leader.renewDeadlineS ({self.renew_deadline_s:g}): a leader must get at least "
                             "one more renewal attempt before it gives up")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CANARYD_", env_nested_delimiter="__", extra="forbid", populate_by_name=True,
    )

    repo: RepoSettings
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    prometheus: PrometheusSettings = Field(default_factory=PrometheusSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    prune: bool = Field(default=False, description="delete services removed from Git (default: leave them running)")
    default_policy: Path | None = Field(default=None, alias="defaultPolicy",
                                        description="RolloutPolicy file without target; unset = built-in")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", alias="logLevel")
    workers: int = Field(default=4, ge=1, le=64)
    leader: LeaderSettings = Field(default_factory=LeaderSettings)
    outbound: OutboundSettings = Field(default_factory=OutboundSettings)
    shutdown_timeout_s: float = Field(
        default=20.0, gt=0, alias="shutdownTimeoutS",
        description="after SIGTERM, exit within this many seconds (keep it below the pod's "
                    "terminationGracePeriodSeconds, 30 in the chart): a tick still running then is abandoned")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment wins over the file, which is passed as init kwargs.
        return env_settings, init_settings

    def load_default_policy(self) -> PolicySpec:
        return load_policy_file(self.default_policy) if self.default_policy else PolicySpec()


def load_settings(path: Path | None) -> Settings:
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(path.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: settings must be a mapping")
        data = loaded or {}
    return Settings(**data)
