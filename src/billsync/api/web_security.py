"""What the browser is told to protect: headers on every answer, stricter ones on the pages a
person opens (the support console and the customer's billing page), and cookies marked Secure
when billsync is reached over https — also behind a proxy that speaks plain http to it.

Pages get a Content-Security-Policy that allows no script at all (the pages need none), no
framing (clickjacking), and forms that post to billsync itself or to Stripe's portal (the
portal button answers with a redirect there, which browsers check against ``form-action``);
``Referrer-Policy: no-referrer`` (the customer page's URL carries a token); and ``Cache-Control:
no-store`` (a shared computer's cache keeps no bill and no console page).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billsync.api.guard import route_path
from billsync.config import Settings

# Where Stripe's Customer Portal sessions live (the redirect after the portal form).
STRIPE_PORTAL_ORIGIN = "https://billing.stripe.com"
PAGE_PREFIXES = ("/console", "/billing/")


def secure_cookies(settings: Settings, request: Request) -> bool:
    """Cookies travel only over https when billsync's public address is https, whatever the
    scheme of the last hop (a TLS-terminating proxy talks http to billsync)."""
    if settings.public_url:
        return settings.public_url.lower().startswith("https://")
    return request.url.scheme == "https"


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for X-Forwarded-For/-Proto: believed only from the proxies the
    operator named in BILLSYNC_TRUSTED_PROXIES (uvicorn's own default believes them from
    127.0.0.1, which lets anyone on the host — or a local service that relays requests —
    pick the client address the sign-in throttle counts)."""
    trusted = settings.trusted_proxies
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or None}


def _origin(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def page_policy(settings: Settings) -> str:
    """The pages' Content-Security-Policy."""
    form_targets = ["'self'", STRIPE_PORTAL_ORIGIN]
    emulator = _origin(settings.stripe_api_base)  # the emulator serves its own portal pages
    if emulator and emulator not in form_targets:
        form_targets.append(emulator)
    return "; ".join(
        (
            "default-src 'none'",
            "style-src 'unsafe-inline'",
            "img-src 'self' data:",
            "form-action " + " ".join(form_targets),
            "base-uri 'none'",
            "frame-ancestors 'none'",
        )
    )


_ROOT: ContextVar[str] = ContextVar("billsync_root_path", default="")


def root() -> str:
    """The prefix billsync is served under (``--root-path``; "" when none), for the request
    being answered: the pages' links, forms, redirects and cookie paths start with it."""
    return _ROOT.get()


def url(path: str) -> str:
    """``path`` (from billsync's root) as the browser must ask for it."""
    return root() + path


class SecurityHeaders:
    """Adds the headers to each answer as it starts (pure ASGI: nothing buffered), and notes
    the prefix the request came under for :func:`url`."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.page_headers = (
            ("Content-Security-Policy", page_policy(settings)),
            ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "no-referrer"),
            ("Cache-Control", "no-store"),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        _ROOT.set(str(scope.get("root_path", "")).rstrip("/"))
        page = path == "/console" or path.startswith(PAGE_PREFIXES)
        api = path.startswith("/v1/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if page:
                    for name, value in self.page_headers:
                        headers[name] = value
                elif api:  # accounts' bills and tokens: nothing for a cache to keep
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)
