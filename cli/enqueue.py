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

import contextlib
import itertools
import json
import sys
from collections.abc import Iterator
from typing import IO, Any

from .visible import visible


def _invalid(message: str) -> Exception:
    from queuectl.client import InvalidInput

    return InvalidInput(message)


# The C scanner, without json.loads' Python layers (typeshed does not declare the attribute).
_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


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


def _cannot_read(path: str, exc: Exception) -> Exception:
    return _invalid(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")


def _lines(handle: IO[str], path: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines, read as they are needed."""
    try:
        for number, line in enumerate(handle, 1):
            if not line.isspace():
                yield number, line
    except (OSError, UnicodeDecodeError) as exc:
        raise _cannot_read(path, exc) from None


def read_lines(path: str, handle: IO[str]) -> Iterator[tuple[str, Any]]:
    """("line N", job) for every non-blank line of a JSON Lines file, read and
    parsed one at a time, so that a file of any size takes little memory."""
    lines = _lines(handle, path)
    first = next(lines, None)
    if first is None:
        raise _invalid(f"{path} holds no jobs (one JSON object per line)")
    for number, line in itertools.chain((first,), lines):
        yield f"line {number}", parse_object(line, f"line {number}: ")


@contextlib.contextmanager
def _open(path: str) -> Iterator[IO[str]]:
    if path == "-":
        yield sys.stdin
        return
    try:
        # Not in the with: only open()'s own OSError is a file the user named badly.
        handle = open(path, encoding="utf-8")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise _cannot_read(path, exc) from None
    with handle:
        yield handle


class _IdSpool:
    """The ids of a streamed batch, kept in a temporary file until it is committed:
    ``--json`` prints them all, and a million of them need not fit in memory."""

    def __init__(self, spool: IO[str]):
        self.spool, self.separator = spool, ""

    def add(self, ids: list[str]) -> None:
        if ids:
            # ids match jobspec.ID_PATTERN (or are hex): nothing in them needs a JSON escape
            self.spool.write(self.separator + ", ".join(f'"{i}"' for i in ids))
            self.separator = ", "

    def print(self, count: int) -> None:
        import shutil

        sys.stdout.write(f'{{"enqueued": {count}, "ids": [')
        self.spool.seek(0)
        shutil.copyfileobj(self.spool, sys.stdout)
        sys.stdout.write("]}\n")


def _enqueue_file(qc: Any, path: str, as_json: bool) -> None:
    """Stream the file to the broker: Client.enqueue_many reads it as it sends."""
    import tempfile  # here: with shutil, 6 ms that a single enqueue need not pay

    with _open(path) as handle, tempfile.TemporaryFile("w+", encoding="ascii") as spool:
        jobs, names = itertools.tee(read_lines(path, handle))  # zip reads them in step
        ids = _IdSpool(spool)
        result = qc.enqueue_many((job for _, job in jobs), names=(name for name, _ in names),
                                 on_ids=ids.add if as_json else _ignore)
        if as_json:
            ids.print(result["enqueued"])
        else:
            sys.stdout.write(f"Enqueued {result['enqueued']} jobs\n")


def _ignore(ids: list[str]) -> None:
    pass


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
        assert file is not None  # one of job and file, checked above
        _enqueue_file(qc, file, as_json)


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
