"""A job the kernel cannot exec is refused at enqueue, by the CLI and by the broker;
one just inside the limits runs on a real agent (README, "Jobs": `env`)."""

from __future__ import annotations

import json

import pytest

from harness import run_cli
from queuectl.client import InvalidInput

pytestmark = pytest.mark.integration

MAX_ARG_BYTES = 131072  # Linux's MAX_ARG_STRLEN: one argv or KEY=VALUE string with its NUL
MAX_COMMAND_BYTES = MAX_ARG_BYTES - 1
MAX_EXEC_BYTES = 1 << 20  # what the README promises a job's command and env may take

TRUE = json.dumps({"id": "fine", "command": "true"})


def one_line_error(result, *words: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-300:])
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr[-300:]
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    return result.stderr


def test_an_environment_exec_cannot_take_is_refused_and_one_just_inside_runs(broker,
                                                                              start_agent):
    # one 1 MB value: every attempt used to fail with "Argument list too long"
    big = json.dumps({"id": "big", "command": "true", "env": {"BIG": "x" * 1_000_000}})
    one_line_error(run_cli(broker, "enqueue", "--file", "-", input=f"{TRUE}\n{big}\n"),
                   "line 2", "field 'env'", "'BIG'", "131071")

    # the command plus its environment over 1 MiB, though each string fits
    command = "echo " + " ".join(f"${{#V{n}}}" for n in range(8)) + " #"
    command += "x" * (100_000 - len(command))
    spare = MAX_EXEC_BYTES - 7 * MAX_ARG_BYTES - (len(command) + 1)  # for V7=...\0
    env = {f"V{n}": "v" * (MAX_ARG_BYTES - 4) for n in range(7)}  # V0=... and \0: 131072
    over = {"id": "over", "command": command, "env": {**env, "V7": "v" * (spare - 3)}}
    one_line_error(run_cli(broker, "enqueue", "--file", "-", input=json.dumps(over) + "\n"),
                   "line 1", "field 'env'", f"{MAX_EXEC_BYTES + 1} bytes", "1 MiB")

    # the broker refuses them too, for a client that skips the checks
    with broker.client() as qc:
        for job in (json.loads(big), over):
            with pytest.raises(InvalidInput, match="field 'env'"):
                qc.call("enqueue", job=job)
        with pytest.raises(InvalidInput, match="job 2: field 'env'"):
            qc.call("enqueue", jobs=[json.loads(TRUE), over])
        with pytest.raises(InvalidInput, match=r"field 'command'.*131071"):
            qc.call("enqueue", job={"command": "x" * (MAX_COMMAND_BYTES + 1)})
        assert qc.list() == []

    # exactly at every limit: accepted, and the agent really runs it
    start_agent(count=1)
    inside = {"id": "inside", "command": command, "env": {**env, "V7": "v" * (spare - 4)}}
    result = run_cli(broker, "enqueue", "--file", "-", input=json.dumps(inside) + "\n")
    assert result.returncode == 0, result.stderr
    with broker.client() as qc:
        done = qc.wait("inside", timeout=30)
        assert (done["state"], done["exit_code"]) == ("completed", 0), done
        output = b"".join(chunk.data for chunk in qc.logs("inside"))
    assert output.split() == [str(MAX_ARG_BYTES - 4).encode()] * 7 + [str(spare - 4).encode()]
