"""Rollout notifications for humans: Slack incoming webhooks, MS Teams and a generic JSON webhook.

A notification is best-effort and must never slow down or break a rollout, so `Notifier.send` only
admits the message (rate limit) and queues it; a worker thread posts it. Webhook URLs are secrets (a
Slack URL *is* the credential), so they live in files, are re-read when the file changes (a rotated
Secret), and never appear in a log line or an error: only the scheme and host do.

Rate limiting is per service and kind, so one stuck rollout cannot drown a channel, while a transition
(promoted, rolled back, aborted, a new error) is never swallowed. Suppressed messages are counted and
the count rides on the next message that goes out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential,
)

from canaryd.adapters.outbound import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DeadlineExceeded,
    OutboundError,
    OutboundLoop,
    OutboundMetrics,
    excerpt,
    request,
)
from canaryd.config import NotificationSettings, NotifierSettings
from canaryd.durations import parse_duration

log = logging.getLogger(__name__)

KINDS = ("started", "step", "promoted", "rolled-back", "waiting", "error", "aborted", "paused", "resumed", "drift")
#: A new text of these kinds always goes out: they end or break a rollout, and must not be rate-limited away.
TRANSITIONS = frozenset({"promoted", "rolled-back", "aborted", "error"})

COLOURS: dict[str, str] = {
    "started": "#439FE0",
    "step": "#439FE0",
    "resumed": "#439FE0",
    "promoted": "#2EB886",
    "waiting": "#ECB22E",
    "paused": "#ECB22E",
    "drift": "#ECB22E",
    "rolled-back": "#E01E5A",
    "aborted": "#E01E5A",
    "error": "#E01E5A",
}
DEFAULT_COLOUR = "#A0A0A0"

DEFAULT_REPEAT_INTERVAL_S = 3600.0


# -- messages and payloads (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    service: str  # "namespace/name"
    kind: str
    text: str
    fields: Mapping[str, str]
    time: datetime
    suppressed: int = 0  # messages of this service and kind held back since the previous one

    @property
    def full_text(self) -> str:
        return f"{self.text} ({self.suppressed} similar suppressed)" if self.suppressed else self.text


def _slack_escape(text: str) -> str:
    # Slack mrkdwn treats <...> as links/mentions: "error rate > 0.01" must stay literal.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def slack_payload(msg: Message) -> dict[str, Any]:
    """Slack incoming-webhook body: the headline as `text` (what a phone notification shows), and an
    attachment for the kind's colour and the fields."""
    headline = f"[{msg.service}] {msg.kind}: {msg.full_text}"
    return {
        "text": _slack_escape(headline),
        "attachments": [{
            "color": COLOURS.get(msg.kind, DEFAULT_COLOUR),
            "fallback": _slack_escape(headline),
            "fields": [{"title": k, "value": _slack_escape(v), "short": True} for k, v in msg.fields.items()],
            "footer": "canaryd",
            "ts": int(msg.time.timestamp()),
        }],
    }


def teams_payload(msg: Message) -> dict[str, Any]:
    """MS Teams connector MessageCard."""
    return {
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": f"{msg.service} {msg.kind}",
        "themeColor": COLOURS.get(msg.kind, DEFAULT_COLOUR).lstrip("#"),
        "title": f"{msg.service}: {msg.kind}",
        "sections": [{
            "text": msg.full_text,
            "markdown": False,  # revision names have underscores; show them literally
            "facts": [{"name": k, "value": v} for k, v in msg.fields.items()],
        }],
    }


def generic_payload(msg: Message) -> dict[str, Any]:
    return {
        "service": msg.service,
        "kind": msg.kind,
        "message": msg.full_text,
        "fields": dict(msg.fields),
        "time": _iso(msg.time),
    }


PAYLOADS: dict[str, Callable[[Message], dict[str, Any]]] = {
    "slack": slack_payload,
    "teams": teams_payload,
    "generic": generic_payload,
}


# -- rate limiting (pure) ---------------------------------------------------------------------------


@dataclass
class _KeyState:
    last_sent: float | None = None
    suppressed: int = 0
    recent: dict[str, float] = field(default_factory=dict)  # text -> when it last went out


class RateLimiter:
    """Decides, per (service, kind), whether a message goes out now.

    - a text already sent within `repeat_interval` is suppressed (a stuck rollout repeating itself);
    - otherwise a transition kind goes out at once (a rollback must never wait for the interval);
    - otherwise at most one message per `min_interval`.

    Not thread-safe: the Notifier calls it under its lock.
    """

    def __init__(self, min_interval: float, repeat_interval: float | None = None) -> None:
        self.min_interval = min_interval
        self.repeat_interval = max(min_interval, DEFAULT_REPEAT_INTERVAL_S if repeat_interval is None
                                   else repeat_interval)
        self._keys: dict[tuple[str, str], _KeyState] = {}

    def admit(self, service: str, kind: str, text: str, now: float) -> int | None:
        """None if suppressed; else how many were suppressed before it (to report with it)."""
        st = self._keys.setdefault((service, kind), _KeyState())
        st.recent = {t: at for t, at in st.recent.items() if now - at < self.repeat_interval}
        due = st.last_sent is None or now - st.last_sent >= self.min_interval
        if text in st.recent or not (due or kind in TRANSITIONS):
            st.suppressed += 1
            return None
        count, st.suppressed = st.suppressed, 0
        st.last_sent = now
        st.recent[text] = now
        return count


# -- secrets ------------------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """What may be logged of a webhook URL: scheme and host (and port); never path, query or userinfo."""
    try:
        parsed = httpx.URL(url)
    except Exception:
        return "<invalid URL>"
    if not parsed.scheme or not parsed.host:
        return "<invalid URL>"
    return f"{parsed.scheme}://{parsed.host}" + (f":{parsed.port}" if parsed.port else "")


def scrub(text: str, url: str) -> str:
    """`text` with every trace of `url` beyond its host replaced (exception messages may quote it)."""
    try:
        parsed = httpx.URL(url)
        pieces = [url, url.split("://", 1)[-1], parsed.raw_path.decode("ascii", "replace"), parsed.path]
    except Exception:
        pieces = [url]
    for piece in sorted({p for p in pieces if len(p) > 1}, key=len, reverse=True):
        text = text.replace(piece, "<redacted>")
    return text


class _SecretUrlFilter(logging.Filter):
    """httpx logs every request's full URL at INFO: redact the ones that are webhook secrets."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: set[str] = set()

    def add(self, url: str) -> None:
        with self._lock:
            self._secrets.add(url)

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            secrets = set(self._secrets)
        if secrets and isinstance(record.args, tuple):
            record.args = tuple(redact_url(str(a)) if str(a) in secrets else a for a in record.args)
        return True


_SECRET_URLS = _SecretUrlFilter()
logging.getLogger("httpx").addFilter(_SECRET_URLS)


class UrlFileError(Exception):
    """The URL file is missing or does not hold an http(s) URL (the message never quotes its contents)."""


class UrlFile:
    """A webhook URL kept in a file (a mounted Secret); re-read whenever the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature: tuple[int, int, int] | None = None
        self._url: str | None = None

    def read(self) -> str:
        try:
            st = self.path.stat()
            signature = (st.st_ino, st.st_mtime_ns, st.st_size)
            if signature != self._signature or self._url is None:
                url = self.path.read_text().strip()
                _SECRET_URLS.add(url)  # before anything can log it
                self._url, self._signature = self._validate(url), signature
        except OSError as exc:
            raise UrlFileError(f"cannot read URL file {self.path}: {exc.strerror or type(exc).__name__}") from None
        return self._url

    def _validate(self, url: str) -> str:
        try:
            parsed = httpx.URL(url)
        except Exception:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise UrlFileError(f"URL file {self.path} does not hold an http(s) URL")
        return url


# -- delivery -------------------------------------------------------------------------------------------


class _Retryable(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class _Rejected(Exception):
    pass


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, _Retryable | httpx.TransportError | DeadlineExceeded)


@dataclass
class _Target:
    settings: NotifierSettings
    url_file: UrlFile
    render: Callable[[Message], dict[str, Any]]

    @property
    def name(self) -> str:
        return self.settings.kind

    def wants(self, kind: str) -> bool:
        return not self.settings.events or kind in self.settings.events


@dataclass
class NotifyStats:
    """Counters for /metrics and tests: messages delivered/failed per target, dropped, suppressed."""

    sent: int = 0
    failed: int = 0
    dropped: int = 0  # queue full (oldest dropped) or sent after close()
    suppressed: int = 0  # held back by the rate limiter


class Notifier:
    """Sends rollout notifications to every configured webhook; `send` never blocks and never raises."""

    def __init__(
        self,
        settings: NotificationSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        queue_size: int = 100,
        attempts: int = 3,
        backoff: float = 0.5,
        repeat_interval: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        metrics: OutboundMetrics | None = None,
    ) -> None:
        """`settings.timeout` is the wall-clock deadline of one delivery attempt (DNS, connect, answer);
        answers are read up to `max_response_bytes`."""
        self._targets = [
            _Target(s, UrlFile(s.url_file), PAYLOADS[s.kind]) for s in settings.notifiers
        ]
        for t in self._targets:
            unknown = sorted(set(t.settings.events) - set(KINDS))
            if unknown:
                log.warning("notifier %s (%s): unknown event kinds %s (known: %s)",
                            t.name, t.settings.url_file, unknown, ", ".join(KINDS))
        self._limiter = RateLimiter(parse_duration(settings.min_interval), repeat_interval)
        self._timeout = parse_duration(settings.timeout)
        self._max_bytes = max_response_bytes
        self._metrics = metrics or OutboundMetrics()
        self._clock = clock
        self._wall_clock = wall_clock
        self._attempts = max(1, attempts)
        self._backoff = backoff
        self._cond = threading.Condition()
        self._queue: deque[tuple[_Target, Message]] = deque()
        self._queue_size = max(1, queue_size)
        self._stats = NotifyStats()
        self._closed = False
        self._abort = threading.Event()
        self._worker: threading.Thread | None = None
        if self._targets:
            self._worker = threading.Thread(target=self._run, name="notifier", daemon=True)
            self._worker.start()

    @property
    def enabled(self) -> bool:
        return bool(self._targets)

    @property
    def stats(self) -> NotifyStats:
        with self._cond:
            return replace(self._stats)

    def send(self, target_key: str, kind: str, message: str, fields: Mapping[str, str] | None = None) -> None:
        """Queue a notification about service `target_key` ("namespace/name"), if the rate limit admits it."""
        try:
            self._send(target_key, kind, message, dict(fields or {}))
        except Exception:  # a notification must never break the caller
            log.exception("notification %s for %s not queued", kind, target_key)

    def _send(self, service: str, kind: str, text: str, fields: dict[str, str]) -> None:
        targets = [t for t in self._targets if t.wants(kind)]
        if not targets:
            return
        with self._cond:
            if self._closed:
                self._stats.dropped += len(targets)
                log.debug("notifier closed: %s for %s dropped", kind, service)
                return
            suppressed = self._limiter.admit(service, kind, text, self._clock())
            if suppressed is None:
                self._stats.suppressed += 1
                log.debug("notification %s for %s suppressed by the rate limit", kind, service)
                return
            msg = Message(service, kind, text, fields, self._wall_clock(), suppressed)
            for target in targets:
                if len(self._queue) >= self._queue_size:
                    _, oldest = self._queue.popleft()
                    self._stats.dropped += 1
                    log.warning("notification queue full: dropped %s for %s", oldest.kind, oldest.service)
                self._queue.append((target, msg))
            self._cond.notify_all()

    def close(self, timeout: float = 10.0) -> bool:
        """Stop accepting messages and deliver the queued ones; True if everything queued was handled in
        time (anything still pending after `timeout` is abandoned and counted as dropped)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._worker is None:
            return True
        self._worker.join(timeout)
        if not self._worker.is_alive():
            return True
        self._abort.set()  # stops retries and their backoff; an in-flight request ends at its timeout
        with self._cond:
            abandoned = len(self._queue)
            self._stats.dropped += abandoned
            self._queue.clear()
            self._cond.notify_all()
        log.warning("notifier closed after %.1fs with %d notifications undelivered", timeout, abandoned)
        return False

    # -- worker ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        loop = OutboundLoop("notifier-http")
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closed:
                        self._cond.wait()
                    if not self._queue:
                        return
                    target, msg = self._queue.popleft()
                ok = self._deliver(loop, target, msg)
                with self._cond:
                    if ok:
                        self._stats.sent += 1
                    else:
                        self._stats.failed += 1
        finally:
            loop.close()

    def _deliver(self, client: OutboundLoop, target: _Target, msg: Message) -> bool:
        try:
            url = target.url_file.read()
        except UrlFileError as exc:
            log.error("notification %s for %s not sent via %s: %s", msg.kind, msg.service, target.name, exc)
            return False
        where = f"{target.name} webhook {redact_url(url)}"
        try:
            payload = target.render(msg)
            for attempt in Retrying(
                stop=stop_after_attempt(self._attempts) | stop_when_event_set(self._abort),
                wait=wait_exponential(multiplier=self._backoff, max=max(self._backoff, 30.0)),
                retry=retry_if_exception(_retryable),
                sleep=self._backoff_sleep,
                before_sleep=lambda state: self._log_retry(state, msg, where, url),
                reraise=True,
            ):
                with attempt:
                    self._post(client, url, payload)
        except Exception as exc:
            log.error("notification %s for %s not delivered via %s: %s",
                      msg.kind, msg.service, where, scrub(_describe(exc), url))
            return False
        log.debug("notification %s for %s delivered via %s", msg.kind, msg.service, where)
        return True

    def _backoff_sleep(self, seconds: float) -> None:
        self._abort.wait(seconds)  # close() cuts a backoff short

    def _post(self, loop: OutboundLoop, url: str, payload: dict[str, Any]) -> None:
        """One attempt, bounded by the wall-clock `timeout` and the response cap (the URL is the admins':
        no address rules, but no redirects either)."""
        try:
            answer = loop.submit(request(loop.client, "POST", url, json=payload, deadline_s=self._timeout,
                                         max_bytes=self._max_bytes)).result()
        except OutboundError as exc:
            self._metrics.count("notification", exc)
            raise
        status = answer.status
        # 429 is the one 4xx worth retrying: Slack answers it when a channel's webhook is over its limit.
        if status >= 500 or status == 429:
            raise _Retryable(status)
        if status >= 400:
            raise _Rejected(f"HTTP {status}: {excerpt(answer.body)}")

    @staticmethod
    def _log_retry(state: RetryCallState, msg: Message, where: str, url: str) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("notification %s for %s via %s failed (attempt %d): %s; retrying",
                    msg.kind, msg.service, where, state.attempt_number,
                    scrub(_describe(exc), url) if exc else "?")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _Retryable | _Rejected):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
