"""The Helm chart in charts/canaryd, rendered and linted by the real Helm (v4 Go SDK, in-process, offline).

What a platform team checks in review, each as a test: lint, the objects for default and non-default
values, the values schema, Kubernetes schemas (1.28 and the newest known), security contexts, RBAC
(no wildcards, and exactly the API calls the daemon's code makes), that no secret value can reach a
manifest, labels, and that the config file the chart writes is one the daemon accepts.
"""

from __future__ import annotations

import ast
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import (
    CHART_DIR,
    MINIMAL,
    NAMESPACE,
    RELEASE,
    ROOT,
    by_kind,
    ci_values,
    config_file,
    helm,
    merge,
    notes,
    one,
    rbac_grants,
    rbac_rules,
    render,
    render_error,
    render_files,
)

STANDARD_LABELS = (
    "app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
    "app.kubernetes.io/component", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by", "helm.sh/chart",
)
#: Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest the validator knows.
KUBE_VERSIONS = ("1.28.0", "latest")
LEASE_VERBS = {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}


def full() -> dict[str, Any]:
    return ci_values("full")


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = pod_spec(docs)["containers"]
    assert [c["name"] for c in containers] == ["canaryd"]
    c: dict[str, Any] = containers[0]
    return c


def env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(docs).get("env", [])}


# ---------------------------------------------------------------------------------------------
# lint and metadata


@pytest.mark.parametrize("values_name", [None, "default", "full"])
@pytest.mark.parametrize("kube_version", [None, "v1.28.0"])
def test_helm_lint_strict(values_name: str | None, kube_version: str | None) -> None:
    values = ci_values(values_name) if values_name else None
    report = helm().lint(str(CHART_DIR), values=values, strict=True, kube_version=kube_version)
    assert report["errors"] == []
    # Severity 2 = warning, 3 = error; 1 (info) is only "icon is recommended".
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_chart_metadata_matches_the_package() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "canaryd"
    assert chart["appVersion"] == project["version"], "bump Chart.yaml appVersion with the package version"
    assert chart["kubeVersion"] == ">=1.28.0-0"


def test_crd_is_shipped_in_crds_dir() -> None:
    crds = helm().Chart.load(str(CHART_DIR)).crds
    assert [c["filename"] for c in crds] == ["canaryd/crds/modelrollout.yaml"]
    crd = yaml.safe_load(crds[0]["data"])
    assert crd["metadata"]["name"] == "modelrollouts.canaryd.io"
    assert crd["spec"]["group"] == "canaryd.io"


# ---------------------------------------------------------------------------------------------
# what gets rendered


def test_default_values_render_the_expected_objects() -> None:
    docs = render()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted([
        "ServiceAccount", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
        "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",  # the Role: leader-election Lease
    ])
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    for d in docs:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"]["namespace"] == NAMESPACE, d["kind"]


def test_repo_url_is_required() -> None:
    assert "repo.url is required" in render_error({})


def test_deployment_runs_canaryd_with_the_config_file() -> None:
    docs = render()
    c = container(docs)
    assert c["image"] == "canaryd:0.1.0"
    assert c["args"] == ["run", "--config", "/etc/canaryd/config/config.yaml"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["config"]["mountPath"] == "/etc/canaryd/config"
    assert mounts["config"]["readOnly"] is True
    assert all("subPath" not in m for m in c["volumeMounts"]), "subPath mounts never see Secret rotation"
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert pod_spec(docs)["terminationGracePeriodSeconds"] == 30
    longer = pod_spec(render(merge(MINIMAL, {"terminationGracePeriodSeconds": 90})))
    assert longer["terminationGracePeriodSeconds"] == 90


def test_image_digest_wins_over_tag() -> None:
    digest = "sha256:" + "a" * 64
    docs = render(merge(MINIMAL, {"image": {"repository": "r.example.com/canaryd", "tag": "9.9", "digest": digest}}))
    assert container(docs)["image"] == f"r.example.com/canaryd@{digest}"
    assert container(render(merge(MINIMAL, {"image": {"tag": "1.2.3"}})))["image"] == "canaryd:1.2.3"


def test_config_file_is_accepted_by_the_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chart's config.yaml goes through canaryd's own settings loader (unknown keys are errors there)."""
    from canaryd.config import load_settings

    for key in [k for k in os.environ if k.startswith("CANARYD_")]:
        monkeypatch.delenv(key)
    for values in (MINIMAL, full()):
        cfg = config_file(values)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        settings = load_settings(path)
        assert settings.repo.url == values["repo"]["url"]
        assert str(settings.repo.workdir).startswith("/var/lib/canaryd/")
        assert settings.server.port == 8080
        assert settings.kubernetes.kubeconfig is None  # in-cluster
        assert settings.kubernetes.namespaces == values.get("watchNamespaces", [])
        assert settings.repo.timeout_s == 60.0  # the chart's repo.timeout reaches the daemon


def test_config_paths_point_at_mounted_files() -> None:
    """Every file the config names is in a mounted volume: a Secret key, the ConfigMap, or scratch space."""
    values = full()
    docs = render(values)
    cfg = config_file(values)
    spec = pod_spec(docs)
    mounts = {m["name"]: m["mountPath"] for m in container(docs)["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    available: set[str] = set()
    for source in volumes["secrets"]["projected"]["sources"]:
        ref = source.get("secret") or source.get("configMap")
        available |= {f"{mounts['secrets']}/{item['path']}" for item in ref["items"]}
    cm = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == volumes["config"]["configMap"]["name"])
    available |= {f"{mounts['config']}/{key}" for key in cm["data"]}
    named = {
        cfg["repo"]["sshKeyFile"], cfg["repo"]["knownHostsFile"], cfg["webhook"]["secretFile"],
        cfg["prometheus"]["bearerTokenFile"], cfg["prometheus"]["caFile"], cfg["defaultPolicy"],
        *(n["urlFile"] for n in cfg["notifications"]["notifiers"]),
    }
    assert named <= available, named - available
    assert cfg["repo"]["workdir"].startswith(mounts["work"] + "/")
    # And nothing is mounted that the config does not use.
    assert available - named == {f"{mounts['config']}/config.yaml"}


def test_default_policy_is_a_valid_rollout_policy(tmp_path: Path) -> None:
    from canaryd.desired import load_policy_file

    cm = next(d for d in by_kind(render(full()), "ConfigMap") if d["metadata"]["name"] == RELEASE)
    path = tmp_path / "default-policy.yaml"
    path.write_text(cm["data"]["default-policy.yaml"])
    spec = load_policy_file(path)
    assert spec.steps == [10, 50]
    assert "defaultPolicy" not in config_file(MINIMAL), "{} = the daemon's built-in default policy"


def test_token_auth_and_inline_known_hosts() -> None:
    values = merge(MINIMAL, {"repo": {"token": {"secretName": "git-token", "key": "pat", "username": "oauth2"}}})
    cfg = config_file(values)
    assert cfg["repo"]["tokenFile"] == "/etc/canaryd/secrets/git/token"
    assert cfg["repo"]["username"] == "oauth2"
    sources = pod_spec(render(values))["volumes"]
    secret_vol = next(v for v in sources if v["name"] == "secrets")
    assert secret_vol["projected"]["sources"] == [
        {"secret": {"name": "git-token", "items": [{"key": "pat", "path": "git/token"}]}}]

    hosts = "git.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleExampleExample"
    values = merge(MINIMAL, {"repo": {"url": "git@git.example.com:ml/cfg.git",
                                      "ssh": {"secretName": "git-ssh", "knownHosts": hosts}}})
    docs = render(values)
    assert one(docs, "ConfigMap")["data"]["known_hosts"].strip() == hosts
    assert config_file(values)["repo"]["knownHostsFile"] == "/etc/canaryd/config/known_hosts"
    secret_vol = next(v for v in pod_spec(docs)["volumes"] if v["name"] == "secrets")
    assert secret_vol["projected"]["sources"] == [
        {"secret": {"name": "git-ssh", "items": [{"key": "ssh-privatekey", "path": "git/ssh-privatekey"}]}}]


def test_no_secret_volume_without_secrets() -> None:
    docs = render()
    assert "secrets" not in {v["name"] for v in pod_spec(docs)["volumes"]}


def test_watch_namespaces_list_gives_one_role_per_namespace() -> None:
    values = merge(MINIMAL, {"watchNamespaces": ["models-a", "models-b"]})
    docs = render(values)
    assert by_kind(docs, "ClusterRole") == [] and by_kind(docs, "ClusterRoleBinding") == []
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in by_kind(docs, "Role")}
    assert roles == {("models-a", "canaryd"), ("models-b", "canaryd"), (NAMESPACE, "canaryd-leader-election")}
    grants = rbac_grants(values)
    assert {scope for scope, *_ in grants} == {"models-a", "models-b", NAMESPACE}
    assert all(scope == NAMESPACE for scope, group, *_ in grants if group == "coordination.k8s.io")
    assert {(g, r, v) for s, g, r, v in grants if s == "models-a"} == {
        (g, r, v) for s, g, r, v in grants if s == "models-b"}
    assert not any(s == NAMESPACE and g != "coordination.k8s.io" for s, g, _r, _v in grants)
    assert config_file(values)["kubernetes"]["namespaces"] == ["models-a", "models-b"]


def test_all_namespaces_gives_a_cluster_role() -> None:
    docs = render()
    crole = one(docs, "ClusterRole")
    assert crole["metadata"]["name"] == f"{NAMESPACE}-{RELEASE}", "cluster-scoped names carry the namespace"
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": crole["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]
    grants = rbac_grants()
    assert {s for s, g, _r, _v in grants if g != "coordination.k8s.io"} == {"*"}
    assert {s for s, g, _r, _v in grants if g == "coordination.k8s.io"} == {NAMESPACE}


def test_optional_objects_on() -> None:
    docs = render(full())
    svc = one(docs, "Service")
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]

    ing = one(docs, "Ingress")
    paths = [p for rule in ing["spec"]["rules"] for p in rule["http"]["paths"]]
    assert paths == [{"path": "/hooks/git", "pathType": "Exact",
                      "backend": {"service": {"name": svc["metadata"]["name"], "port": {"name": "http"}}}}]
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["tls"] == [{"secretName": "canaryd-tls", "hosts": ["canaryd.example.com"]}]

    sm = one(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["endpoints"][0]["port"] == "http" and sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}

    dash = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard"))
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dash["metadata"]["annotations"] == {"grafana_folder": "canaryd"}
    assert json.loads(dash["data"]["canaryd.json"])["uid"] == "canaryd"

    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == one(docs, "Deployment")["spec"]["selector"]
    assert one(docs, "Deployment")["spec"]["replicas"] == 3


def test_service_selector_matches_pods() -> None:
    docs = render()
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert one(docs, "Service")["spec"]["selector"].items() <= pod_labels.items()
    assert one(docs, "Deployment")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_one_replica_has_no_pdb_and_two_pods_never_overlap_without_leader_election() -> None:
    docs = render(merge(MINIMAL, {"replicas": 1}))
    assert by_kind(docs, "PodDisruptionBudget") == []
    assert "affinity" not in pod_spec(docs)

    docs = render(merge(MINIMAL, {"replicas": 1, "leaderElection": {"enabled": False}}))
    assert one(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert env(docs)["CANARYD_LEADER__ENABLED"] == "false"
    assert not any(k.startswith("CANARYD_LEADER__") and k != "CANARYD_LEADER__ENABLED" for k in env(docs))
    assert not any(g == "coordination.k8s.io" for g, _r, _v in rbac_rules(
        merge(MINIMAL, {"replicas": 1, "leaderElection": {"enabled": False}})))
    assert by_kind(render(merge(MINIMAL, {"podDisruptionBudget": {"enabled": False}})), "PodDisruptionBudget") == []


def test_replicas_above_one_need_leader_election() -> None:
    message = render_error(merge(MINIMAL, {"replicas": 2, "leaderElection": {"enabled": False}}))
    assert "leaderElection.enabled" in message


def test_leader_election_env() -> None:
    docs = render(merge(MINIMAL, {"leaderElection": {"leaseDuration": 30, "renewDeadline": 20, "retryPeriod": 5}}))
    e = env(docs)
    assert e["CANARYD_LEADER__ENABLED"] == "true"
    assert e["CANARYD_LEADER__LEASE_DURATION_S"] == "30"
    assert e["CANARYD_LEADER__RENEW_DEADLINE_S"] == "20"
    assert e["CANARYD_LEADER__RETRY_PERIOD_S"] == "5"
    assert e["CANARYD_LEADER__NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert e["CANARYD_LEADER__IDENTITY"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "renewDeadline must be less than" in render_error(
        merge(MINIMAL, {"leaderElection": {"leaseDuration": 10, "renewDeadline": 10}}))
    assert "retryPeriod must be less than" in render_error(
        merge(MINIMAL, {"leaderElection": {"renewDeadline": 5, "retryPeriod": 5}}))


def test_config_change_rolls_the_pods() -> None:
    def checksum(values: dict[str, Any]) -> str:
        return str(one(render(values), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum(MINIMAL) == checksum(MINIMAL)
    assert checksum(MINIMAL) != checksum(merge(MINIMAL, {"repo": {"branch": "release"}}))


def test_pod_anti_affinity_presets() -> None:
    soft = pod_spec(render())["affinity"]["podAntiAffinity"]
    assert list(soft) == ["preferredDuringSchedulingIgnoredDuringExecution"]
    docs = render(merge(MINIMAL, {"podAntiAffinity": "hard"}))
    assert list(pod_spec(docs)["affinity"]["podAntiAffinity"]) == ["requiredDuringSchedulingIgnoredDuringExecution"]
    # One pod per node: a surge pod could find no node, so an update replaces pods one at a time.
    assert one(docs, "Deployment")["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    custom = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ml"]}]}]}}}
    assert pod_spec(render(merge(MINIMAL, {"affinity": custom})))["affinity"] == custom


# ---------------------------------------------------------------------------------------------
# values schema


@pytest.mark.parametrize(("override", "field"), [
    ({"replicas": -1}, "/replicas"),
    ({"replicas": "two"}, "/replicas"),
    ({"replica": 2}, "replica"),  # unknown top-level key (a typo)
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"image": {"digest": "latest"}}, "/image/digest"),
    ({"watchNamespaces": "models"}, "/watchNamespaces"),
    ({"watchNamespaces": ["Models_A"]}, "/watchNamespaces/0"),
    ({"watchNamespaces": ["a" * 64]}, "/watchNamespaces/0"),
    ({"watchNamespaces": ["models", "models"]}, "/watchNamespaces"),
    ({"leaderElection": {"leaseDuration": 0}}, "/leaderElection/leaseDuration"),
    ({"repo": {"pollInterval": "30 seconds"}}, "/repo/pollInterval"),
    ({"repo": {"fetchRetries": 11}}, "/repo/fetchRetries"),
    ({"repo": {"token": {"secretName": "Git_Token"}}}, "/repo/token/secretName"),
    ({"repo": {"token": {"value": "hunter2"}}}, "/repo/token"),
    ({"webhook": {"secret": {"value": "hunter2"}}}, "/webhook/secret"),
    ({"webhook": {"ratePerSecond": 0}}, "/webhook/ratePerSecond"),
    ({"webhook": {"unauthenticatedRatePerSecond": 0}}, "/webhook/unauthenticatedRatePerSecond"),
    ({"webhook": {"unauthenticatedBurst": 0}}, "/webhook/unauthenticatedBurst"),
    ({"logLevel": "verbose"}, "/logLevel"),
    ({"workers": 0}, "/workers"),
    ({"prometheus": {"profile": "datadog"}}, "/prometheus/profile"),
    ({"prometheus": {"url": "prometheus:9090"}}, "/prometheus/url"),
    ({"service": {"port": 70000}}, "/service/port"),
    ({"podAntiAffinity": "always"}, "/podAntiAffinity"),
    ({"notifications": {"notifiers": [{"kind": "email", "urlSecret": {"secretName": "x"}}]}},
     "/notifications/notifiers/0/kind"),
    ({"notifications": {"notifiers": [{"kind": "slack", "url": "https://hooks.slack.com/x"}]}},
     "/notifications/notifiers/0"),
    ({"ingress": {"hosts": ["https://canaryd.example.com"]}}, "/ingress/hosts/0"),
    # defaultPolicy is checked against the RolloutPolicy schema (canaryd.schema), not only by the daemon
    ({"defaultPolicy": {"steps": ["ten"]}}, "/defaultPolicy/steps/0"),
    ({"defaultPolicy": {"step": [10, 50]}}, "/defaultPolicy"),
    ({"defaultPolicy": {"analysis": {"statistics": {"alpha": 0.9}}}}, "/defaultPolicy/analysis/statistics/alpha"),
    ({"defaultPolicy": {"target": {"name": "iris"}}}, "/defaultPolicy"),
])
def test_schema_rejects_bad_values(override: dict[str, Any], field: str) -> None:
    message = render_error(merge(MINIMAL, override))
    assert "schema" in message or "at '" in message, message
    assert field in message, message


@pytest.mark.parametrize("url", [
    "https://user:hunter2@git.example.com/ml/cfg.git",
    "https://ghp_token@git.example.com/ml/cfg.git",
    "HTTP://u:p@git.example.com/cfg.git",
])
def test_schema_rejects_credentials_in_urls(url: str) -> None:
    assert "repo.url must not contain credentials" in render_error(merge(MINIMAL, {"repo": {"url": url}}))
    assert "prometheus.url must not contain credentials" in render_error(merge(MINIMAL, {"prometheus": {"url": url}}))


@pytest.mark.parametrize("url", [
    "https://git.example.com/ml/cfg.git", "ssh://git@git.example.com/ml/cfg.git", "git@git.example.com:ml/cfg.git",
])
def test_schema_accepts_repo_urls(url: str) -> None:
    assert config_file(merge(MINIMAL, {"repo": {"url": url}}))["repo"]["url"] == url


@pytest.mark.parametrize(("override", "needle"), [
    ({"repo": {"token": {"secretName": "a"}, "ssh": {"secretName": "b"}}}, "not both"),
    ({"repo": {"ssh": {"secretName": "b", "knownHostsKey": ""}}}, "host key"),
    ({"prometheus": {"basicAuth": {"passwordSecretName": "p"}}}, "prometheus.basicAuth.username"),
    ({"prometheus": {"ca": {"secretName": "a", "configMapName": "b"}}}, "prometheus.ca"),
    ({"ingress": {"enabled": True, "hosts": []}}, "ingress.hosts"),
    ({"ingress": {"enabled": True, "hosts": ["c.example.com"]}, "webhook": {"enabled": False}}, "webhook.enabled"),
])
def test_cross_field_checks(override: dict[str, Any], needle: str) -> None:
    assert needle in render_error(merge(MINIMAL, override))


def test_values_schema_is_draft_07_and_closed() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])


# ---------------------------------------------------------------------------------------------
# Kubernetes schemas


def _validate(doc: dict[str, Any], version: str) -> None:
    from kubernetes_validate import utils as kv

    kv.validate(doc, kv.latest_version() if version == "latest" else version, strict=True)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_name", ["default", "full"])
def test_manifests_match_kubernetes_schemas(values_name: str, kube_version: str) -> None:
    pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the dev extras)")
    docs = render(ci_values(values_name))
    checked = 0
    for doc in docs:
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            _check_service_monitor(doc)
            continue
        _validate(doc, kube_version)
        checked += 1
    assert checked >= 8


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_crd_matches_kubernetes_schema(kube_version: str) -> None:
    pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the dev extras)")
    _validate(yaml.safe_load((CHART_DIR / "crds" / "modelrollout.yaml").read_text()), kube_version)


def _check_service_monitor(doc: dict[str, Any]) -> None:
    """No schema ships for the Prometheus Operator's CRD: the fields it needs, loosely."""
    assert doc["kind"] == "ServiceMonitor"
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    spec = doc["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels"}
    assert isinstance(spec["selector"]["matchLabels"], dict)
    for ep in spec["endpoints"]:
        assert set(ep) <= {"port", "path", "scheme", "interval", "scrapeTimeout", "relabelings", "metricRelabelings"}
        assert re.fullmatch(r"[0-9]+(ms|s|m|h)", ep["interval"])
        assert re.fullmatch(r"[0-9]+(ms|s|m|h)", ep["scrapeTimeout"])


# ---------------------------------------------------------------------------------------------
# security


def test_security_contexts() -> None:
    for values in (MINIMAL, full()):
        docs = render(values)
        pod = pod_spec(docs)
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True
        assert psc["runAsUser"] == 10001
        assert psc["fsGroup"] == 10001
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = container(docs)["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["runAsUser"] == 10001
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["privileged"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert "add" not in sc["capabilities"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert not any("hostPath" in v for v in volumes.values())
        # The root filesystem is read-only: git's checkout and /tmp are emptyDirs with a size limit.
        mounts = {m["mountPath"]: m["name"] for m in container(docs)["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]] and volumes[mounts["/tmp"]]["emptyDir"]["sizeLimit"]
        assert "emptyDir" in volumes[mounts["/var/lib/canaryd"]]
        assert env(docs)["HOME"] == "/tmp"
        assert pod["automountServiceAccountToken"] is True  # in-cluster config needs the token
        assert pod["enableServiceLinks"] is False


def test_service_account_token_is_not_automounted_by_default() -> None:
    sa = one(render(), "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False


def test_secret_files_are_group_readable_only() -> None:
    pod = pod_spec(render(full()))
    secrets = next(v for v in pod["volumes"] if v["name"] == "secrets")
    assert secrets["projected"]["defaultMode"] == 0o440
    mount = next(m for m in container(render(full()))["volumeMounts"] if m["name"] == "secrets")
    assert mount["readOnly"] is True


SENTINELS = ("hunter2-token", "s3cr3t-webhook", "-----BEGIN OPENSSH PRIVATE KEY-----", "https://hooks.slack.com/T0/B0/x")


def test_secret_values_are_never_rendered() -> None:
    """Secrets are referenced by name and key only; the chart has no value that could carry one."""
    values = full()
    files = render_files(values)
    docs = render(values)
    text = "\n".join(files.values())
    assert by_kind(docs, "Secret") == [], "the chart never creates a Secret"
    for sentinel in SENTINELS:
        assert sentinel not in text
    # Secret names appear only as volume sources (and in NOTES as hints), never as env values.
    for e in container(docs).get("env", []):
        assert "secretKeyRef" not in e.get("valueFrom", {}), "secrets are files, not environment variables"
    cm_text = json.dumps([d for d in by_kind(docs, "ConfigMap")])
    for name in ("canaryd-git-ssh", "canaryd-webhook", "canaryd-prometheus-token", "canaryd-slack", "canaryd-hook"):
        assert name not in cm_text, "the config file holds paths, not Secret names"
    # No value anywhere in the schema can hold a secret: a `value` next to a secret name is rejected.
    for override in ({"repo": {"token": {"value": SENTINELS[0]}}}, {"webhook": {"secret": {"value": SENTINELS[1]}}},
                     {"repo": {"ssh": {"privateKey": SENTINELS[2]}}},
                     {"notifications": {"notifiers": [{"kind": "slack", "url": SENTINELS[3]}]}},
                     {"extraEnv": [{"name": "X"}], "webhookSecret": SENTINELS[1]}):
        render_error(merge(MINIMAL, override))


def test_rbac_has_no_wildcards() -> None:
    for values in (MINIMAL, full(), merge(full(), {"watchNamespaces": []})):
        for role in [d for d in render(values) if d["kind"] in ("Role", "ClusterRole")]:
            for rule in role["rules"]:
                for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                    assert "*" not in rule.get(key, []), (role["metadata"]["name"], rule)
                assert "nonResourceURLs" not in rule
                assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
                assert not ({"secrets"} & set(rule["resources"])), "canaryd never reads Secrets through the API"


# ---------------------------------------------------------------------------------------------
# RBAC == the API calls the daemon makes

#: Kubernetes client methods -> RBAC verb.
_VERB = {"read": "get", "get": "get", "list": "list", "create": "create", "replace": "update", "patch": "patch",
         "delete": "delete", "watch": "watch"}
_CALL = re.compile(r"^(read|get|list|create|replace|patch|delete|watch)_(namespaced_|cluster_)?([a-z_]+?)(_status)?$")
#: Only run from the CLI by people with their own kubeconfig, never by the daemon.
_CLI_ONLY = {"canaryd/operator.py", "canaryd/cli.py", "canaryd/plan.py", "canaryd/status.py"}


def _custom_resources(module: str) -> set[tuple[str, str]]:
    """(group, plural) a module's *_custom_object calls act on."""
    if module in ("canaryd/adapters/kserve.py", "canaryd/adapters/isvc_cache.py"):
        from canaryd.adapters.kserve import STRATEGIES

        return {(s.group, s.plural) for s in STRATEGIES.values()}
    if module == "canaryd/adapters/statestore.py":
        from canaryd.rollout.state import GROUP, PLURAL

        return {(GROUP, PLURAL)}
    raise AssertionError(f"{module} calls a custom-object API: teach this test (and the chart's RBAC) about it")


_BUILTIN = {"event": ("", "events"), "lease": ("coordination.k8s.io", "leases")}


def daemon_api_calls() -> set[tuple[str, str, str]]:
    """{(group, resource, verb)} of every Kubernetes API call in the daemon's code, found in the source."""
    found: set[tuple[str, str, str]] = set()
    for path in sorted((ROOT / "canaryd").rglob("*.py")):
        module = path.relative_to(ROOT).as_posix()
        if module.startswith("canaryd/sandbox/") or module in _CLI_ONLY:
            continue
        source = path.read_text()
        if "kubernetes" not in source:
            continue
        for node in ast.walk(ast.parse(source)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            m = _CALL.match(node.func.attr)
            if m is None or "_api" not in ast.unparse(node.func.value):
                continue
            verb, kind = _VERB[m.group(1)], m.group(3)
            if any(kw.arg == "watch" for kw in node.keywords):
                verb = "watch"
            sub = "/status" if m.group(4) else ""
            if kind in ("custom_object", "custom_objects"):
                found |= {(group, plural + sub, verb) for group, plural in _custom_resources(module)}
            elif kind in _BUILTIN:
                found.add((*_BUILTIN[kind], verb))
            else:
                raise AssertionError(f"{module}: {node.func.attr}: unknown API call; add its RBAC rule to the chart")
    return found


def test_daemon_api_calls_are_found() -> None:
    calls = daemon_api_calls()
    # A sanity check of the scanner itself against calls known to exist today.
    assert ("canaryd.io", "modelrollouts", "update") in calls
    assert ("serving.kserve.io", "inferenceservices", "patch") in calls
    assert ("", "events", "create") in calls


def test_rbac_is_exactly_what_the_daemon_calls() -> None:
    calls = daemon_api_calls()
    granted = rbac_rules(merge(MINIMAL, {"prune": True}))
    missing = calls - granted
    assert not missing, f"the daemon makes API calls the chart does not allow: {sorted(missing)}"
    # Leader election is granted ahead of the daemon's code for it (get/create/update on its Lease).
    extra = granted - calls - LEASE_VERBS
    assert not extra, f"the chart grants verbs the daemon never uses: {sorted(extra)}"
    if any(g == "coordination.k8s.io" for g, _r, _v in calls):
        lease_calls = {c for c in calls if c[0] == "coordination.k8s.io"}
        assert lease_calls == {g for g in granted if g[0] == "coordination.k8s.io"}


def test_delete_is_granted_only_with_prune() -> None:
    without = rbac_rules()
    assert not any(verb == "delete" for _g, _r, verb in without)
    with_prune = rbac_rules(merge(MINIMAL, {"prune": True}))
    assert {(g, r) for g, r, v in with_prune if v == "delete"} == {
        ("serving.kserve.io", "inferenceservices"), ("serving.kubeflow.org", "inferenceservices"),
        ("canaryd.io", "modelrollouts")}


def test_aggregated_roles_are_for_people_not_for_canaryd() -> None:
    values = merge(MINIMAL, {"rbac": {"aggregateToDefaultRoles": True}})
    docs = render(values)
    view = next(d for d in by_kind(docs, "ClusterRole") if d["metadata"]["name"].endswith("-view"))
    edit = next(d for d in by_kind(docs, "ClusterRole") if d["metadata"]["name"].endswith("-edit"))
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert view["rules"] == [{"apiGroups": ["canaryd.io"], "resources": ["modelrollouts"],
                              "verbs": ["get", "list", "watch"]}]
    # `canaryd pause/resume/promote/abort` merge-patch spec.control (canaryd/operator.py).
    assert edit["rules"] == [{"apiGroups": ["canaryd.io"], "resources": ["modelrollouts"], "verbs": ["patch"]}]
    assert rbac_rules(values) == rbac_rules(MINIMAL)


def test_regression_the_modelrollout_was_a_trust_root_only_canaryd_writes_its_status() -> None:
    """Issue 13 item 1: what canaryd remembers is behind the status subresource, which no role of the
    chart but canaryd's own grants; people may patch the spec (their requests), never the status."""
    values = merge(MINIMAL, {"rbac": {"aggregateToDefaultRoles": True}})
    docs = render(values)
    crd = yaml.safe_load((CHART_DIR / "crds" / "modelrollout.yaml").read_text())
    assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}
    granted_status = [(d["metadata"]["name"], r) for d in by_kind(docs, "ClusterRole") + by_kind(docs, "Role")
                      for r in d["rules"] if any(res.startswith("modelrollouts/") for res in r["resources"])]
    assert granted_status and all(not name.endswith(("-view", "-edit")) for name, _ in granted_status), granted_status
    assert ("canaryd.io", "modelrollouts/status", "update") in rbac_rules(values)


def test_rbac_can_be_turned_off_with_an_existing_service_account() -> None:
    docs = render(merge(MINIMAL, {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops-sa"}}))
    assert not [d for d in docs if d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding",
                                                  "ServiceAccount")]
    assert pod_spec(docs)["serviceAccountName"] == "ops-sa"


# ---------------------------------------------------------------------------------------------
# labels, NOTES, dashboard, docs


def test_standard_labels_everywhere() -> None:
    docs = render(merge(full(), {"commonLabels": {"team": "ml"}}))
    for d in docs:
        labels = d["metadata"]["labels"]
        for key in STANDARD_LABELS:
            assert key in labels, (d["kind"], d["metadata"]["name"], key)
        assert labels["app.kubernetes.io/name"] == "canaryd"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/part-of"] == "canaryd"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "canaryd-0.1.0"
        assert labels["team"] == "ml"
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert all(k in pod_labels for k in STANDARD_LABELS)


def test_names_follow_the_release() -> None:
    docs = render(release="prod")
    assert one(docs, "Deployment")["metadata"]["name"] == "prod-canaryd"
    docs = render(merge(MINIMAL, {"fullnameOverride": "cd"}), release="prod")
    assert one(docs, "Deployment")["metadata"]["name"] == "cd"


def test_notes_tell_what_to_do_next() -> None:
    text = notes()
    assert "canaryd status" in text
    assert f"http://{RELEASE}.{NAMESPACE}.svc:8080/hooks/git" in text
    assert "no webhook secret is set" in text
    assert "create secret generic canaryd-webhook" in text
    assert "repo.token.secretName" in text

    text = notes(full())
    assert "https://canaryd.example.com/hooks/git" in text
    assert "no webhook secret" not in text
    assert "canaryd-git-ssh" in text and "canaryd-webhook" in text
    assert "models-a, models-b" in text

    text = notes(merge(MINIMAL, {"repo": {"url": "git@git.example.com:ml/cfg.git"}}))
    assert "SSH URL but no key" in text and "repo.ssh.secretName" in text


def _metric_names() -> set[str]:
    source = (ROOT / "canaryd" / "daemon" / "metrics.py").read_text()
    return set(re.findall(r'(?:Gauge|Counter|Histogram|Summary)\(\s*"(canaryd_[a-z_]+)"', source))


def test_dashboard_uses_only_metrics_canaryd_exports() -> None:
    dashboard = json.loads((CHART_DIR / "files" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|count|sum)$", "", m) for e in exprs for m in re.findall(r"canaryd_[a-z_]+", e)}
    known = _metric_names()
    assert len(known) >= 10
    assert used <= known, used - known
    assert len(used) >= 10, "the dashboard covers most of canaryd's metrics"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def _leaf_paths(values: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in ("resources", "podSecurityContext", "securityContext",
                                                              "livenessProbe", "readinessProbe", "labels"):
            out += _leaf_paths(value, path + ".")
        else:
            out.append(path)
    return out


def test_every_value_is_documented() -> None:
    doc = (ROOT / "docs" / "helm.md").read_text()
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    missing = [p for p in _leaf_paths(values) if f"`{p}`" not in doc]
    assert not missing, f"docs/helm.md does not describe: {missing}"


def test_prometheus_max_sample_age_reaches_the_config_only_when_set() -> None:
    assert "maxSampleAge" not in config_file(MINIMAL)["prometheus"]
    assert config_file(merge(MINIMAL, {"prometheus": {"maxSampleAge": "1m"}}))["prometheus"]["maxSampleAge"] == "1m"
