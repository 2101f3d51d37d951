"""Helpers for the Helm chart tests: render `charts/canaryd` with the real Helm (offline) and read RBAC.

Helm runs in-process through `helm-python-sdk` (the Helm v4 Go SDK as a shared library, driven with
ctypes): no helm binary, no cluster, no network. Import the helpers from other test modules too, e.g.

    from tests.chart.conftest import rbac_rules, render

    rules = rbac_rules({"repo": {"url": "https://git.example.com/cfg.git"}, "prune": True})
    assert ("canaryd.io", "modelrollouts", "update") in rules
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "canaryd"
RELEASE = "canaryd"
NAMESPACE = "canaryd-system"
#: The smallest values an install accepts (repo.url is required).
MINIMAL: dict[str, Any] = {"repo": {"url": "https://git.example.com/ml/serving-config.git"}}


def helm() -> Any:
    """The `helm_python` module; the calling test is skipped when helm-python-sdk is not installed."""
    return pytest.importorskip("helm_python", reason="pip install helm-python-sdk (the dev extras) for chart tests")


@functools.cache
def _chart() -> Any:
    # Loaded once per session: the Chart handle is immutable and thread-safe.
    return helm().Chart.load(str(CHART_DIR))


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of values (dicts merge, anything else is replaced), like Helm's -f layering."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def ci_values(name: str) -> dict[str, Any]:
    """Values from `charts/canaryd/ci/<name>-values.yaml`."""
    data = yaml.safe_load((CHART_DIR / "ci" / f"{name}-values.yaml").read_text())
    assert isinstance(data, dict)
    return data


def render_files(values: Mapping[str, Any] | None = None, *, namespace: str = NAMESPACE,
                 release: str = RELEASE) -> dict[str, str]:
    """`helm template`: template path (e.g. `canaryd/templates/rbac.yaml`) -> rendered text.

    `values` are the user's values (merged over values.yaml by Helm, and checked against
    values.schema.json); None = MINIMAL. Raises helm_python.HelmError on a schema or template error.
    """
    vals = dict(MINIMAL if values is None else values)
    # A JSON round trip: Helm gets exactly what a values file would give it (no Python-only types).
    return dict(_chart().render(values=json.loads(json.dumps(vals)), name=release, namespace=namespace,
                                is_install=True))


def render(values: Mapping[str, Any] | None = None, *, namespace: str = NAMESPACE,
           release: str = RELEASE) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders for `values` (NOTES.txt and empty documents left out)."""
    docs: list[dict[str, Any]] = []
    for path, text in sorted(render_files(values, namespace=namespace, release=release).items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                assert isinstance(doc, dict), f"{path}: not a mapping"
                docs.append(doc)
    return docs


def notes(values: Mapping[str, Any] | None = None, **kw: Any) -> str:
    """The rendered NOTES.txt."""
    files = render_files(values, **kw)
    return next(text for path, text in files.items() if path.endswith("templates/NOTES.txt"))


def render_error(values: Mapping[str, Any]) -> str:
    """The message Helm fails with for `values` (the test fails if rendering succeeds)."""
    h = helm()
    with pytest.raises(h.HelmError) as info:
        render_files(values)
    return str(info.value)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def service_account(docs: list[dict[str, Any]]) -> tuple[str, str]:
    """(namespace, name) of the ServiceAccount the Deployment runs as."""
    dep = one(docs, "Deployment")
    return dep["metadata"]["namespace"], dep["spec"]["template"]["spec"]["serviceAccountName"]


def rbac_grants(values: Mapping[str, Any] | None = None, **kw: Any) -> set[tuple[str, str, str, str]]:
    """What canaryd's ServiceAccount may do: {(scope, apiGroup, resource, verb)}.

    `scope` is a namespace for rules granted by a RoleBinding, "*" for a ClusterRoleBinding. Only
    bindings whose subjects include the Deployment's ServiceAccount count (the optional
    aggregate-to-view/edit ClusterRoles are for people, not for canaryd).
    """
    docs = render(values, **kw)
    sa_ns, sa_name = service_account(docs)
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
             for d in docs if d.get("kind") in ("Role", "ClusterRole")}
    grants: set[tuple[str, str, str, str]] = set()
    for binding in docs:
        if binding.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa_name and s.get("namespace") == sa_ns
                   for s in binding.get("subjects") or []):
            continue
        ref = binding["roleRef"]
        scope = binding["metadata"]["namespace"] if binding["kind"] == "RoleBinding" else "*"
        role_ns = scope if ref["kind"] == "Role" else None
        role = roles.get((ref["kind"], role_ns, ref["name"]))
        assert role is not None, f"{binding['kind']} {binding['metadata']['name']} refers to a missing {ref}"
        for rule in role.get("rules") or []:
            for group in rule.get("apiGroups") or []:
                for resource in rule.get("resources") or []:
                    for verb in rule.get("verbs") or []:
                        grants.add((scope, group, resource, verb))
    return grants


def rbac_rules(values: Mapping[str, Any] | None = None, **kw: Any) -> set[tuple[str, str, str]]:
    """What canaryd's ServiceAccount may do, whatever the scope: {(apiGroup, resource, verb)}."""
    return {(group, resource, verb) for _scope, group, resource, verb in rbac_grants(values, **kw)}


def config_file(values: Mapping[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    """The daemon settings file (`config.yaml` of the chart's ConfigMap), parsed."""
    docs = render(values, **kw)
    dep = one(docs, "Deployment")
    cm_name = next(v["configMap"]["name"] for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    cm = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == cm_name)
    data = yaml.safe_load(cm["data"]["config.yaml"])
    assert isinstance(data, dict)
    return data
