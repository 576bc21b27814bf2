"""Tables for people (rich). Imported only by commands that print one."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .visible import visible

STATE_STYLES = {"pending": "cyan", "processing": "yellow", "completed": "green",
                "failed": "magenta", "dead": "red", "canceled": "dim"}


def _console() -> Console:
    import sys

    # Piped output has no terminal width; do not squeeze ids into 80 columns.
    width = None if sys.stdout.isatty() else 200
    return Console(highlight=False, soft_wrap=False, width=width)


def _text(value: Any, style: str = "") -> Text:
    # Text(), never markup, and control characters escaped: ids, commands and
    # output are user data.
    return Text("" if value is None else visible(str(value)), style=style)


def _short(time: str | None) -> str:
    return "" if time is None else time.replace("T", " ").rstrip("Z")[:19]


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}s"


def table(title: str | None, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    grid = Table(title=None if title is None else _text(title, "table.title"))
    for number, column in enumerate(columns):
        # ids and timestamps must stay whole: people copy them into commands
        grid.add_column(column, no_wrap=number == 0, overflow="fold")
    for row in rows:
        grid.add_row(*[cell if isinstance(cell, Text) else _text(cell) for cell in row])
    _console().print(grid)


def state(value: str) -> Text:
    return _text(value, STATE_STYLES.get(value, ""))


def status(doc: dict[str, Any]) -> None:
    rows: list[tuple[Text | str, Any]] = [(state(name), count)
                                          for name, count in doc["counts"].items()]
    rows += [("dlq", doc["dlq"]), ("avg_duration_sec", f"{doc['avg_duration_sec']:.3f}"),
             ("agents", doc["agents"]),
             ("slots busy/total", f"{doc['slots']['busy']}/{doc['slots']['total']}")]
    table("QueueCTL status", ("State", "Count"), rows)


def jobs(items: list[dict[str, Any]]) -> None:
    table(None, ("ID", "Command", "State", "Attempts", "Priority", "Queue", "Duration", "Updated"),
          [(j["id"], j["command"], state(j["state"]), f"{j['attempts']}/{j['max_retries']}",
            j["priority"], j["queue"], _seconds(j["duration_sec"]), _short(j["updated_at"]))
           for j in items])


def job(doc: dict[str, Any]) -> None:
    fields = [k for k in doc if k != "attempts_log"]
    table(f"Job {doc['id']}", ("Field", "Value"),
          [(k, state(doc[k]) if k == "state" else doc[k]) for k in fields])
    if doc["attempts_log"]:
        table("Attempts", ("#", "Agent", "Started", "Duration", "Exit", "Reason"),
              [(a["attempt"], a["agent"], _short(a["started_at"]), _seconds(a["duration_sec"]),
                a["exit_code"], (a["reason"] or "ok") + (" (stale)" if a["stale"] else ""))
               for a in doc["attempts_log"]])


def dlq(items: list[dict[str, Any]]) -> None:
    table("Dead letter queue", ("ID", "Command", "Reason", "Attempts", "Dead at"),
          [(d["id"], d["command"], d["reason"], d["attempts"], _short(d["dead_at"]))
           for d in items])


def config(doc: dict[str, Any]) -> None:
    table("Configuration", ("Key", "Value"), sorted(doc.items()))


def agents(items: list[dict[str, Any]]) -> None:
    table("Agents",
          ("ID", "Host", "Labels", "Slots busy/total", "Last heartbeat", "State", "Running"),
          [(a["id"], a["host"], ",".join(f"{k}={v}" for k, v in a["labels"].items()),
            f"{a['slots']['busy']}/{a['slots']['total']}", _short(a["last_heartbeat"]),
            a["state"], " ".join(a["running"])) for a in items])


def queues(items: list[dict[str, Any]]) -> None:
    table("Queues", ("Queue", "State", "Limit", "Pending", "Processing"),
          [(q["name"], "paused" if q["paused"] else "open",
            "" if q["limit"] is None else q["limit"], q["pending"], q["processing"])
           for q in items])
