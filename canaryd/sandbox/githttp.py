"""A private Git server for tests and the sandbox: git's own `git http-backend` CGI behind HTTP Basic auth.

`git daemon` has no authentication, so a private repo needs a real smart-HTTP server. Starlette (on
`ThreadedServer`) checks the credentials and hands the request to the CGI shipped with git, so the Git
protocol side is git's own code, not an imitation. It records every request it saw, headers included,
which lets a test prove that credentials travelled over the wire and were rejected or accepted, and it
can fail the next requests on purpose (a flaky remote) to exercise retries.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from canaryd.httpserver import ThreadedServer

_REALM = 'Basic realm="canaryd sandbox git", charset="UTF-8"'
# Request headers CGI scripts must not see: credentials go to REMOTE_USER, framing is ours.
_HIDDEN_HEADERS = {"authorization", "proxy-authorization", "content-length", "content-type", "connection"}


@dataclass(frozen=True)
class SeenRequest:
    """One request as the server saw it (the server side naturally sees the credentials)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    user: str | None  # the authenticated user, None when the request was refused
    status: int
    at: float  # time.monotonic() when it arrived (lets a test measure retry backoff)

    @property
    def authorization(self) -> str:
        return self.headers.get("authorization", "")


class AuthGitServer:
    """Serves the bare repos under `repo_root` at `<url>/<name>.git` to one user with one password.

    `password` may be changed while running (a rotated Secret). `fail_next(n)` answers the next n
    requests with an error status before any auth check, as an overloaded or restarting remote would.
    """

    def __init__(self, repo_root: Path, username: str, password: str) -> None:
        self.repo_root = Path(repo_root).resolve()
        self.username = username
        self.password = password
        self._git = shutil.which("git")
        if self._git is None:
            raise RuntimeError("git is not installed")
        self._lock = threading.Lock()
        self._seen: list[SeenRequest] = []
        self._failures: list[int] = []
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST"])])
        self._server = ThreadedServer(app, name="auth-git-http")

    # -- control ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def port(self) -> int:
        return self._server.port

    def repo_url(self, name: str = "config.git") -> str:
        return f"{self.url}/{name}"

    def requests(self) -> list[SeenRequest]:
        with self._lock:
            return list(self._seen)

    def fail_next(self, count: int, status: int = 503) -> None:
        with self._lock:
            self._failures.extend([status] * count)

    def start(self) -> AuthGitServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> AuthGitServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP ------------------------------------------------------------------------------------

    def _user(self, header: str) -> str | None:
        """The user when `header` carries this server's credentials (compared in constant time)."""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        user, sep, password = decoded.partition(b":")
        ok_user = hmac.compare_digest(user, self.username.encode())
        ok_password = hmac.compare_digest(password, self.password.encode())
        return self.username if sep and ok_user and ok_password else None

    async def _handle(self, request: Request) -> Response:
        arrived = time.monotonic()
        headers = {k.lower(): v for k, v in request.headers.items()}
        path = "/" + request.path_params["path"]
        with self._lock:
            injected = self._failures.pop(0) if self._failures else None
        user = None
        if injected is not None:
            response: Response = PlainTextResponse("injected failure\n", status_code=injected)
        else:
            user = self._user(headers.get("authorization", ""))
            if user is None:
                response = PlainTextResponse("authentication required\n", status_code=401,
                                             headers={"WWW-Authenticate": _REALM})
            else:
                response = await self._cgi(request, path, user)
        with self._lock:
            self._seen.append(SeenRequest(request.method, path, request.url.query, headers, user,
                                          response.status_code, arrived))
        return response

    async def _cgi(self, request: Request, path: str, user: str) -> Response:
        body = await request.body()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.repo_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": f"HTTP/{request.scope.get('http_version', '1.1')}",
            "REQUEST_METHOD": request.method,
            "PATH_INFO": path,
            "QUERY_STRING": request.url.query,
            "CONTENT_TYPE": request.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": user,
            "REMOTE_ADDR": request.client.host if request.client else "127.0.0.1",
        }
        for name, value in request.headers.items():
            if name.lower() not in _HIDDEN_HEADERS:
                env["HTTP_" + name.upper().replace("-", "_")] = value  # e.g. Git-Protocol, Content-Encoding
        proc = await asyncio.create_subprocess_exec(
            str(self._git), "http-backend", env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(body)
        if proc.returncode != 0 and not out:
            return PlainTextResponse(f"git http-backend failed: {err.decode(errors='replace')}", status_code=500)
        return _parse_cgi(out)


def _parse_cgi(out: bytes) -> Response:
    """A CGI response: header lines (`Status:` sets the code), a blank line, the body."""
    head, sep, body = out.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = out.partition(b"\n\n")
    if not sep:
        return PlainTextResponse("malformed CGI response\n", status_code=502)
    status = 200
    headers: list[tuple[str, str]] = []
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() == "status":
            status = int(value.split()[0])
        elif name.strip():
            headers.append((name.strip(), value.strip()))
    response = Response(body, status_code=status)
    for name, value in headers:
        if name.lower() != "content-length":
            response.headers.append(name, value)
    return response
