"""``create_app``: the stats page as a Flask application, and how it reports errors.

A broker that does not answer becomes a 503 page (or JSON) that says so, never
a 500; an unknown job a 404; anything unexpected a short 500 page with the
traceback in the log, not in the browser.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, render_template, request
from flask.json.provider import DefaultJSONProvider
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from queuectl import __version__
from queuectl.client import (
    BrokerUnreachable,
    Conflict,
    InvalidInput,
    NotFound,
    QueueError,
    Unavailable,
)

from . import auth, fmt, metrics
from .source import Source
from .views import bp, job_url, wants_json

log = logging.getLogger(__name__)

OUT_OF_DATE = "This page is out of date; reload it."


class UnsortedJSON(DefaultJSONProvider):
    sort_keys = False  # the same key order as `queuectl ... --json`


def create_app(endpoint: str, token: str | None = None, timeout: float = 2.0) -> Flask:
    """The stats page for the broker at ``endpoint``; with ``token``, every request needs it."""
    app = Flask(__name__)
    app.json = UnsortedJSON(app)
    source = Source(endpoint, timeout)
    app.extensions["queuectl_source"] = source
    app.extensions["queuectl_registry"] = metrics.registry_for(source)
    app.jinja_env.filters.update(fmt.FILTERS)
    app.jinja_env.globals.update(endpoint=endpoint, version=__version__, token_required=bool(token),
                                 job_url=job_url)
    auth.install(app, token)
    app.register_blueprint(bp)
    _errors(app, endpoint)
    return app


def _reply(status: int, title: str, message: str, detail: str = "", down: bool = False,
           extra: dict[str, Any] | None = None) -> Any:
    if wants_json():
        document = {"error": title.lower(), "message": message}
        if detail:
            document["detail"] = detail
        document.update(extra or {})
        return document, status
    if request.path == "/metrics" or request.path.startswith("/static/"):
        return Response(f"{title}: {message}\n", status=status, mimetype="text/plain")
    return render_template("error.html", title=title, message=message, detail=detail,
                           down=down, status=status), status


def _errors(app: Flask, endpoint: str) -> None:
    @app.errorhandler(BrokerUnreachable)
    @app.errorhandler(Unavailable)
    def broker_down(exc: QueueError) -> Any:
        return _reply(503, "Broker unavailable",
                      f"No broker answered at {endpoint}. Is queuectl-broker running? "
                      "This page recovers by itself when it returns.",
                      str(exc), down=True, extra={"broker": endpoint})

    @app.errorhandler(NotFound)
    def job_not_found(exc: NotFound) -> Any:
        return _reply(404, "Not found", str(exc))

    @app.errorhandler(Conflict)
    def conflict(exc: Conflict) -> Any:
        return _reply(409, "Conflict", str(exc))

    @app.errorhandler(InvalidInput)
    def invalid(exc: InvalidInput) -> Any:
        return _reply(400, "Invalid request", str(exc))

    @app.errorhandler(CSRFError)
    def csrf_failed(exc: CSRFError) -> Any:
        return _reply(400, "Out of date", OUT_OF_DATE, exc.description)

    @app.errorhandler(QueueError)
    def broker_error(exc: QueueError) -> Any:
        return _reply(502, "Broker error", str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        if exc.code == 404:
            return _reply(404, "Not found", "There is no such page here.")
        return _reply(exc.code or 500, exc.name, exc.description or "")

    @app.errorhandler(Exception)
    def bug(exc: Exception) -> Any:
        # exc_info=exc: the traceback of this exception, not whatever sys.exc_info() holds.
        log.error("unexpected error serving %s %s", request.method, request.path, exc_info=exc)
        return _reply(500, "Internal error",
                      "The stats page hit a bug; the details are in its log.")
