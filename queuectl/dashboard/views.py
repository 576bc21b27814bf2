"""The routes of the stats page: pages, live fragments, JSON, and the three actions.

Each view asks the broker through ``Source`` and renders a Jinja template;
broker errors are turned into pages and JSON by the handlers in ``app.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)

from queuectl.client import (
    BrokerUnreachable,
    Conflict,
    InvalidInput,
    NotFound,
    QueueError,
    Refused,
    Unavailable,
)

from . import charts, logs, metrics
from .source import Source

bp = Blueprint("views", __name__)

JOB_LIMITS = (25, 100, 500)  # rows of the jobs table: the first is the default
DLQ_LIMIT = 50
MAX_FILTER = 200
TERMINAL = ("completed", "dead", "canceled")
DOT_IDS = (".", "..")  # valid job ids that a browser would take for steps of the path
CANCELABLE = ("pending", "failed", "processing")


def job_url(endpoint: str, job_id: str, **query: Any) -> str:
    """The URL of a job's page, fragment or action. ``/jobs/..`` would be read as
    a step up by every browser, so the ids ``.`` and ``..`` go in the query."""
    if job_id in DOT_IDS:
        return url_for(f"{endpoint}_by_query", id=job_id, **query)
    return url_for(endpoint, job_id=job_id, **query)


def source() -> Source:
    found: Source = current_app.extensions["queuectl_source"]  # put there by create_app
    return found


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.path in ("/by-id/api", "/by-id/logs") \
        or "application/json" in request.headers.get("Accept", "")


def read_filters() -> dict[str, Any]:
    state = request.args.get("state", "").strip()
    limit = request.args.get("limit", "")
    return {
        "state": state if state in charts.STATES else "",
        "queue": request.args.get("queue", "").replace("\x00", "").strip()[:MAX_FILTER],
        "q": request.args.get("q", "").replace("\x00", "").strip()[:MAX_FILTER],
        "limit": int(limit) if limit in map(str, JOB_LIMITS) else JOB_LIMITS[0],
    }


def overview_context(filters: dict[str, Any]) -> dict[str, Any]:
    """What the live regions of the main page show; ``down`` when no broker answered."""
    context = {"filters": filters, "job_limits": JOB_LIMITS, "dlq_limit": DLQ_LIMIT,
               "state_names": charts.STATES,
               "now": time.time()}
    try:
        data = source().overview(filters["state"] or None, filters["queue"] or None,
                                 filters["q"] or None, filters["limit"], DLQ_LIMIT)
    except (BrokerUnreachable, Unavailable) as exc:
        return {**context, "down": True, "error": str(exc), "status": None, "metrics": None,
                "throughput": charts.throughput(None), "states": charts.distribution(None),
                "agents": [], "jobs": [], "dlq": []}
    status = data["status"]
    per_minute = (data["metrics"] or {}).get("per_minute")
    return {**context, "down": False, "status": status, "metrics": data["metrics"],
            "throughput": charts.throughput(per_minute),
            "states": charts.distribution(status["counts"]),
            "agents": data["agents"], "jobs": data["jobs"], "dlq": data["dlq"]}


@bp.get("/")
def index() -> Any:
    context = overview_context(read_filters())
    return render_template("index.html", **context), 503 if context["down"] else 200


@bp.get("/partials/overview")
def overview_partial() -> Any:
    context = overview_context(read_filters())
    return render_template("_overview.html", **context), 503 if context["down"] else 200


def job_context(job_id: str) -> dict[str, Any]:
    job = source().call("get", job_id)
    return {"job": job, "terminal": job["state"] in TERMINAL, "now": time.time(),
            "cancelable": job["state"] in CANCELABLE}


@bp.get("/jobs/<path:job_id>")
def job_page(job_id: str) -> Any:
    context = job_context(job_id)
    tokens = [a["token"] for a in context["job"]["attempts_log"]]
    token = _int_arg("token", None)
    if token is not None and tokens and token == tokens[-1]:
        token = None  # the latest attempt: the live view
    context["output"] = logs.read(source(), job_id, token=token)
    context["viewing"] = token  # an earlier attempt, shown as it ended
    return render_template("job.html", **context)


@bp.get("/partials/jobs/<path:job_id>")
def job_partial(job_id: str) -> Any:
    return render_template("_job_partial.html", **job_context(job_id))


# --- JSON -------------------------------------------------------------------------

@bp.get("/api/stats")
def api_stats() -> Any:
    return jsonify(source().status())


@bp.get("/api/jobs/<job_id>")
def api_job(job_id: str) -> Any:
    return jsonify(source().call("get", job_id))


def _int_arg(name: str, default: int | None) -> int | None:
    text = request.args.get(name, "")
    if text in ("", "null", "None"):
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number, got {text[:20]!r}") from None
    if value < 0:
        raise InvalidInput(f"{name} must not be negative")
    return value


@bp.get("/api/jobs/<job_id>/logs")
def api_logs(job_id: str) -> Any:
    return jsonify(logs.read(source(), job_id, _int_arg("attempt", None),
                             _int_arg("out", 0) or 0, _int_arg("err", 0) or 0))


@bp.get("/metrics")
def prometheus() -> Response:
    body, content_type = metrics.exposition(current_app.extensions["queuectl_registry"])
    return Response(body, content_type=content_type)


@bp.get("/healthz")
def healthz() -> Any:
    try:
        source().call("ping")
        broker = "up"
    except QueueError:
        broker = "down"
    return jsonify({"ok": True, "broker": broker, "endpoint": source().endpoint})


# --- actions ----------------------------------------------------------------------

# Refused: the page runs with a read-only CURVE key (deploy/README.md).
ERROR_STATUS = ((NotFound, 404), (Conflict, 409), (InvalidInput, 400), (Refused, 403))


def act(do: Callable[[], str], back: str) -> Any:
    """Run an action; reply JSON to the page's script, else redirect with a message."""
    try:
        ok, message, status = True, do(), 200
    except (BrokerUnreachable, Unavailable):
        raise  # the 503 handler
    except QueueError as exc:
        status = next((code for kind, code in ERROR_STATUS if isinstance(exc, kind)), 502)
        ok, message = False, str(exc)
    if wants_json():
        return jsonify({"ok": ok, "message": message}), status
    flash(message, "ok" if ok else "error")
    return redirect(back, 303)


def _back(job_id: str) -> str:
    """Where a form without script returns: its job page, or the overview."""
    if request.form.get("next") == "job":
        return job_url("views.job_page", job_id)
    return url_for("views.index")


@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id: str) -> Any:
    def do() -> str:
        state = source().call("cancel", job_id)["state"]
        if state == "canceled":
            return f"Job {job_id} canceled."
        return f"Job {job_id} is {state}; it could not be canceled yet."
    return act(do, _back(job_id))


@bp.post("/dlq/<job_id>/retry")
def retry(job_id: str) -> Any:
    def do() -> str:
        retried = source().call("dlq_retry", [job_id])
        if job_id not in retried:
            raise Conflict(f"job {job_id} is not in the dead-letter queue")
        return f"Job {job_id} moved back to pending."
    return act(do, _back(job_id))


@bp.post("/dlq/retry-all")
def retry_all() -> Any:
    def do() -> str:
        retried = source().call("dlq_retry", None)
        if not retried:
            return "The dead-letter queue is empty; nothing to retry."
        return f"{len(retried):,} dead job{'s' if len(retried) != 1 else ''} moved back to pending."
    return act(do, url_for("views.index"))


# The same views with the id in the query (``/by-id/job?id=..``), for DOT_IDS.
for _rule, _view, _methods in (
        ("/by-id/job", job_page, ["GET"]), ("/by-id/partial", job_partial, ["GET"]),
        ("/by-id/api", api_job, ["GET"]), ("/by-id/logs", api_logs, ["GET"]),
        ("/by-id/cancel", cancel, ["POST"]), ("/by-id/retry", retry, ["POST"])):
    bp.add_url_rule(_rule, f"{_view.__name__}_by_query", methods=_methods,
                    view_func=lambda _view=_view: _view(request.args.get("id", "")))
