"""The rules every outbound HTTP call of canaryd obeys: which addresses it may reach, how long it may take in
total, how much of an answer it reads, and what of that answer may be shown to a person.

Why one module: gate and notification endpoints, Prometheus and Git may be slow, hostile or broken (issue
13). A gate URL is written by a config-repo author, who is trusted only in their namespace, so it must not
be able to reach the node's metadata service (link-local, which hands out cloud credentials), the
daemon's own loopback ports or the in-cluster Kubernetes API with canaryd's ServiceAccount behind it.
Those are refused unless the daemon config (owned by cluster admins) allows them.

- `admit` resolves the host and refuses loopback, link-local, unspecified and in-cluster-API addresses.
  `request` then connects to the very address it checked (the URL's host is replaced by that address;
  the original name goes in `Host` and, for TLS, in SNI and certificate checks), so a DNS answer that
  changes between the check and the connect (DNS rebinding) cannot steer the call elsewhere. Proxies
  from the environment are not used for such calls. Limitation: a redirect is never followed, and an
  allowed host name (`allowHosts`) is trusted whatever it resolves to.
- httpx timeouts are per operation (a server sending one byte every 0.5 s never trips a 1 s read
  timeout), so `request` runs under `asyncio.timeout`: a wall-clock deadline for the whole call, DNS,
  connect, headers and body included.
- Bodies are streamed and read up to a cap; more is a `ResponseTooLarge` error, counted, and the
  connection is dropped, so a 400 MB answer costs at most the cap in memory.
- `excerpt` gives a short, redacted, printable piece of a body, for logs only: nothing of a body is put
  in verdicts, status or Events.

Calls run as coroutines on one event-loop thread (`OutboundLoop`): a stuck endpoint holds a coroutine
until its deadline, not a worker thread that other services or the Git sync need.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import os
import re
import socket
import threading
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from prometheus_client import CollectorRegistry, Counter

T = TypeVar("T")

#: Default cap for gate and notification answers (their body is only ever logged as an excerpt).
DEFAULT_MAX_RESPONSE_BYTES = 1 << 20
#: Default cap for Prometheus answers (a batched vector over a namespace can be large; 100 MB is not).
DEFAULT_MAX_PROMETHEUS_BYTES = 64 << 20
#: How many characters of a body a log line may show.
EXCERPT_CHARS = 120

_API_NAMES = ("kubernetes", "kubernetes.default", "kubernetes.default.svc")
_CHUNK = 64 * 1024


class OutboundError(Exception):
    """A call that canaryd refused or cut short; the message is safe to show (no body, no credentials)."""

    reason = "error"


class OutboundRefused(OutboundError):
    reason = "refused"


class ResponseTooLarge(OutboundError):
    reason = "too-large"


class DeadlineExceeded(OutboundError):
    reason = "deadline"


@dataclass(frozen=True)
class OutboundRules:
    """Where calls to endpoints named by config-repo authors may go (the daemon config's `outbound`)."""

    allow_loopback: bool = False
    allow_link_local: bool = False
    #: Host names (exact, case-insensitive) or CIDR networks allowed even inside a refused range.
    allow_hosts: tuple[str, ...] = ()
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    #: The in-cluster API's address (`KUBERNETES_SERVICE_HOST`); read from the environment by default.
    api_host: str | None = field(default_factory=lambda: os.environ.get("KUBERNETES_SERVICE_HOST") or None)

    def _allowed_name(self, host: str) -> bool:
        return host.lower().rstrip(".") in {h.lower().rstrip(".") for h in self.allow_hosts if "/" not in h}

    def _allowed_address(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        for entry in self.allow_hosts:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
        return False

    def refusal(self, host: str, ip_text: str) -> str | None:
        """Why a call to `host` at address `ip_text` is refused, or None if it may go."""
        if self._allowed_name(host):
            return None
        ip = _unmapped(ipaddress.ip_address(ip_text.split("%", 1)[0]))
        if self._allowed_address(ip):
            return None
        name = host.lower().rstrip(".")
        if name in _API_NAMES or name.startswith("kubernetes.default.svc."):
            return "the in-cluster Kubernetes API"
        if self.api_host and ip_text == self.api_host:
            return "the in-cluster Kubernetes API"
        if ip.is_unspecified:
            return "an unspecified address"
        if ip.is_loopback and not self.allow_loopback:
            return "a loopback address"
        if ip.is_link_local and not self.allow_link_local:
            return "a link-local address (cloud metadata)"
        return None


def _unmapped(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class OutboundMetrics:
    """Counters for calls refused, cut at the deadline or over the size cap, by kind (gate, notification,
    prometheus). Unregistered unless a registry is given (tests build many)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.refused = Counter("canaryd_outbound_refused_total", "Outbound calls refused by the address rules",
                               ["kind"], registry=registry)
        self.too_large = Counter("canaryd_outbound_response_too_large_total",
                                 "Outbound answers cut at the response size cap", ["kind"], registry=registry)
        self.deadline = Counter("canaryd_outbound_deadline_exceeded_total",
                                "Outbound calls cut at their total deadline", ["kind"], registry=registry)

    def count(self, kind: str, exc: BaseException) -> None:
        if isinstance(exc, OutboundRefused):
            self.refused.labels(kind).inc()
        elif isinstance(exc, ResponseTooLarge):
            self.too_large.labels(kind).inc()
        elif isinstance(exc, DeadlineExceeded):
            self.deadline.labels(kind).inc()


def safe_url(url: str) -> str:
    """scheme://host:port/path only: URLs may carry tokens in the query or userinfo."""
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid URL>"
    port = f":{u.port}" if u.port else ""
    host = f"[{u.host}]" if ":" in u.host else u.host
    return f"{u.scheme}://{host}{port}{u.path}"


async def admit(url: str, rules: OutboundRules) -> list[str]:
    """The addresses `url` may be called at (resolved now), or `OutboundRefused` saying why not."""
    u = httpx.URL(url)
    if u.scheme not in ("http", "https") or not u.host:
        raise OutboundRefused(f"refused {safe_url(url)}: only http(s) URLs with a host")
    port = u.port or (443 if u.scheme == "https" else 80)
    name = u.host.lower().rstrip(".")
    if (name in _API_NAMES or name.startswith("kubernetes.default.svc.")) and not rules._allowed_name(u.host):
        raise OutboundRefused(f"refused {safe_url(url)}: it names the in-cluster Kubernetes API, which the"
                              " daemon config does not allow (outbound.allowHosts)")
    try:
        addresses = [str(ipaddress.ip_address(u.host))]  # a literal address: nothing to resolve
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(u.host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise OutboundError(f"cannot resolve {safe_url(url)}: {exc.strerror or type(exc).__name__}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        why = rules.refusal(u.host, address)
        if why is not None:
            raise OutboundRefused(f"refused {safe_url(url)}: it resolves to {why}, which the daemon config"
                                  " does not allow (outbound.allowLoopback / allowLinkLocal / allowHosts)")
    if not addresses:
        raise OutboundError(f"cannot resolve {safe_url(url)}: no address")
    return addresses


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


async def read_capped(stream: Any, max_bytes: int, what: str) -> bytes:
    """Read an async byte stream up to `max_bytes`; more is `ResponseTooLarge` (the rest is never read)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > max_bytes:
            raise ResponseTooLarge(f"answer from {what} is larger than {max_bytes} bytes; not read")
        parts.append(chunk)
    return b"".join(parts)


async def request(client: httpx.AsyncClient, method: str, url: str, *, deadline_s: float, max_bytes: int,
                  rules: OutboundRules | None = None, json: Any = None,
                  headers: Mapping[str, str] | None = None) -> Answer:
    """One HTTP call with a wall-clock deadline for all of it and a capped body.

    With `rules`, the host is resolved and checked first, and the call goes to the checked address.
    Raises `OutboundError` (refused, too large, deadline) or an `httpx.HTTPError`; never follows redirects.
    """
    what = safe_url(url)
    hdrs = dict(headers or {})
    hdrs.setdefault("Accept-Encoding", "identity")  # the cap counts bytes on the wire, not a bomb's output
    extensions: dict[str, Any] = {}
    try:
        async with asyncio.timeout(deadline_s):
            target = httpx.URL(url)
            if rules is not None:
                address = (await admit(url, rules))[0]
                if address != target.host:
                    hdrs.setdefault("Host", target.netloc.decode("ascii"))
                    if target.scheme == "https":
                        extensions["sni_hostname"] = target.host
                    target = target.copy_with(host=address)
            async with client.stream(method, target, json=json, headers=hdrs, extensions=extensions,
                                     follow_redirects=False) as resp:
                body = await read_capped(resp.aiter_raw(_CHUNK), max_bytes, what)
                return Answer(resp.status_code, body, dict(resp.headers))
    except TimeoutError:
        raise DeadlineExceeded(f"{what} did not answer within {deadline_s:g}s") from None


_SECRETISH = re.compile(
    r"(?i)(\"?(?:[a-z_-]*(?:token|secret|password|passwd|key|credential|signature|session|auth)[a-z_-]*)\"?"
    r"\s*[:=]\s*)(\"[^\"]*\"|[^\s,;&}]+)"
)
_LONG_WORD = re.compile(r"[A-Za-z0-9+/_\-=.]{24,}")
#: An echoed Authorization value (`Basic dXNlcjpw`): short credentials are not long words.
_AUTH_VALUE = re.compile(r"(?i)\b(basic|bearer|digest|token)(\s+)[^\s,;\"']+")


def excerpt(body: bytes | str, limit: int = EXCERPT_CHARS) -> str:
    """A short, printable, redacted piece of an answer, for a log line only.

    Values of keys that look like credentials and any long token-like word are replaced by `***`, so an
    answer from a metadata service or an auth proxy does not put its credentials in the log.
    """
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    text = text[: limit * 8]
    text = _AUTH_VALUE.sub(lambda m: m.group(1) + m.group(2) + "***", text)
    text = _SECRETISH.sub(lambda m: m.group(1) + "***", text)
    text = _LONG_WORD.sub("***", text)
    text = "".join(c if c.isprintable() else " " for c in text)
    text = " ".join(text.split())
    return text[:limit] + ("…" if len(text) > limit else "")


class OutboundLoop:
    """One event loop on its own thread, for outbound calls as coroutines.

    A blackholed endpoint then holds a coroutine until its deadline, not a worker thread: however many
    calls hang, the threads that tick other services and sync Git are not theirs. `submit` hands back a
    `concurrent.futures.Future`, so synchronous code can poll it or wait on it.
    """

    def __init__(self, name: str = "outbound") -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._client: httpx.AsyncClient | None = None
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._ready.set()
        self._loop.run_forever()

    @property
    def client(self) -> httpx.AsyncClient:
        """The shared client; only for coroutines running on this loop. No connection limit: each call
        is bounded by its own deadline, and a pool slot waited for would let one endpoint delay others."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                follow_redirects=False, trust_env=False, timeout=None,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
            )
        return self._client

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def close(self, timeout: float = 2.0) -> None:
        """Cancel the calls still running (their futures end cancelled) and stop the loop."""
        if self._loop.is_closed():
            return

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._client is not None:
                await self._client.aclose()

        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            self.submit(shutdown()).result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()

