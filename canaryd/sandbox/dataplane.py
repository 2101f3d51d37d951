"""The sandbox data plane: an ingress that answers as emulated model revisions, and their queue-proxy metrics.

It stands in for Knative's ingress + activator + queue-proxy + the model server, so that canaryd's
analysis reads the same metric names, labels and units from Prometheus as on a real KServe cluster.
Routing comes only from API objects (InferenceService status traffic, Knative Revisions), exactly what
the KServe controller emulator writes, so the two sandbox parts meet only through the Kubernetes API.
KFServing's `serving.kubeflow.org/v1alpha2` services are routed too, when that API is served.

A service with a transformer answers in two hops, as on KServe: the transformer revision (chosen by the
transformer's split) and then the predictor revision (by the predictor's split). Each hop behaves as its
own version says and records its own queue-proxy series; a hop that fails answers at once (a failed
transformer never calls the predictor); the response's latency is the sum of the hops'.

Everything that decides a request's fate is deterministic given the scenario seed: which revision a
request goes to (a per-service draw), whether it fails and how slow it is (per-revision draws), and the
latency that is recorded (the emulated one, not wall time). Two runs with the same traffic order give
the same metrics.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from canaryd.httpserver import ThreadedServer
from canaryd.sandbox.routing import (
    Address,
    Revision,
    RoutingTable,
    Selected,
    Unavailable,
    build_table,
    next_hop,
    split_host,
)
from canaryd.sandbox.scenario import Scenario, VersionBehaviour, unit_draw

log = logging.getLogger(__name__)

ISVC_GROUP, ISVC_VERSION, ISVC_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
KFS_GROUP, KFS_VERSION = "serving.kubeflow.org", "v1alpha2"
REV_GROUP, REV_VERSION, REV_PLURAL = "serving.knative.dev", "v1", "revisions"

# knative/serving pkg/queue/request_metric.go (v1.15-v1.18), opencensus view.Distribution bounds in ms.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    5, 10, 20, 40, 60, 80, 100, 150, 200, 250, 300, 350, 400, 450, 500, 600,
    700, 800, 900, 1000, 2000, 5000, 10000, 20000, 50000, 100000,
)  # fmt: skip
# queue-proxy's route_tag when tag-header-based routing is off (the Knative default): the ingress adds
# no Knative-Serving-Tag header, so every request, tag host or not, is labelled "DISABLED".
ROUTE_TAG_DISABLED = "DISABLED"
QUEUE_PROXY_CONTAINER = "queue-proxy"

_LE_INF = 'le="+Inf"'
_PATH_STYLE = re.compile(r"^/serving/(?P<ns>[^/]+)/(?P<name>[^/]+)(?:/.*)?$")


@dataclass(frozen=True)
class Outcome:
    status: int
    latency_ms: float


def emulate(seed: int, revision: str, n: int, behaviour: VersionBehaviour) -> Outcome:
    """The fate of request `n` of `revision`: a pure function, so the error schedule is reproducible."""
    status = 500 if unit_draw(seed, revision, n) < behaviour.error_rate else 200
    model = behaviour.latency_ms
    if unit_draw(seed, revision + ":lat", n) < 0.01:
        latency = model.p99
    else:
        spread = 2.0 * unit_draw(seed, revision + ":jitter", n) - 1.0
        latency = model.base * (1.0 + model.jitter * spread)
    return Outcome(status, max(0.0, latency))


@dataclass
class _Series:
    count: int = 0
    total_ms: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_MS))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: tuple[tuple[str, str], ...], extra: str = "") -> str:
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    if extra:
        body = f"{body},{extra}" if body else extra
    return "{" + body + "}"


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)


class QueueProxyMetrics:
    """Request counters and latency histograms per series, rendered as Knative's opencensus exporter does.

    Kept as neutral per-series data (revision, pod, code, latency) so that another metrics profile
    (Istio names, the OTel histogram in seconds) is one more `render_*` method, and a pod restart (a
    counter reset) is dropping a revision's series and giving it a new pod name.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[tuple[str, str], ...], _Series] = {}

    def record(self, revision: Revision, pod: str, code: int, route_tag: str, latency_ms: float) -> None:
        labels = {
            "namespace_name": revision.namespace,
            "service_name": revision.knative_service,
            "configuration_name": revision.configuration,
            "revision_name": revision.name,
            "pod_name": pod,
            "container_name": QUEUE_PROXY_CONTAINER,
            "response_code": str(code),
            "response_code_class": f"{code // 100}xx",
            "route_tag": route_tag,
        }
        key = tuple(sorted(labels.items()))  # client_golang writes labels sorted by name
        # queue-proxy records float64(latency.Milliseconds()): whole milliseconds, truncated.
        value = float(math.floor(latency_ms))
        with self._lock:
            series = self._series.setdefault(key, _Series())
            series.count += 1
            series.total_ms += value
            # opencensus puts v in the first bucket with v < bound (strict), unlike Prometheus' v <= le.
            for i, bound in enumerate(LATENCY_BUCKETS_MS):
                if value < bound:
                    series.buckets[i] += 1
                    break

    def render_opencensus(self) -> str:
        with self._lock:
            snapshot = [(k, s.count, s.total_ms, list(s.buckets)) for k, s in sorted(self._series.items())]
        if not snapshot:
            return ""  # client_golang writes no HELP/TYPE for a family without samples
        lines = [
            "# HELP revision_request_count The number of requests that are routed to queue-proxy",
            "# TYPE revision_request_count counter",
        ]
        lines += [f"revision_request_count{_labels(k)} {count}" for k, count, _, _ in snapshot]
        lines += [
            "# HELP revision_request_latencies The response time in millisecond",
            "# TYPE revision_request_latencies histogram",
        ]
        for key, count, total, buckets in snapshot:
            cumulative = 0
            for bound, in_bucket in zip(LATENCY_BUCKETS_MS, buckets, strict=True):
                cumulative += in_bucket
                le = f'le="{_num(bound)}"'
                lines.append(f"revision_request_latencies_bucket{_labels(key, le)} {cumulative}")
            lines.append(f"revision_request_latencies_bucket{_labels(key, _LE_INF)} {count}")
            lines.append(f"revision_request_latencies_sum{_labels(key)} {_num(total)}")
            lines.append(f"revision_request_latencies_count{_labels(key)} {count}")
        return "\n".join(lines) + "\n"


class DataPlane:
    """Ingress + emulated revisions + `/metrics`, on one local HTTP server; routes refreshed from the API."""

    def __init__(
        self,
        kubeconfig: str | Path | None,
        scenario: Scenario,
        *,
        namespaces: list[str] | None = None,
        refresh_s: float = 0.25,
        domain: str = "example.com",
    ) -> None:
        self._kubeconfig = kubeconfig
        self._scenario = scenario
        self._namespaces = list(namespaces) if namespaces else None
        self._refresh_s = refresh_s
        self._domain = domain
        self._table = RoutingTable()  # replaced whole, never mutated: readers need no lock
        self._lock = threading.Lock()  # guards the request counters below
        self._route_counters: dict[tuple[str, str, str], int] = {}
        self._revision_counters: dict[tuple[str, str], int] = {}
        self.metrics = QueueProxyMetrics()
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self._api: Any = None
        self._refreshes = 0
        self._failing = False
        self._server = ThreadedServer(self._app(), name="dataplane")

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def metrics_target(self) -> str:
        """The scrape target for a Prometheus `static_configs` entry."""
        return f"{self._server.host}:{self._server.port}"

    def start(self) -> DataPlane:
        if self._kubeconfig is not None:
            from kubernetes import client, config

            api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(self._kubeconfig)
            )
            self._api = client.CustomObjectsApi(api_client)
            self.refresh()
            self._refresher = threading.Thread(target=self._refresh_loop, name="dp-routes", daemon=True)
            self._refresher.start()
        self._server.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout=10)
        self._server.stop()
        if self._api is not None:
            self._api.api_client.close()

    def __enter__(self) -> DataPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- configuration -----------------------------------------------------------------------------

    def set_scenario(self, scenario: Scenario) -> None:
        self._scenario = scenario

    def set_routes(self, isvcs: list[dict[str, Any]], revisions: list[dict[str, Any]]) -> None:
        """Install a table built from given objects (for use without an API server)."""
        self._table = build_table(isvcs, revisions)

    @property
    def table(self) -> RoutingTable:
        return self._table

    # -- route refresh -----------------------------------------------------------------------------

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self._refresh_s):
            self.refresh()

    def refresh(self) -> bool:
        """Rebuild the table from the API; on any error keep the last one (a blip must not drop routes)."""
        try:
            # InferenceServices first: a revision named in their traffic was created before it, so the
            # revision list read after them contains it.
            isvcs = self._list(ISVC_GROUP, ISVC_VERSION, ISVC_PLURAL)
            isvcs += self._list(KFS_GROUP, KFS_VERSION, ISVC_PLURAL, optional=True)
            revisions = self._list(REV_GROUP, REV_VERSION, REV_PLURAL)
        except Exception as exc:  # any API or connection failure
            if not self._failing:  # once per outage, not every refresh_s
                # Only the type and HTTP status: an ApiException's text carries response headers and body.
                status = getattr(exc, "status", "")
                log.warning(
                    "data plane: route refresh failed, keeping the last routes (%s %s)", type(exc).__name__, status
                )
            self._failing = True
            return False
        if self._failing:
            log.info("data plane: route refresh works again")
        self._failing = False
        self._table = build_table(isvcs, revisions)
        self._refreshes += 1
        return True

    def _list(self, group: str, version: str, plural: str, optional: bool = False) -> list[dict[str, Any]]:
        """All objects of one resource; with `optional`, none when the API is not served (no CRD)."""
        from kubernetes.client.exceptions import ApiException

        try:
            if self._namespaces is None:
                result = self._api.list_cluster_custom_object(group, version, plural, _request_timeout=5)
                return list(result.get("items") or [])
            items: list[dict[str, Any]] = []
            for ns in self._namespaces:
                result = self._api.list_namespaced_custom_object(group, version, ns, plural, _request_timeout=5)
                items += result.get("items") or []
            return items
        except ApiException as exc:
            if optional and exc.status == 404:
                return []
            raise

    # -- request path ------------------------------------------------------------------------------

    def _app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/healthz", self._healthz, methods=["GET"]),
                Route("/metrics", self._metrics, methods=["GET"]),
                Route("/{path:path}", self._ingress, methods=["GET", "POST"]),
            ]
        )

    async def _healthz(self, request: Request) -> Response:
        table = self._table
        return JSONResponse({"ok": True, "routes": len(table.routes), "refreshes": self._refreshes})

    async def _metrics(self, request: Request) -> Response:
        return PlainTextResponse(self.metrics.render_opencensus(), media_type="text/plain; version=0.0.4")

    def _address(self, request: Request, table: RoutingTable) -> Address | None:
        match = _PATH_STYLE.match(request.url.path)
        if match:
            return table.address(match["ns"], match["name"])
        parts = split_host(request.headers.get("host", ""), self._domain)
        return table.address(parts[1], parts[0]) if parts else None

    def _next(self, counters: dict[Any, int], key: Any) -> int:
        with self._lock:
            n = counters.get(key, 0)
            counters[key] = n + 1
            return n

    async def _ingress(self, request: Request) -> Response:
        await request.body()
        table, scenario = self._table, self._scenario
        address = self._address(request, table)
        if address is None:
            return JSONResponse({"error": "no such service"}, status_code=404)
        hops: list[str] = []
        latency_ms = 0.0
        hop: Address | None = address
        while hop is not None:
            selection = self._select(table, scenario, hop)
            if not isinstance(selection, Selected):
                return JSONResponse({"error": selection.reason, "revisions": hops}, status_code=503)
            revision = selection.revision
            hops.append(revision.name)
            outcome = await self._answer(scenario, revision)
            latency_ms += outcome.latency_ms
            if outcome.status >= 500:
                return JSONResponse(
                    {"error": "emulated model failure", "revision": revision.name, "revisions": hops,
                     "latencyMs": latency_ms},
                    status_code=outcome.status,
                )
            hop = next_hop(hop)
        return JSONResponse({"predictions": [1], "revision": hops[0], "revisions": hops, "latencyMs": latency_ms})

    def _select(self, table: RoutingTable, scenario: Scenario, address: Address) -> Selected | Unavailable:
        """The revision for one request to `address`, or why there is none."""
        draw = 0.0  # a tag host has one revision; it takes no draw, so it does not shift the split
        if address.tag is None:
            route_n = self._next(self._route_counters, address.key)
            draw = unit_draw(scenario.seed, "route:" + "/".join(address.key), route_n)
        return table.select(address, draw)

    async def _answer(self, scenario: Scenario, revision: Revision) -> Outcome:
        """One revision serves one request, as its version behaves; its queue-proxy records it."""
        n = self._next(self._revision_counters, (revision.namespace, revision.name))
        outcome = emulate(scenario.seed, revision.name, n, scenario.behaviour(revision.storage_uri))
        await asyncio.sleep(outcome.latency_ms / 1000.0)
        pod = f"{revision.name}-deployment-0"
        self.metrics.record(revision, pod, outcome.status, ROUTE_TAG_DISABLED, outcome.latency_ms)
        return outcome
