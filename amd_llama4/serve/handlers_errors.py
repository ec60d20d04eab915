"""Exception handlers: every error leaves the app as an OpenAI error body."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from amd_llama4.serve.handlers_common import json_response
from amd_llama4.serve.protocol import APIError, error_body

log = logging.getLogger("amd_llama4.serve")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> Response:
        return json_response(e.status, e.body(), e.headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> Response:
        errors = e.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            msg, param = "the request body is not valid JSON", None
        elif loc[:1] == ["prompt"] and len(loc) > 1 and not loc[1].isdigit():  # union member tags
            msg, param = "prompt: must be a string, a list of token ids, or a list of one of those", "prompt"
            errors = [first]
        else:
            msg = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
            msg = msg.replace("Value error, ", "")
        if len(errors) > 1:
            msg += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return json_response(400, error_body(msg, "invalid_request_error", param, "invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> Response:
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(e.status_code, "invalid_request_error")
        return json_response(e.status_code, error_body(str(e.detail), kind, None, None), dict(e.headers or {}))

    @app.exception_handler(Exception)
    async def _internal(_: Request, e: Exception) -> Response:
        log.exception("internal error: %s", type(e).__name__)
        return json_response(500, error_body("internal server error", "server_error", None, None))
