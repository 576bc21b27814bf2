"""``queuectl enqueue``: jobs from the command line or a JSON Lines file.

The one command scripts run in loops, so it must start fast: this module
imports neither typer nor rich (typer alone, with the pydantic it loads,
costs more than the whole enqueue). ``fast_main`` recognises the plain
forms, ``enqueue [--json] [--broker E] (JSON | --file PATH)`` after an
optional global ``--broker E``, and runs them directly; anything else
(``--help``, an unknown option) goes to the typer app, whose ``enqueue``
command calls the same ``run``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from .visible import visible


def _invalid(message: str) -> Exception:
    from queuectl.client import InvalidInput

    return InvalidInput(message)


_scan = json.JSONDecoder().scan_once  # the C scanner, without json.loads' Python layers


def _loads(text: str) -> Any:
    """``json.loads(text)``, faster for the common line: one value, no leading space.
    Anything else takes json.loads itself, which also words the errors."""
    try:
        value, end = _scan(text, 0)
    except (StopIteration, ValueError):
        return json.loads(text)
    if end != len(text) and not text[end:].isspace():
        return json.loads(text)  # raises "Extra data"
    return value


def parse_object(text: str, where: str = "") -> Any:
    try:
        if not text.isascii():
            text.encode("utf-8")  # bytes that were not UTF-8 (argv keeps them as surrogates)
        value = _loads(text)
        # JSON allows lone surrogate escapes ("\\ud800"), which no UTF-8 message can carry
        if "\\u" in text:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except json.JSONDecodeError as exc:
        raise _invalid(f"{where}invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
                       " (quote the whole job in single quotes)") from None
    except UnicodeEncodeError:
        raise _invalid(f"{where}invalid text: a string holds a lone surrogate (\\ud800-\\udfff)"
                       " or bytes that are not UTF-8") from None
    except RecursionError:
        raise _invalid(f"{where}invalid JSON: nested too deeply") from None
    return value


def read_lines(path: str) -> list[tuple[int, Any]]:
    """(line number, job) for every non-blank line of a JSON Lines file ('-': stdin)."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise _invalid(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    numbered = [(number, line) for number, line in enumerate(text.splitlines(), 1)
                if line.strip()]
    if not numbered:
        raise _invalid(f"{path} holds no jobs (one JSON object per line)")
    return [(number, parse_object(line, f"line {number}: ")) for number, line in numbered]


def run(endpoint: str | None, job: str | None, file: str | None, as_json: bool) -> None:
    """Enqueue one job (JSON text) or every job of ``file``, and print the outcome."""
    from queuectl.client import Client

    if (job is None) == (file is None):
        raise _invalid("give one job as JSON or --file PATH (not both)")
    with Client(endpoint) as qc:
        if job is not None:
            result = qc.enqueue(parse_object(job))
            _print(result, as_json, f"Enqueued job: {result['id']}")
            return
        numbered = read_lines(file)
        result = qc.enqueue_many([spec for _, spec in numbered],
                                 names=[f"line {number}" for number, _ in numbered])
        _print(result, as_json, f"Enqueued {result['enqueued']} jobs")


def _print(result: Any, as_json: bool, text: str) -> None:
    sys.stdout.write((json.dumps(result) if as_json else visible(text)) + "\n")


def _plain_form(argv: list[str]) -> dict[str, Any] | None:
    """The options of a plain ``enqueue`` command line, or None for anything else."""
    found: dict[str, Any] = {"broker": None, "global_broker": None, "job": None, "file": None,
                             "as_json": False}
    args, seen_command = list(argv), False
    while args:
        arg = args.pop(0)
        name, eq, value = arg.partition("=")
        if name in ("--broker", "--file", "-f") and (eq or args) and (name != "-f" or not eq):
            value = value if eq else args.pop(0)
            if name == "--broker":
                found["broker" if seen_command else "global_broker"] = value
            elif seen_command:
                found["file"] = value
            else:
                return None
        elif arg == "--json" and seen_command:
            found["as_json"] = True
        elif arg == "enqueue" and not seen_command:
            seen_command = True
        elif seen_command and found["job"] is None and not arg.startswith("-"):
            found["job"] = arg
        else:
            return None  # --help, an unknown option, a second job: the full CLI answers
    return found if seen_command else None


def fast_main(argv: list[str]) -> int | None:
    """Run a plain ``enqueue`` command line; None if it is not one. Errors go to
    the caller's boundary (cli/main.py), as the typer app's do."""
    import os

    found = _plain_form(argv)
    if found is None:
        return None
    endpoint = found["broker"] or found["global_broker"] or os.environ.get("QUEUECTL_BROKER")
    run(endpoint, found["job"], found["file"], found["as_json"])
    return 0
