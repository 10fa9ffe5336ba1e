"""``GET /metrics``, and around every request: its request id and its HTTP metrics.

The request id is the caller's ``X-Request-ID`` when it is a sane one, else a fresh one; it is
echoed in the answer's ``X-Request-ID`` and carried by every log line written while the request
is handled (:mod:`billsync.observability.context`). The observer wraps the whole application,
the server-error handler included, so that a 500 is counted, carries the header, and its log
line carries the id too.

``/metrics`` answers without a token, like ``/healthz`` and ``/readyz``: it names no account and
no secret, and scrapers sit on the internal network — which is where it should stay (do not
route it from a public proxy).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CollectorRegistry
from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute, Route, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billsync.observability import context, instruments
from billsync.observability.metrics import exposition

REQUEST_ID_HEADER = "X-Request-ID"
# Anything else a client sends as a method is one label value, not one each.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of a path no route serves (404s)


class RouteTemplates:
    """The route template serving a request (``/v1/accounts/{account_id}``), found from the
    path and the method before the request is routed, so that requests answered before any
    route runs (the token guard's 401s) are labelled with it too. The raw path would make a
    label value per account."""

    def __init__(self, sources: Callable[[], Iterable[tuple[str, Sequence[BaseRoute]]]]) -> None:
        self._sources = sources
        self._templates: list[tuple[re.Pattern[str], str, frozenset[str] | None]] | None = None

    def _index(self) -> list[tuple[re.Pattern[str], str, frozenset[str] | None]]:
        # Built at the first request: every route is in place by then.
        if self._templates is None:
            templates = []
            for prefix, routes in self._sources():
                for route in routes:
                    if isinstance(route, Route):
                        template = prefix + route.path
                        methods = frozenset(route.methods) if route.methods else None
                        templates.append((compile_path(template)[0], template, methods))
            self._templates = templates
        return self._templates

    def of(self, method: str, path: str) -> str:
        other_method: str | None = None
        for pattern, template, methods in self._index():
            if pattern.match(path):
                if methods is None or method in methods:
                    return template
                other_method = other_method or template  # a 405: the path exists
        return other_method or UNMATCHED


class RequestObserver:
    """Pure ASGI (no task of its own), so the context variable it sets is the one the
    routes, their thread pool and the error handlers see."""

    def __init__(self, app: ASGIApp, templates: RouteTemplates) -> None:
        self.app = app
        self.templates = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = context.request_id_from(incoming)
        method = scope["method"] if scope["method"] in METHODS else "OTHER"
        route = self.templates.of(scope["method"], scope["path"])
        status = 500  # unless a response starts: the server failed before answering
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        token = context.REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            context.REQUEST_ID.reset(token)
            instruments.observe_http(method, route, status, time.perf_counter() - started)


def install(
    app: FastAPI, registry: CollectorRegistry, routers: Sequence[tuple[APIRouter, str]]
) -> None:
    """Observe every request of ``app`` and serve ``registry`` at ``/metrics``. ``routers``
    are the app's routers with their prefixes (the app's own routes are found by themselves)."""
    build_stack = app.build_middleware_stack
    templates = RouteTemplates(
        lambda: [("", app.router.routes), *((prefix, router.routes) for router, prefix in routers)]
    )

    def observed_stack() -> ASGIApp:
        # Outside Starlette's server-error middleware, which every added middleware sits in.
        return RequestObserver(build_stack(), templates)

    app.build_middleware_stack = observed_stack  # type: ignore[method-assign]

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        """Prometheus scrape: text exposition format (OpenMetrics if asked for)."""
        body, content_type = exposition(registry, request.headers.get("accept"))
        return Response(body, media_type=content_type)
