"""Pure ASGI middleware in front of the routes (BaseHTTPMiddleware would break streaming
disconnects): bearer-key auth (all paths but OPEN_PATHS, so all of /v1/*), request-body size
cap, response counting by status."""
from __future__ import annotations

import hmac
from typing import Any, Callable

from fastapi.responses import JSONResponse, Response

from amd_llama4.serve.metrics import ServeMetrics
from amd_llama4.serve.protocol import error_body


# Reachable without the API key: probes, scrapes, and the API's own schema/docs.
OPEN_PATHS = frozenset({"/health", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


class Gate:
    """Counts responses by status, checks the bearer key, caps the request body size
    (buffered here, then replayed to the app; later receive() calls pass through so the routes
    still see http.disconnect)."""

    def __init__(self, app: Any, *, api_key: str | None, max_body_bytes: int, metrics: ServeMetrics) -> None:
        self.app, self.api_key, self.max_body, self.metrics = app, api_key, max_body_bytes, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # mounted under a prefix (e.g. a Ray Serve route_prefix)
            path = path[len(root):] or "/"
        status_seen: list[int] = []

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_seen.append(message["status"])
            await send(message)

        try:
            denied = self._check_auth(scope, path)
            if denied is not None:
                await denied(scope, receive, counting_send)
                return
            body, refused = await self._read_body(scope, receive)
            if refused is not None:
                await refused(scope, receive, counting_send)
                return
            replayed = False

            async def replay() -> dict:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, counting_send)
        finally:
            self.metrics.count_request(path, status_seen[0] if status_seen else 499)

    def _check_auth(self, scope: dict, path: str) -> Response | None:
        # Deny by default: every path but the open ones needs the key (so /v1/* always does).
        if not self.api_key or path in OPEN_PATHS:
            return None
        given = ""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    given = token.strip()
        if hmac.compare_digest(given.encode("utf-8"), self.api_key.encode("utf-8")):
            return None
        msg = "missing API key (Authorization: Bearer ...)" if not given else "invalid API key"
        return _json(401, error_body(msg, "authentication_error", None, "invalid_api_key"),
                     {"WWW-Authenticate": "Bearer"})

    async def _read_body(self, scope: dict, receive: Callable) -> tuple[bytes, Response | None]:
        too_big = _json(413, error_body(f"request body larger than {self.max_body} bytes",
                                        "invalid_request_error", None, "request_too_large"))
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > self.max_body:
                        return b"", too_big
                except ValueError:
                    return b"", _json(400, error_body("malformed Content-Length header"))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", Response(status_code=499)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return b"", too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None
