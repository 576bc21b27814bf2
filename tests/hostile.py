"""What hostile peers send, and how a test tells that the broker took it well.

Shared by the wire fuzzer (``tests/integration/test_wire_fuzz_broker.py``,
malformed frames) and the agent property test
(``tests/integration/test_agent_properties.py``, well-typed agent messages):
hypothesis strategies for values that are hostile within their declared type,
the check that the broker is alive and answers, the broker log's record of
handler bugs, and a JSON parser that refuses what a script's would.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

import msgpack
from hypothesis import strategies as st

from queuectl.proto import VERSION
from queuectl.proto import messages as m

AGENT_MESSAGES = [m.Hello, m.Started, m.Output, m.Result, m.Heartbeat, m.Drain, m.Reject, m.Bye]

INTS = st.one_of(st.integers(-(2**63), 2**64 - 1), st.integers(-3, 300),
                 st.sampled_from([0, 2**31, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)]))
FLOATS = st.one_of(st.floats(), st.sampled_from([float("nan"), float("inf"), -0.0, 1e308]))
TEXT = st.text(max_size=40)
BLOB = st.binary(max_size=40)
GARBAGE = st.recursive(
    st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT, BLOB,
              st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(TEXT, BLOB), inner, max_size=4)),
    max_leaves=12)


def typed_value(annotation) -> st.SearchStrategy:
    """A value of the field's declared type, hostile within that type."""
    if annotation is typing.Any:
        return GARBAGE
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return st.one_of(*(st.none() if a is type(None) else typed_value(a)
                           for a in typing.get_args(annotation)))
    return {int: INTS, float: st.one_of(FLOATS, INTS), str: TEXT, bytes: st.binary(max_size=4096),
            bool: st.booleans(), dict: st.dictionaries(st.one_of(TEXT, BLOB), GARBAGE, max_size=4),
            list: st.lists(GARBAGE, max_size=6)}[annotation]


def field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def well_typed(cls) -> st.SearchStrategy:
    return st.builds(cls, **{name: typed_value(a) for name, a in field_types(cls).items()})


# --- did the broker take it well -------------------------------------------------------------

def broker_bugs(log: str) -> list[str]:
    """Each distinct 'bug while handling X' of the broker's log, with where it failed."""
    found: list[str] = []
    lines = log.splitlines()
    for at, line in enumerate(lines):
        if "bug while handling" not in line:
            continue
        what = line.split("bug while handling ", 1)[1].split(" from ")[0]
        frames, error = [], "?"
        for follow in lines[at + 1:]:
            if follow.startswith("  File "):
                frames.append(follow.strip())
            elif follow and not follow.startswith((" ", "Traceback")):
                error = follow
                break
        bug = f"{what}: {error} ({frames[-1] if frames else 'no traceback'})"
        if bug not in found:
            found.append(bug)
    return found


def ping(broker) -> None:
    with broker.client(timeout=5) as qc:
        assert qc.ping()["protocol"] == VERSION


def assert_alive(broker) -> None:
    assert broker.proc.poll() is None, \
        f"the broker exited with {broker.proc.returncode}:\n{broker.log()[-1500:]}"
    ping(broker)


def strict_json(text: str):
    """``text`` as a script's JSON parser reads it: NaN and Infinity are not JSON."""
    def refuse(constant):
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)
