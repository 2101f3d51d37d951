"""Read one analysis's numbers from Prometheus (prometheus-api-client), turning every failure into *no data*.

Thin on purpose: queries come from `canaryd.analysis.queries`, judging is `canaryd.analysis.judge`.
What this adapter owns is the failure semantics (DESIGN §6): an HTTP error, a timeout, a refused
connection, an empty result where a value is needed, NaN or Inf, and a stale answer (one evaluated at
another instant than the one asked for, as from a results cache or a proxy that froze) all become
`value=None` with an `error` that says why, never an exception out of `read` and never a pass. After
the first transport or auth failure the remaining queries of the same read are skipped, so a dead or
hanging Prometheus costs one timeout, not one per query.

Credentials are read from files on every request (mounted Secrets rotate) and are redacted from every
error text this module produces.
"""

from __future__ import annotations

import ast
import base64
import json
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import requests.adapters
import urllib3.exceptions
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.util.retry import Retry

from canaryd.adapters.outbound import DEFAULT_MAX_PROMETHEUS_BYTES, OutboundMetrics, excerpt
from canaryd.analysis import counters, queries
from canaryd.analysis.queries import Profile, RenderContext
from canaryd.analysis.samples import AnalysisSamples, MetricReading, RevisionCounts, RevisionReading, WindowCounts
from canaryd.policy import Metric

log = logging.getLogger(__name__)

_STATUS = re.compile(r"^HTTP Status Code (\d+) \((.*)\)$", re.S)
_ERRNO = re.compile(r"\[Errno -?\d+\] [^\"')]+")
_MAX_ERROR_CHARS = 300
_AT = "@at"  # key of the reading time among a revision's kept counter readings
#: Prometheus' default lookback: how far back an instant query finds a series' last sample.
_LOOKBACK_S = 300.0
#: How far the evaluation time of an answer may be from the `time` asked for. Prometheus answers an
#: instant query at exactly that time (to the millisecond); more than this means the answer was made
#: for another moment (a cache, a frozen proxy) and describes a window we did not ask about.
_STALE_AFTER_S = 1.0


class _FileAuth(requests.auth.AuthBase):
    """Bearer token or basic auth whose secret is re-read from its file on every request."""

    def __init__(self, bearer_token_file: Path | None, basic_auth: tuple[str, Path] | None) -> None:
        self._token_file = bearer_token_file
        self._basic = basic_auth
        # the latest few values (a rotated token may still be in flight), bounded however often it rotates
        self.secrets: deque[str] = deque(maxlen=8)

    def _read(self, path: Path, what: str) -> str:
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise _CredentialsError(f"cannot read {what} file {path}: {exc.strerror or type(exc).__name__}") from None
        if not value:
            raise _CredentialsError(f"{what} file {path} is empty")
        return value

    def _remember(self, secret: str) -> None:
        if secret not in self.secrets:
            self.secrets.append(secret)

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if self._token_file is not None:
            token = self._read(self._token_file, "bearer token")
            self._remember(token)
            r.headers["Authorization"] = f"Bearer {token}"
        if self._basic is not None:
            user, password_file = self._basic
            password = self._read(password_file, "basic auth password")
            self._remember(password)
            self._remember(base64.b64encode(f"{user}:{password}".encode()).decode())
            r = requests.auth.HTTPBasicAuth(user, password)(r)
        return r


class _AnswerCut(requests.RequestException):
    """An answer over the size cap or past the total deadline (its message is safe to show)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class _CappedAdapter(requests.adapters.HTTPAdapter):
    """Reads every answer as a stream, up to `max_bytes` and within `deadline_s` of wall-clock time.

    requests' timeout is per socket operation and `response.json()` holds the whole body: a Prometheus
    sending a 100 MB answer, or a byte every half second, would cost that memory or that time. The
    deadline is checked between reads, each of which is bounded by requests' read timeout, so a call
    ends within `deadline_s` plus one read timeout (headers included: their read is one such read).
    """

    def __init__(self, max_bytes: int, deadline_s: float, metrics: OutboundMetrics, retry: Retry) -> None:
        super().__init__(max_retries=retry)
        self.max_bytes = max_bytes
        self.deadline_s = deadline_s
        self.metrics = metrics

    def send(self, request: requests.PreparedRequest, stream: bool = False,
             timeout: Any = None, verify: Any = True, cert: Any = None,
             proxies: Any = None) -> requests.Response:
        started = time.monotonic()
        resp = super().send(request, stream=True, timeout=timeout, verify=verify, cert=cert, proxies=proxies)
        parts: list[bytes] = []
        size = 0
        try:
            while True:
                if time.monotonic() - started > self.deadline_s:
                    self.metrics.deadline.labels("prometheus").inc()
                    raise _AnswerCut(f"answer not complete within {self.deadline_s:g}s", "deadline")
                chunk = resp.raw.read1(64 * 1024)
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_bytes:
                    self.metrics.too_large.labels("prometheus").inc()
                    raise _AnswerCut(f"answer larger than {self.max_bytes} bytes; not read", "too-large")
                parts.append(chunk)
        except BaseException:
            resp.close()
            raise
        resp._content = b"".join(parts)  # what requests' own non-stream read would have set
        resp._content_consumed = True
        resp.close()
        return resp


class _CredentialsError(requests.RequestException):
    """A credentials file could not be read (raised inside requests, so it surfaces as a RequestException)."""


@dataclass
class _Read:
    """State of one `read()`: its evaluation instant and the failure that makes further queries pointless."""

    at: float
    broken: str | None = None


#: A counter series as read: labels, value, and the time of that sample (not of the query).
_Stamped = tuple[dict[str, str], float, float]
_Vector = tuple[list[_Stamped] | None, str | None, str | None]  # series, error, what broke the read


class _Pending:
    """One namespace-wide query at one instant: run by the first read that needs it, waited for by the rest."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: _Vector = (None, "not run", None)


class _SharedVectors:
    """Per-instant cache of the batched counter queries (`PrometheusSource(batch=True)`).

    Keyed by (query, evaluation instant); the instants are aligned to the scrape interval, so every
    service of a namespace analysed within one interval shares one query per metric. Failures are not
    kept (the next read asks again), and entries older than `keep_s` before the newest are dropped, so
    the cache holds about one scrape interval's worth of namespaces.
    """

    def __init__(self, keep_s: float, wait_s: float) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, float], _Pending] = {}
        self._keep_s = keep_s
        self._wait_s = wait_s
        self.shared = 0  # reads answered by another read's query

    def get(self, query: str, at: float, fetch: Callable[[], _Vector]) -> _Vector:
        key = (query, at)
        with self._lock:
            entry = self._entries.get(key)
            owner = entry is None
            if entry is None:
                entry = self._entries[key] = _Pending()
                old = [k for k in self._entries if k[1] < at - self._keep_s]
                for k in old:
                    del self._entries[k]
            else:
                self.shared += 1
        if not owner:
            if not entry.done.wait(self._wait_s):
                return None, f"not queried: waited {self._wait_s:g}s for the shared query {query}", None
            return entry.result
        try:
            entry.result = fetch()
        finally:
            entry.done.set()
            if entry.result[0] is None:
                with self._lock:
                    if self._entries.get(key) is entry:
                        del self._entries[key]
        return entry.result


def _safe_url(url: str) -> str:
    """`url` without user:password@ (a URL may carry credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class PrometheusSource:
    """Prometheus as the source of canary analysis samples (Flagger's provider: RunQuery + IsOnline)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        bearer_token_file: str | Path | None = None,
        basic_auth: tuple[str, str | Path] | None = None,
        ca_file: str | Path | None = None,
        insecure: bool = False,
        profile: str | Profile = queries.DEFAULT_PROFILE,
        scrape_interval_s: float = 1.0,
        max_sample_age_s: float | None = None,
        batch: bool = False,
        max_response_bytes: int = DEFAULT_MAX_PROMETHEUS_BYTES,
        metrics: OutboundMetrics | None = None,
    ) -> None:
        """`batch`: read the statistical judges' raw counters once per namespace and metric and share them
        (see `read_counts`); off, every revision gets its own queries. `timeout_s` bounds each query's
        whole answer (wall clock); `max_response_bytes` caps what is read of it. `max_sample_age_s`
        (default three scrape intervals): a counter sample older than this, at the instant read, is not
        data (see `read_counts`)."""
        if ca_file is not None and insecure:
            raise ValueError("ca_file and insecure contradict each other: choose one")
        if bearer_token_file is not None and basic_auth is not None:
            raise ValueError("use either a bearer token or basic auth, not both")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.url = url.rstrip("/")
        self.safe_url = _safe_url(self.url)
        self.timeout_s = timeout_s
        self.scrape_interval_s = scrape_interval_s
        self.max_sample_age_s = max_sample_age_s if max_sample_age_s is not None else 3 * scrape_interval_s
        if not self.max_sample_age_s > 0:
            raise ValueError("max_sample_age_s must be positive")
        self.profile = profile if isinstance(profile, Profile) else queries.get_profile(profile)
        self.batch = batch
        self._batch_step_s = max(scrape_interval_s, 0.001)
        self._shared = _SharedVectors(keep_s=3 * self._batch_step_s, wait_s=2 * timeout_s + 1)
        self._count_lock = threading.Lock()
        #: Queries sent to Prometheus so far (for benchmarks and tests).
        self.queries_sent = 0
        self._auth = _FileAuth(
            Path(bearer_token_file) if bearer_token_file is not None else None,
            (basic_auth[0], Path(basic_auth[1])) if basic_auth is not None else None,
        )
        session = requests.Session()
        session.verify = str(ca_file) if ca_file is not None else not insecure
        session.auth = self._auth
        # No retries: the next analysis is the retry, and a retry with backoff would blow the timeout.
        # The library annotates timeout as int, but hands it to requests, which takes float seconds.
        self._client = PrometheusConnect(
            url=self.url,
            session=session,
            retry=Retry(total=0, raise_on_status=False),
            timeout=timeout_s,  # type: ignore[arg-type]
        )
        # Replaces the library's adapter (same prefix): streamed, capped, deadline-bound reads.
        session.headers["Accept-Encoding"] = "identity"  # the cap counts bytes on the wire
        session.mount(self._client.url, _CappedAdapter(max_response_bytes, timeout_s, metrics or OutboundMetrics(),
                                                       Retry(total=0, raise_on_status=False)))

    def close(self) -> None:
        self._client.close()

    # --- the two provider calls ---

    def is_online(self) -> bool:
        """True if Prometheus answers `vector(1)` with 1 (Flagger's IsOnline), with our credentials."""
        value, error = self.query("vector(1)")
        if error is not None:
            log.debug("Prometheus at %s is not online: %s", self.safe_url, error)
        return value == 1.0

    def query(self, promql: str, *, at: float | None = None) -> tuple[float | None, str | None]:
        """The single value of `promql`, or (None, why there is none)."""
        return self._query(_Read(at=time.time() if at is None else at), promql)

    def read(
        self,
        namespace: str,
        service: str,
        canary_revision: str,
        stable_revision: str | None,
        metrics: Sequence[Metric],
        window_s: float,
        *,
        at: float | None = None,
    ) -> AnalysisSamples:
        """Requests and each metric of the canary (and the built-in metrics of the stable revision, which
        the comparisons need) over the same window, every query evaluated at the same instant `at`."""
        window = queries.render_window(window_s, self.scrape_interval_s)
        run = _Read(at=time.time() if at is None else at)
        canary = self._read_revision(run, namespace, service, canary_revision, metrics, window)
        stable = None
        if stable_revision is not None:
            builtin = [m for m in metrics if m.name in queries.BUILTIN_RENDERERS]
            stable = self._read_revision(run, namespace, service, stable_revision, builtin, window)
        return AnalysisSamples(
            window_s=float(queries.window_seconds(window_s, self.scrape_interval_s)),
            canary=canary,
            stable=stable,
        )

    def read_counts(
        self,
        namespace: str,
        revisions: Sequence[str],
        previous: dict[str, dict[str, float]],
        window_start: float,
        *,
        latency_start: float | None = None,
        at: float | None = None,
    ) -> tuple[list[RevisionCounts], dict[str, dict[str, float]], list[str]]:
        """Exact counts of each revision since its previous readings (for the statistical judges).

        Reads the raw counters at `at` and differences them per series (`canaryd.analysis.counters`).
        A revision without previous readings is first read at `window_start`, so its first window counts
        from there; its latency buckets, with `latency_start`, from that later instant instead (the policy's
        warmup: a cold start slows requests, it rarely fails them, so errors count from the canary's first
        request and latency from the end of the warmup). Returns the counts (in `revisions` order, None
        counts where a query failed), the readings to keep for the next analysis, and the queries run.

        Only fresh samples count: each series' newest sample within `max_sample_age_s` of the instant
        read (a range selection, so Prometheus' 5-minute lookback cannot pass off an old sample as the
        current value). A series without one is missing from this reading and keeps its older value (see
        `counters`); a revision whose series are all missing, when it had series before, has no data this
        time (Prometheus stalled, or every scrape of it failed): its counts are None with the reason, and
        its older readings are kept. The readings record the time of their newest sample, so a window
        covers exactly the span between the samples it differences.

        With `batch`, the reading is taken at `at` rounded down to the scrape interval, with one query per
        namespace and metric shared by every revision read at that instant (a thousand services rolling
        out cost a few queries per namespace per interval, not four per service per analysis); each
        revision keeps its own series (`counters.select`), so the counts are exactly those of per-revision
        queries at that instant. The rounding loses nothing: the readings record the instant they were
        taken at and the next window counts from there. The evidence names the per-revision queries, which
        return the same series. The first reading at `window_start` (once per revision and rollout) stays a
        per-revision query.
        """
        run = _Read(at=self._instant(time.time() if at is None else at))
        results: list[RevisionCounts] = []
        kept: dict[str, dict[str, float]] = {}
        ran: list[str] = []
        for revision in revisions:
            req_q = counters.raw_requests_query(self.profile, namespace, revision)
            bucket_q = counters.raw_buckets_query(self.profile, namespace, revision)
            ran += [req_q, bucket_q]
            prev = previous.get(revision)
            if prev is None:
                lat_at = None if latency_start is None else min(max(latency_start, window_start), run.at)
                prev = self._first_reading(revision, req_q, bucket_q, min(window_start, run.at), run, lat_at)
            if self.batch:
                req, req_error = self._shared_vector(run, counters.namespace_requests_query(self.profile, namespace))
                buckets, bucket_error = self._shared_vector(
                    run, counters.namespace_buckets_query(self.profile, namespace))
                req = None if req is None else self._select(revision, req)
                buckets = None if buckets is None else self._select(revision, buckets)
                failed = req_error or bucket_error
            else:
                req, req_error = self._query_vector(run, req_q)
                buckets, bucket_error = self._query_vector(run, bucket_q)
                failed = req_error or bucket_error
            stale = None
            if req is not None and buckets is not None and not req and not buckets and _has_series(prev):
                stale = self._no_fresh_sample(revision, "counters", run.at)
                req = buckets = None
            if prev is None:
                # Without a starting point nothing can be counted yet: keep this reading as the start.
                counted, readings = counters.count(revision, self.profile, None, None, None)
                if req is not None and buckets is not None:
                    _, readings = counters.count(revision, self.profile, _plain(req), _plain(buckets), None)
            else:
                counted, readings = counters.count(revision, self.profile, _maybe_plain(req), _maybe_plain(buckets),
                                                   prev)
            # The time of the newest sample these readings hold (a failed or stale read keeps the older
            # readings, and their time): the next window counts from exactly there.
            if req is not None and buckets is not None:
                readings[_AT] = _newest(req + buckets, (prev or {}).get(_AT, run.at))
            else:
                readings[_AT] = (prev or {}).get(_AT, run.at)
            if stale is not None or failed is not None:
                counted = counted.model_copy(update={"error": stale or failed})
            elif counted.requests is not None and prev is not None:
                counted = counted.model_copy(update={"since": prev.get(_AT), "until": readings[_AT]})
            results.append(counted)
            kept[revision] = readings
        return results, kept, ran

    def window_counts(
        self, namespace: str, canary: str, stable: str | None, previous: dict[str, dict[str, float]],
        window_start: float, *, latency_start: float | None = None, at: float | None = None,
    ) -> tuple[WindowCounts, dict[str, dict[str, float]]]:
        """`read_counts` for a canary and its stable revision over the same window."""
        now = self._instant(time.time() if at is None else at)
        names = [canary] + ([stable] if stable is not None else [])
        counted, kept, ran = self.read_counts(namespace, names, previous, window_start, latency_start=latency_start,
                                              at=now)
        # The span the canary's counts cover: between the newest samples of the two readings differenced.
        c = counted[0]
        window = max(0.0, c.until - c.since) if c.since is not None and c.until is not None else 0.0
        return WindowCounts(window_s=window, canary=counted[0], stable=counted[1] if stable else None,
                            queries=ran), kept

    # --- internals ---

    def _instant(self, at: float) -> float:
        """The evaluation instant of counter reads: `at`, or with `batch` the scrape-interval boundary at or
        before it (idempotent, so a rounded instant passed back in stays put)."""
        if not self.batch:
            return at
        return math.floor(round(at / self._batch_step_s, 6)) * self._batch_step_s

    def _shared_vector(self, run: _Read, promql: str) -> tuple[list[_Stamped] | None, str | None]:
        """A namespace-wide vector at `run.at`, queried once for every read that needs it at that instant
        (or None and why not)."""
        if run.broken is not None:
            return None, f"not queried: {run.broken}"

        def fetch() -> _Vector:
            probe = _Read(at=run.at)
            series, error = self._query_vector(probe, promql)
            return series, error, probe.broken

        series, error, broken = self._shared.get(promql, run.at, fetch)
        if broken is not None:
            run.broken = broken
        return series, error

    def _sent(self) -> None:
        with self._count_lock:
            self.queries_sent += 1

    def _first_reading(self, revision: str, req_q: str, bucket_q: str, at: float, run: _Read,
                       latency_at: float | None = None) -> dict[str, float] | None:
        """The readings a revision's first window counts from: its request counters at the window's start
        `at` and its latency buckets at `latency_at` (default `at`), or None when they cannot be read
        (then the current reading becomes the start).

        Without a fresh sample at that instant, the last sample within Prometheus' usual lookback (5
        minutes) before it is the start, and the readings say when it was taken: a series that merely
        missed its scrapes around `at` must not count later from zero, its whole history. Only a revision
        with no sample in those 5 minutes has no series yet, and its series count from zero (new pods).
        The readings' time is that of the request counters: the span the error counts cover.
        """
        req = self._starting_vector(req_q, at, run)
        buckets = self._starting_vector(bucket_q, at if latency_at is None else latency_at, run)
        if req is None or buckets is None:
            return None
        _, readings = counters.count(revision, self.profile, _plain(req), _plain(buckets), None)
        readings[_AT] = _newest(req, _newest(buckets, at)) if req else _newest(buckets, at)
        return readings

    def _starting_vector(self, selector: str, at: float, run: _Read) -> list[_Stamped] | None:
        start = _Read(at=at, broken=run.broken)
        vector, _ = self._query_vector(start, selector)
        if vector is not None and not vector:
            vector, _ = self._query_vector(start, selector, max_age_s=_LOOKBACK_S)
        run.broken = run.broken or start.broken
        return vector

    def _select(self, revision: str, series: list[_Stamped]) -> list[_Stamped]:
        """`counters.select` for stamped series: the revision's own among a namespace's."""
        matcher = self.profile.revision_matcher(revision)
        return [s for s in series if counters.matches(matcher, s[0])]

    def _query_vector(self, run: _Read, selector: str, *, max_age_s: float | None = None
                      ) -> tuple[list[_Stamped] | None, str | None]:
        """Every series of a counter selector with its newest sample no older than `max_sample_age_s` at
        `run.at` (labels, value, sample time), or (None, why) when the query failed.

        A range selection, not an instant one: an instant query fills in a series' last sample from up
        to 5 minutes back (Prometheus' lookback) and stamps it with the query's time, so a stalled
        Prometheus or a target whose scrapes fail would look current. A range selection returns the
        samples themselves, with their times, and leaves out stale markers.
        """
        age = self.max_sample_age_s if max_age_s is None else max_age_s
        result, error = self._fetch(run, f"{selector}[{_promql_seconds(age)}]")
        if error is not None:
            return None, error
        if not isinstance(result, list):
            return None, f"not a range vector: {str(result)[:80]!r}"
        out: list[_Stamped] = []
        for item in result:
            try:
                labels = {str(k): str(v) for k, v in dict(item["metric"]).items()}
                samples = item["values"]
                if not samples:
                    continue
                stamp, raw = samples[-1]
                when, value = float(stamp), float(raw)
            except (KeyError, TypeError, ValueError, IndexError):
                return None, f"not a range vector item: {str(item)[:80]!r}"
            if not math.isfinite(when) or when > run.at + _STALE_AFTER_S:
                # Samples from after the instant asked for: an answer made for another moment.
                return None, (f"stale answer: a sample at {when:.3f} for the instant {run.at:.3f}"
                              " (a results cache or proxy answering for another time?)")
            out.append((labels, value, when))
        log.debug("query %s at %.3f -> %d series", selector, run.at, len(out))
        return out, None

    def _read_revision(
        self, run: _Read, namespace: str, service: str, revision: str, metrics: Sequence[Metric], window: str
    ) -> RevisionReading:
        ctx = RenderContext(
            profile=self.profile, namespace=namespace, service=service, revision=revision, window=window
        )
        stale = self._stale_revision(run, namespace, revision)
        if stale is not None:
            return RevisionReading(revision=revision, requests=None, metrics={
                m.name: MetricReading(name=m.name, value=None, error=stale) for m in metrics})
        requests_q = queries.requests_in_window(self.profile, namespace, revision, window)
        count, _ = self._query(run, requests_q)
        readings: dict[str, MetricReading] = {}
        for metric in metrics:
            try:
                promql = queries.render_metric(metric, ctx)
            except ValueError as exc:
                readings[metric.name] = MetricReading(
                    name=metric.name, value=None, error=f"invalid query for {metric.name!r}: {exc}"
                )
                continue
            value, error = self._query(run, promql)
            readings[metric.name] = MetricReading(name=metric.name, value=value, query=promql, error=error)
        return RevisionReading(revision=revision, requests=count, metrics=readings)

    def _stale_revision(self, run: _Read, namespace: str, revision: str) -> str | None:
        """Why the window queries of `revision` would judge old data, or None.

        A `rate(...[w])` window query ends at `run.at` whatever Prometheus holds: after a stall, or while
        every scrape of the revision fails, it judges a window whose last samples are long gone by. The
        newest sample time of the revision's request counters (`timestamp()` gives a sample's own time)
        tells: older than `max_sample_age_s` is no data. A revision with no series yet is not stale here
        (its queries say "no data" on their own)."""
        selector = counters.raw_requests_query(self.profile, namespace, revision)
        newest, _ = self._query(run, f"max(timestamp({selector}))")
        if newest is None or run.at - newest <= self.max_sample_age_s:
            return None
        return self._no_fresh_sample(revision, "requests", run.at, f"newest {run.at - newest:.0f}s old: ")

    def _no_fresh_sample(self, revision: str, what: str, at: float, detail: str = "") -> str:
        """The no-data reason of a revision without a sample newer than `max_sample_age_s`."""
        return (f"no sample of {revision}'s {what} newer than {self.max_sample_age_s:g}s at {_clock(at)} "
                f"({detail}Prometheus behind or stalled, or its scrapes failing)")

    def _query(self, run: _Read, promql: str) -> tuple[float | None, str | None]:
        result, error = self._fetch(run, promql)
        value = None
        if error is None:
            value, error = _single_value(result, run.at)
            error = self._clean(error) if error is not None else None
        log.debug("query %s at %.3f -> %s %s", promql, run.at, value, error or "")
        return value, error

    def _fetch(self, run: _Read, promql: str) -> tuple[Any, str | None]:
        """The raw `data.result` of one instant query, or (None, why). The one place that talks to
        Prometheus and turns its failures into text: redacted here, nowhere else. A transport or auth
        failure marks the whole read broken, so the rest of it is skipped rather than timed out again."""
        if run.broken is not None:
            return None, f"not queried: {run.broken}"
        self._sent()
        try:
            return self._client.custom_query(promql, params={"time": f"{run.at:.3f}"}), None
        except requests.RequestException as exc:
            run.broken = self._clean(self._describe_transport(exc))
            return None, run.broken
        except PrometheusApiClientException as exc:
            status, text = self._describe_status(exc)
            text = self._clean(text)
            if status in (401, 403):
                run.broken = text
            return None, text
        except (ValueError, KeyError, TypeError) as exc:
            return None, self._clean(f"unexpected answer from Prometheus at {self.safe_url}: {exc}")

    def _clean(self, text: str) -> str:
        return self._redact(text)[:_MAX_ERROR_CHARS]

    def _describe_transport(self, exc: requests.RequestException) -> str:
        if isinstance(exc, _CredentialsError):
            return str(exc)
        if isinstance(exc, _AnswerCut):
            return f"Prometheus at {self.safe_url}: {exc}"
        reason: object = exc
        if exc.args and isinstance(exc.args[0], urllib3.exceptions.MaxRetryError):
            reason = exc.args[0].reason or exc.args[0]
        # NewConnectionError subclasses ConnectTimeoutError in urllib3: test it before timeouts.
        if isinstance(reason, urllib3.exceptions.NewConnectionError):
            errno = _ERRNO.search(str(reason))
            why = errno.group(0).strip() if errno else str(reason)
            return f"cannot reach Prometheus at {self.safe_url}: {why}"
        if isinstance(exc, requests.Timeout) or isinstance(reason, urllib3.exceptions.TimeoutError):
            return f"Prometheus at {self.safe_url} timed out after {self.timeout_s:g}s"
        if isinstance(exc, requests.exceptions.SSLError) or isinstance(reason, urllib3.exceptions.SSLError):
            return f"TLS error talking to Prometheus at {self.safe_url}: {reason}"
        return f"cannot reach Prometheus at {self.safe_url}: {type(reason).__name__}: {reason}"

    def _describe_status(self, exc: PrometheusApiClientException) -> tuple[int | None, str]:
        text = str(exc)
        m = _STATUS.match(text)
        if not m:
            return None, f"Prometheus at {self.safe_url} failed: {text}"
        status = int(m.group(1))
        body = m.group(2)
        try:
            raw = ast.literal_eval(body)
            body = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            data: Any = json.loads(body)
            if isinstance(data, dict) and "error" in data:
                body = f"{data.get('errorType', 'error')}: {data['error']}"
        except (ValueError, SyntaxError):
            pass
        # A short, redacted excerpt only: this text reaches verdicts, status and Events.
        return status, f"Prometheus at {self.safe_url} answered HTTP {status}: {excerpt(body)}"

    def _redact(self, text: str) -> str:
        for secret in sorted(self._auth.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


def _plain(series: list[_Stamped]) -> list[counters.Series]:
    return [(labels, value) for labels, value, _when in series]


def _maybe_plain(series: list[_Stamped] | None) -> list[counters.Series] | None:
    return None if series is None else _plain(series)


def _newest(series: list[_Stamped], default: float) -> float:
    return max((when for _labels, _value, when in series), default=default)


def _has_series(readings: dict[str, float] | None) -> bool:
    return any(k.startswith(("r:", "b:")) for k in readings or {})


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S")


def _promql_seconds(seconds: float) -> str:
    """A PromQL duration for a range selector: whole milliseconds (PromQL takes `1500ms`, not `1.5s`)."""
    return f"{max(1, round(seconds * 1000))}ms"


def _stale(when: Any, at: float) -> str | None:
    """Why an answer's evaluation time `when` does not fit the instant `at` we asked for (None: it fits)."""
    evaluated = float(when)
    if not math.isfinite(evaluated):
        raise ValueError(f"evaluation time {when!r}")
    if abs(evaluated - at) <= _STALE_AFTER_S:
        return None
    return (f"stale answer: evaluated at {evaluated:.3f}, {at - evaluated:+.1f}s from the requested {at:.3f}"
            " (a results cache or proxy answering for another time?)")


def _single_value(result: Any, at: float | None = None) -> tuple[float | None, str | None]:
    """One number from an instant query's `data.result` (a scalar, or a vector of exactly one series),
    evaluated at `at` (when given: an answer for another instant is stale, no data)."""
    if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
        stamp, raw = result  # resultType scalar: [time, "value"]
    elif isinstance(result, list):
        if not result:
            return None, "empty result: no matching series in the window"
        if len(result) > 1:
            return None, (
                f"{len(result)} series returned, one expected: aggregate the query (e.g. sum(...)) "
                "so it yields a single value"
            )
        item = result[0]
        if not isinstance(item, dict) or "value" not in item:
            return None, "not an instant value (a range vector?): the query must yield one number"
        try:
            stamp, raw = item["value"]
        except (TypeError, ValueError):
            return None, f"not an instant value: {str(item)[:80]!r}"
    else:
        return None, f"unexpected result {str(result)[:80]!r}"
    if at is not None:
        try:
            stale = _stale(stamp, at)
        except (TypeError, ValueError):
            return None, f"not an instant value (evaluation time {str(stamp)[:40]!r})"
        if stale is not None:
            return None, stale
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None, f"not a number: {str(raw)[:80]!r}"
    if math.isnan(value):
        return None, "NaN (for a ratio or quantile: no requests in the window)"
    if math.isinf(value):
        return None, f"infinite value ({raw}): beyond the highest histogram bucket, or a division by zero"
    return value, None
