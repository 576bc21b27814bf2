"""The ``queuectl`` program's entry point and its error-to-exit-code boundary.

Errors a user can cause print one line on stderr and exit with the contract's
code: 2 invalid input, 3 no broker answered, 1 anything else. A plain
``enqueue`` runs without loading the typer app (see ``enqueue.py``); every
other command line goes to the app in ``app.py``.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from queuectl.client import QueueError

    from .visible import visible

    args = sys.argv[1:] if argv is None else argv
    try:
        from .enqueue import fast_main

        code = fast_main(args)
        if code is None:
            from .app import run

            code = run(args)
    except QueueError as exc:
        sys.stderr.write(f"queuectl: {visible(str(exc))}\n")  # it may quote a peer's text
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("queuectl: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0  # `queuectl list | head` closed our stdout
    return code


if __name__ == "__main__":
    sys.exit(main())
