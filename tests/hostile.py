"""What hostile peers send, and how a test tells that the receiver took it well.

Shared by the wire fuzzers (``tests/unit/test_wire_fuzz.py`` and
``tests/integration/test_wire_fuzz_broker.py``, malformed frames), the proto
unit tests and the agent property test
(``tests/integration/test_agent_properties.py``, well-typed agent messages):
hypothesis strategies for values that are hostile within their declared type,
what a field may hold (independently of codec's own checks), the check that
``decode`` returned exactly what a frame says, the check that the broker is
alive and answers, the broker log's record of handler bugs, and a JSON parser
that refuses what a script's would.
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


# --- what a frame may hold, and did decode read it as sent -----------------------------------

def holds(annotation, value) -> bool:
    """Does ``value`` (as msgpack decodes it) fit the field annotation?"""
    if annotation is typing.Any:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(holds(arg, value) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if type(value) is int and not -(2**63) <= value < 2**63:
        return False  # every int field is 64-bit signed (SQLite's INTEGER)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def default_of(field: dataclasses.Field) -> Any:
    """The value a message field takes when its frame leaves it out."""
    if field.default is not dataclasses.MISSING:
        return field.default
    factory = field.default_factory
    assert callable(factory), f"{field.name} has no default"
    return factory()


def body_fits(cls, body: Any) -> bool:
    """Is ``body`` a valid body of message ``cls``: a map of its fields only, every
    required one present, each holding a value of its declared type?"""
    if not isinstance(body, dict):
        return False
    fields = {f.name: f for f in dataclasses.fields(cls)}
    types_ = field_types(cls)
    return (all(key in fields and holds(types_[key], value) for key, value in body.items())
            and all(name in body for name, f in fields.items()
                    if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING))


def same_value(a: Any, b: Any) -> bool:
    """The same msgpack value: True is not 1, 1 is not 1.0, a NaN is itself, () is []."""
    try:
        return msgpack.packb(a, use_bin_type=True) == msgpack.packb(b, use_bin_type=True)
    except ValueError:  # nested deeper than packb goes: compare as Python values
        return a == b


def assert_decoded_as_sent(data: bytes, msg: Any) -> None:
    """``msg``, what ``decode`` returned for ``data``, is exactly what the frame says:
    the registered message of the frame's type, each field holding the frame's value
    (one the frame leaves out, its default), and it survives a round trip unchanged.
    A decode that makes up a message, drops or converts a value, or takes a frame of
    another version, type or shape fails here."""
    from queuectl.proto import codec, decode, encode

    cls = type(msg)
    registered_as = getattr(cls, "TYPE", None)
    assert registered_as is not None and codec._REGISTRY.get(registered_as) is cls, \
        f"decode returned {msg!r}, not a message, for {data[:80]!r}"
    try:
        envelope = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several unrelated types on garbage
        raise AssertionError(f"decode accepted {data[:80]!r}, which is not msgpack: "
                             f"{exc.__class__.__name__}") from None
    assert isinstance(envelope, list) and len(envelope) == 3, \
        f"decode accepted {data[:80]!r}, which is not [version, type, body]"
    version, type_name, body = envelope
    assert type(version) is int and version == VERSION, f"decode accepted version {version!r}"
    assert type_name == cls.TYPE, f"a {type_name!r} frame decoded as {cls.TYPE}"
    assert body_fits(cls, body), f"decode accepted the {cls.TYPE} body {body!r}"
    for field in dataclasses.fields(cls):
        sent = body[field.name] if field.name in body else default_of(field)
        assert same_value(getattr(msg, field.name), sent), \
            f"{cls.TYPE}.{field.name}: sent {sent!r}, decoded {getattr(msg, field.name)!r}"
    again = decode(encode(msg))
    assert type(again) is cls and all(same_value(getattr(again, f.name), getattr(msg, f.name))
                                      for f in dataclasses.fields(cls)), (msg, again)


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
