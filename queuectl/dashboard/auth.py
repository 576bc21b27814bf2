"""Who may use the stats page and how: the access token, CSRF, security headers.

- A token (``--token`` / ``QUEUECTL_DASHBOARD_TOKEN``), when set, is checked on
  every request, static files included: ``Authorization: Bearer TOKEN``, or a
  cookie the page sets after one visit to any URL with ``?token=TOKEN``.
- Every POST carries a CSRF token (Flask-WTF), so another site cannot press
  the page's buttons through a logged-in browser.
- Without a token, only a loopback ``Host`` is served: a page on 127.0.0.1
  must not answer a foreign name that DNS rebinding pointed at it (that site's
  script would be same-origin with the page, CSRF token and all).
- Every response forbids inline scripts and framing (CSP), so a value that
  slipped through escaping still could not run.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import quote, urlencode

from flask import Flask, Response, jsonify, redirect, render_template, request
from flask_wtf.csrf import CSRFProtect
from werkzeug.wrappers import Response as BaseResponse

from .server import is_loopback

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def cookie_value(token: str) -> str:
    """What the cookie holds: derived from the token, so the token itself is never
    stored in the browser, yet stays valid across dashboard restarts."""
    return hmac.new(token.encode(), b"queuectl-dashboard-cookie", hashlib.sha256).hexdigest()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


def _unauthorized() -> Response:
    wants_json = request.path.startswith("/api/") or "json" in request.headers.get("Accept", "")
    if wants_json:
        response = jsonify({"error": "unauthorized", "detail": "this stats page needs its token"})
    elif request.path == "/metrics" or request.path.startswith("/static/"):
        response = Response("unauthorized: give Authorization: Bearer TOKEN\n",
                            mimetype="text/plain")
    else:
        response = Response(render_template("unauthorized.html"))
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Bearer realm="queuectl"'
    return response


def _safe_path(path: str) -> str:
    """A same-site path for a redirect: percent-encoded, so that no ``//host``,
    backslash, tab or newline (which browsers drop) can make it leave the site."""
    return "/" + quote(path.lstrip("/\\"), safe="/:@!$&'()*+,;=-._~")


def _host_name(host: str) -> str:
    """``127.0.0.1:8080`` -> ``127.0.0.1``; ``[::1]:8080`` -> ``::1``."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _foreign_host() -> Response | None:
    # No Host header at all (an HTTP/1.0 probe) cannot come from a browser.
    if "HTTP_HOST" not in request.environ or is_loopback(_host_name(request.host)):
        return None
    return Response("this stats page answers only on a loopback address (127.0.0.1, "
                    "localhost, [::1]); to serve other names, give it a token\n",
                    status=421, mimetype="text/plain")


def install(app: Flask, token: str | None) -> None:
    """Token check first, then CSRF, then the headers on every response."""
    app.config.update(
        SECRET_KEY=secrets.token_bytes(32),  # per process: a restart invalidates old forms
        WTF_CSRF_TIME_LIMIT=None,  # the page stays open for hours
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
    )
    app.config.setdefault("SESSION_COOKIE_NAME", "queuectl_session")
    app.config.setdefault("QUEUECTL_TOKEN_COOKIE", "queuectl_token")

    if token:
        expected_cookie = cookie_value(token)

        @app.before_request
        def check_token() -> BaseResponse | None:  # redirect() gives werkzeug's Response
            cookie_name = app.config["QUEUECTL_TOKEN_COOKIE"]
            given = request.args.get("token")
            if given is not None:
                if not _same(given, token):
                    return _unauthorized()
                if request.method not in ("GET", "HEAD"):
                    return None  # a form post cannot be redirected; it is authorized
                rest = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
                target = _safe_path(request.path) + (f"?{urlencode(rest)}" if rest else "")
                response = redirect(target, 303)
                response.set_cookie(cookie_name, expected_cookie, httponly=True,
                                    samesite="Strict", path="/")
                return response
            # WSGI hands headers over as latin-1; a UTF-8 token arrives as its bytes.
            header = request.headers.get("Authorization", "").encode("latin-1", "replace") \
                .decode("utf-8", "replace")
            if header[:7].lower() == "bearer " and _same(header[7:].strip(), token):
                return None
            if _same(request.cookies.get(cookie_name, ""), expected_cookie):
                return None
            return _unauthorized()

    else:
        app.before_request(_foreign_host)

    CSRFProtect(app)

    @app.after_request
    def security_headers(response: Response) -> Response:
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response
