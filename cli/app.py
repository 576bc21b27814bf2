"""The typer app of ``queuectl``: every command group, and click's errors as exit codes.

``main.py`` is the entry point; it sends here every command line that is not
a plain ``enqueue``.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from . import config, dlq, jobs, keys, queues, workers
from .dashboard import dashboard
from .up import up
from .visible import visible

try:  # typer >= 0.17 vendors click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer uses click itself
    # the same module, from click itself: mypy checks against the typer installed
    from click import exceptions as click_errors  # type: ignore[no-redef]

app = typer.Typer(
    name="queuectl", add_completion=False, no_args_is_help=True,
    pretty_exceptions_enable=False, rich_markup_mode=None,
    help="QueueCTL: a durable job queue for shell commands. Every command talks to a broker "
         "(--broker or QUEUECTL_BROKER, default tcp://127.0.0.1:5555).")


@app.callback()
def _global(ctx: typer.Context, broker: Annotated[str | None, typer.Option(
        "--broker", envvar="QUEUECTL_BROKER", help="broker endpoint for every command")] = None,
) -> None:
    ctx.obj = {"broker": broker}


jobs.register(app)
app.add_typer(dlq.app, name="dlq")
app.add_typer(config.app, name="config")
app.add_typer(workers.app, name="worker")
app.add_typer(keys.app, name="keys")
app.add_typer(queues.app, name="queue")
app.command()(workers.agents)
app.command()(up)
app.command()(dashboard)


def run(args: list[str]) -> int:
    command = typer.main.get_command(app)
    try:
        # Without standalone mode, an Exit(n) (worker start, or Ctrl-C in
        # typer >= 0.17) comes back as the return value.
        code = command.main(args=args, prog_name="queuectl", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        sys.stdout.write(exc.ctx.get_help() + "\n")
        return 0
    except click_errors.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        sys.stderr.write(f"queuectl: {visible(exc.format_message())}{hint}\n")
        return 2
    except typer.Abort:  # not in typer._click.exceptions: typer owns Abort and Exit
        sys.stderr.write("queuectl: interrupted\n")
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    return code if isinstance(code, int) else 0
