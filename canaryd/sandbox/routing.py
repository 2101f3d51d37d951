"""The data plane's routing table: which emulated revision answers a request, from API objects alone.

Pure: built from the InferenceService and Knative Revision objects as read from the API, so the same
table can be tested without a server and rebuilt from scratch on every refresh (no incremental state
to drift). Like a Knative ingress, it routes a service's untagged host by the traffic percents and a
tag host (`{tag}-{isvc}`) to the tagged revision only, whatever its percent.

A v1beta1 service with a transformer is entered through it, as KServe's ingress does: the service's host
goes to a transformer revision (by `status.components.transformer.traffic`), and the transformer calls
the predictor, whose own split picks the predictor revision (`next_hop`).

A KFServing `serving.kubeflow.org/v1alpha2` service is routed as its Istio VirtualService routes it: the
weights are `status.traffic` (default endpoint) and `status.canaryTraffic` (canary endpoint), and each
endpoint's share goes to the newest Ready revision of that endpoint's Knative Service, as Knative routes
`latestRevision: true`. Each endpoint's own host (`iris-predictor-canary`) reaches that revision whatever
its weight, as the Knative Service's host does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

STORAGE_URI_ANNOTATION = "sandbox.canaryd.io/storage-uri"
ISVC_LABEL = "serving.kserve.io/inferenceservice"
KFS_ISVC_LABEL = "serving.kubeflow.org/inferenceservice"
COMPONENT_LABEL = "component"
CONFIGURATION_LABEL = "serving.knative.dev/configuration"
SERVICE_LABEL = "serving.knative.dev/service"
V1ALPHA2 = "serving.kubeflow.org/v1alpha2"
DEFAULT_COMPONENT = "predictor"
TRANSFORMER = "transformer"
COMPONENTS = ("predictor", "transformer", "explainer")


@dataclass(frozen=True)
class Revision:
    namespace: str
    name: str
    isvc: str
    component: str
    configuration: str
    storage_uri: str | None
    ready: bool
    service: str = ""  # the Knative Service (`iris-predictor`, or `iris-predictor-default` for v1alpha2)

    @property
    def knative_service(self) -> str:
        return self.service or f"{self.isvc}-{self.component}"

    @property
    def number(self) -> int:
        """Knative's generation suffix (`...-00003` -> 3); -1 when the name has none."""
        tail = self.name.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1


@dataclass(frozen=True)
class TrafficTarget:
    revision: str
    percent: int
    tag: str | None


@dataclass(frozen=True)
class ComponentRoute:
    """The traffic of one component of one InferenceService (one Knative Service)."""

    namespace: str
    isvc: str
    component: str
    targets: tuple[TrafficTarget, ...]
    # KFServing v1alpha2: the targets' tags are endpoints, each with its own host (`iris-predictor-canary`)
    endpoint_hosts: bool = False

    @property
    def knative_service(self) -> str:
        return f"{self.isvc}-{self.component}"

    @property
    def tags(self) -> frozenset[str]:
        return frozenset(t.tag for t in self.targets if t.tag)


@dataclass(frozen=True)
class Address:
    """What a request asked for: a component of a service, and a tag if it used a tag host."""

    namespace: str
    isvc: str
    component: str
    tag: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.namespace, self.isvc, self.component)


@dataclass(frozen=True)
class Selected:
    revision: Revision
    tag: str | None


@dataclass(frozen=True)
class Unavailable:
    """The service exists but nothing Ready serves it (a Knative ingress answers 503)."""

    reason: str


@dataclass(frozen=True)
class RoutingTable:
    routes: Mapping[tuple[str, str, str], ComponentRoute] = field(default_factory=dict)
    revisions: Mapping[tuple[str, str], Revision] = field(default_factory=dict)
    # (namespace, first host label) -> address; built once so a lookup needs no name parsing
    names: Mapping[tuple[str, str], Address] = field(default_factory=dict)

    def address(self, namespace: str, label: str) -> Address | None:
        """The address behind a host's first label (`iris`, `iris-predictor`, `prev-iris`, ...)."""
        return self.names.get((namespace, label))

    def select(self, address: Address, draw: float) -> Selected | Unavailable:
        """Choose the revision for one request; `draw` is uniform in [0, 1) (deterministic upstream)."""
        route = self.routes.get(address.key)
        if route is None:
            return Unavailable(f"no traffic for {address.namespace}/{address.isvc} {address.component}")
        if address.tag is not None:
            for target in route.targets:
                if target.tag == address.tag:
                    revision = self._ready(route.namespace, target.revision)
                    if revision is None:
                        return Unavailable(f"revision {target.revision} (tag {address.tag}) is not ready")
                    return Selected(revision, address.tag)
            return Unavailable(f"no revision tagged {address.tag}")
        candidates = [
            (target, revision)
            for target in route.targets
            if target.percent > 0 and (revision := self._ready(route.namespace, target.revision)) is not None
        ]
        if not candidates:
            return Unavailable(f"no ready revision with traffic for {route.knative_service}")
        total = sum(target.percent for target, _ in candidates)
        point = draw * total
        for target, revision in candidates:
            point -= target.percent
            if point < 0:
                return Selected(revision, None)
        return Selected(candidates[-1][1], None)  # only reached through float rounding at draw ~ 1

    def _ready(self, namespace: str, name: str) -> Revision | None:
        revision = self.revisions.get((namespace, name))
        return revision if revision is not None and revision.ready else None


def _condition_true(obj: Mapping[str, Any], kind: str) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(isinstance(c, dict) and c.get("type") == kind and str(c.get("status")) == "True" for c in conditions)


def parse_revision(obj: Mapping[str, Any]) -> Revision | None:
    meta = obj.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not isinstance(namespace, str):
        return None
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    component = str(labels.get(COMPONENT_LABEL, DEFAULT_COMPONENT))
    isvc = str(labels.get(ISVC_LABEL) or labels.get(KFS_ISVC_LABEL) or "")
    uri = annotations.get(STORAGE_URI_ANNOTATION)
    configuration = str(labels.get(CONFIGURATION_LABEL, f"{isvc}-{component}"))
    return Revision(
        namespace=namespace,
        name=name,
        isvc=isvc,
        component=component,
        configuration=configuration,
        storage_uri=uri if isinstance(uri, str) else None,
        ready=_condition_true(obj, "Ready"),
        service=str(labels.get(SERVICE_LABEL) or configuration),
    )


def parse_routes(obj: Mapping[str, Any], revisions: Iterable[Revision] = ()) -> list[ComponentRoute]:
    """One route per component with a `traffic` list in the status, and always one for the predictor.

    A service that exists but has no traffic yet still gets a (empty) predictor route, so that requests
    to it are answered 503 (exists, nothing ready), not 404 (no such host); so does a transformer in the
    spec, since requests enter through it. `revisions` are needed for a v1alpha2 service, whose status
    names no serving revision.
    """
    meta = obj.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not isinstance(namespace, str):
        return []
    if obj.get("apiVersion") == V1ALPHA2:
        return [v1alpha2_route(namespace, name, obj.get("status") or {}, revisions)]
    components = (obj.get("status") or {}).get("components") or {}
    routes = []
    for component, status in components.items():
        if not isinstance(status, dict) or not isinstance(status.get("traffic"), list):
            continue
        targets = tuple(
            TrafficTarget(
                revision=str(entry["revisionName"]),
                percent=int(entry.get("percent") or 0),
                tag=str(entry["tag"]) if entry.get("tag") else None,
            )
            for entry in status["traffic"]
            if isinstance(entry, dict) and entry.get("revisionName")
        )
        routes.append(ComponentRoute(namespace, name, str(component), targets))
    spec = obj.get("spec") or {}
    for component in (DEFAULT_COMPONENT, TRANSFORMER):
        wanted = component == DEFAULT_COMPONENT or isinstance(spec.get(component), Mapping)
        if wanted and not any(route.component == component for route in routes):
            routes.append(ComponentRoute(namespace, name, component, ()))
    return routes


def v1alpha2_route(
    namespace: str, name: str, status: Mapping[str, Any], revisions: Iterable[Revision]
) -> ComponentRoute:
    """The predict route of a KFServing service: endpoint weights from the status, each to the newest Ready
    revision of that endpoint's Knative Service (its entry component: the transformer if it has one)."""
    targets = []
    for endpoint, key in (("default", "traffic"), ("canary", "canaryTraffic")):
        weight = status.get(key)
        weight = weight if isinstance(weight, int) and not isinstance(weight, bool) and weight > 0 else 0
        entries = status.get(endpoint) or {}
        component = "transformer" if isinstance(entries.get("transformer"), Mapping) else DEFAULT_COMPONENT
        service = f"{name}-{component}-{endpoint}"
        ready = [r for r in revisions if r.namespace == namespace and r.knative_service == service and r.ready]
        if ready:
            targets.append(TrafficTarget(max(ready, key=lambda r: r.number).name, weight, endpoint))
    return ComponentRoute(namespace, name, DEFAULT_COMPONENT, tuple(targets), endpoint_hosts=True)


def build_table(isvcs: Iterable[Mapping[str, Any]], revisions: Iterable[Mapping[str, Any]]) -> RoutingTable:
    parsed = [r for r in (parse_revision(obj) for obj in revisions) if r is not None]
    revs = {(r.namespace, r.name): r for r in parsed}
    routes: dict[tuple[str, str, str], ComponentRoute] = {}
    for obj in isvcs:
        for route in parse_routes(obj, parsed):
            routes[(route.namespace, route.isvc, route.component)] = route
    names: dict[tuple[str, str], Address] = {}
    # Plain names first, so that a tag host never shadows a real service whose name has a dash.
    for (ns, isvc, component), route in sorted(routes.items()):
        if component == DEFAULT_COMPONENT:
            entry = TRANSFORMER if (ns, isvc, TRANSFORMER) in routes else component
            names.setdefault((ns, isvc), Address(ns, isvc, entry))
        names.setdefault((ns, route.knative_service), Address(ns, isvc, component))
    for (ns, isvc, component), route in sorted(routes.items()):
        for tag in sorted(route.tags):
            if route.endpoint_hosts:
                names.setdefault((ns, f"{route.knative_service}-{tag}"), Address(ns, isvc, component, tag))
                continue
            if component == DEFAULT_COMPONENT:
                names.setdefault((ns, f"{tag}-{isvc}"), Address(ns, isvc, component, tag))
            names.setdefault((ns, f"{tag}-{route.knative_service}"), Address(ns, isvc, component, tag))
    return RoutingTable(routes=routes, revisions=revs, names=names)


def next_hop(address: Address) -> Address | None:
    """Where a component sends the request on: a transformer calls its service's predictor (by the
    predictor's split, whatever tag reached the transformer); a predictor answers itself."""
    if address.component == TRANSFORMER:
        return Address(address.namespace, address.isvc, DEFAULT_COMPONENT)
    return None


def split_host(host: str, domain: str) -> tuple[str, str] | None:
    """`prev-iris.models.example.com:8080` -> (`prev-iris`, `models`); None if not under `domain`."""
    hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    hostname = hostname.lower().rstrip(".")
    suffix = "." + domain.lower()
    if not hostname.endswith(suffix):
        return None
    parts = hostname[: -len(suffix)].split(".")
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]
