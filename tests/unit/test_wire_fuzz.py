"""Hostile frames against ``decode``, for every wire message type.

For each message class registered in proto (enumerated from the registry, so
a new message type is fuzzed without touching this file), ``decode`` of
random bytes, truncated and mutated encodings, valid envelopes with
wrong-typed, missing or extra fields, other protocol versions, unknown type
names and deeply nested garbage either returns the right, well-typed message
or raises ProtocolError (VersionMismatch for another version). Never any
other exception: in the broker, anything else escapes ``_handle_frame`` and
ends the process. test_proto.py has the hand-picked cases; this file is the
generated ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator
import sys
import types
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st

from hostile import assert_decoded_as_sent, field_types, holds
from queuectl.proto import VERSION, ProtocolError, VersionMismatch, codec, decode, encode
from queuectl.proto import messages as m

MESSAGES: list[Any] = sorted(codec._REGISTRY.values(), key=operator.attrgetter("TYPE"))
TYPE_NAMES = {cls.TYPE for cls in MESSAGES}
FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# msgpack's unpacker refuses nesting deeper than this (StackError); up to it,
# a nested value reaches decode as a Python object.
MSGPACK_MAX_DEPTH = 1024
DEFAULT_RECURSION_LIMIT = 1000  # CPython's; queuectl-broker does not change it


# --- what decode must return ----------------------------------------------------

def required(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


def assert_well_typed(msg) -> None:
    cls = type(msg)
    assert cls in MESSAGES, f"decode returned an unregistered {cls!r}"
    for name, annotation in field_types(cls).items():
        value = getattr(msg, name)
        if isinstance(value, tuple) and value == ():  # a field left at its () default
            continue
        assert holds(annotation, value), f"{cls.TYPE}.{name} = {value!r} does not fit {annotation}"


@contextlib.contextmanager
def interpreter_recursion_limit():
    """Hypothesis raises the recursion limit while it runs a test; the broker runs
    with CPython's default, so decode must cope with that one."""
    saved = sys.getrecursionlimit()
    sys.setrecursionlimit(DEFAULT_RECURSION_LIMIT)
    try:
        yield
    finally:
        sys.setrecursionlimit(saved)


def decode_or_protocol_error(data: bytes):
    """decode's contract: ProtocolError, or the message the frame says, exactly (a
    well-typed message that decode made up or changed fails); anything else fails
    the test."""
    try:
        with interpreter_recursion_limit():
            msg = decode(data)
    except ProtocolError as exc:
        return exc
    except BaseException as exc:  # noqa: BLE001 - the point is to catch everything else
        pytest.fail(f"decode raised {type(exc).__name__}: {str(exc)[:200]} "
                    f"for a frame of {len(data)} bytes starting {data[:40]!r}")
    assert_well_typed(msg)
    assert_decoded_as_sent(data, msg)
    return msg


def must_reject(data: bytes, kind: type[ProtocolError] = ProtocolError) -> ProtocolError:
    result = decode_or_protocol_error(data)
    assert isinstance(result, kind), f"decode accepted {data[:80]!r} as {result!r}"
    return result


# --- strategies ----------------------------------------------------------------------

INTS = st.one_of(st.integers(-(2**63), 2**64 - 1),
                 st.sampled_from([0, 1, -1, 2**63 - 1, 2**64 - 1]))
INT64 = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, 1, -1, 2**63 - 1]))
FLOATS = st.floats(allow_nan=False)  # NaN != NaN defeats the round-trip equality
TEXT = st.text(max_size=30)
BLOB = st.binary(max_size=30)
# Ext types other than -1 (which msgpack turns into a Timestamp object).
EXT = st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))


def plain(keys: st.SearchStrategy) -> st.SearchStrategy:
    """Nested msgpack values that decode back equal (for fields typed dict/list/Any)."""
    scalar = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT, BLOB, EXT)
    return st.recursive(scalar, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)), max_leaves=15)


NESTED = plain(st.one_of(TEXT, BLOB))
# Anything msgpack decodes (str or bytes map keys), NaN and timestamps included.
DECODABLE = st.recursive(
    st.one_of(st.none(), st.booleans(), INTS, st.floats(), TEXT, BLOB, EXT,
              st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999))),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(TEXT, BLOB), inner, max_size=4)),
    max_leaves=15)
# Anything at all, including map keys that strict_map_key refuses and NaN.
GARBAGE = st.recursive(
    st.one_of(st.none(), st.booleans(), INTS, st.floats(), TEXT, BLOB, EXT,
              st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999))),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(TEXT, INTS, st.booleans()), inner,
                                            max_size=4)),
    max_leaves=15)


def value_for(annotation) -> st.SearchStrategy:
    """Values a field of this annotation accepts."""
    if annotation is typing.Any:
        return NESTED
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return st.one_of(*(st.none() if arg is type(None) else value_for(arg)
                           for arg in typing.get_args(annotation)))
    return {
        int: INT64, float: st.one_of(FLOATS, INT64), str: TEXT, bytes: BLOB, bool: st.booleans(),
        dict: st.dictionaries(st.one_of(TEXT, BLOB), NESTED, max_size=4),
        list: st.lists(NESTED, max_size=4),
    }[annotation]


def wrong_value_for(annotation) -> st.SearchStrategy:
    return GARBAGE.filter(lambda v: not holds(annotation, v))


def simple(cls):
    """One plain instance of ``cls``, for explicit examples."""
    plain_values = {int: 1, float: 1.0, str: "x", bytes: b"x", bool: True, dict: {}, list: []}
    return cls(**{name: plain_values.get(a) for name, a in field_types(cls).items()
                  if name in required(cls)})


def messages_of(cls) -> st.SearchStrategy:
    return st.builds(cls, **{name: value_for(a) for name, a in field_types(cls).items()})


def body_of(msg) -> dict:
    return {name: getattr(msg, name) for name in field_types(type(msg))}


def frame(version, type_name, body) -> bytes:
    return msgpack.packb([version, type_name, body], use_bin_type=True)


@st.composite
def valid_frames(draw, cls) -> bytes:
    return encode(draw(messages_of(cls)))


each_message = pytest.mark.parametrize("cls", MESSAGES, ids=lambda cls: cls.TYPE)
def typed_fields(cls) -> dict[str, typing.Any]:
    """The fields that some value does not fit (a field typed Any takes anything)."""
    return {name: a for name, a in field_types(cls).items() if a is not typing.Any}


each_message_with_typed_fields = pytest.mark.parametrize(
    "cls", [cls for cls in MESSAGES if typed_fields(cls)], ids=lambda cls: cls.TYPE)
each_message_with_required_fields = pytest.mark.parametrize(
    "cls", [cls for cls in MESSAGES if required(cls)], ids=lambda cls: cls.TYPE)


# --- the registry --------------------------------------------------------------------------

def test_the_fuzzed_types_are_every_message_of_the_protocol():
    declared = {obj for obj in vars(m).values() if isinstance(obj, type) and hasattr(obj, "TYPE")}
    assert declared and declared <= set(MESSAGES)
    assert len(TYPE_NAMES) == len(MESSAGES)


# --- valid frames, with nested values wherever a field allows them -----------------------

@each_message
def test_valid_messages_with_nested_values_decode_to_the_same_message(cls):
    @FUZZ
    @given(msg=messages_of(cls))
    def check(msg):
        decoded = decode_or_protocol_error(encode(msg))
        assert type(decoded) is cls
        for name, value in body_of(msg).items():
            got = getattr(decoded, name)
            assert (list(got) if isinstance(value, tuple) else got) == (
                list(value) if isinstance(value, tuple) else value), name

    check()


# --- truncated and mutated encodings ----------------------------------------------------

@each_message
def test_truncated_encodings_raise_protocol_error(cls):
    @FUZZ
    @given(data=valid_frames(cls), cut=st.floats(0, 1, exclude_max=True))
    def check(data, cut):
        must_reject(data[:int(len(data) * cut)])

    check()


@st.composite
def mutations(draw, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(0, len(buf) - 1)))
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "splice"]))
        if kind == "flip" and buf:
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and buf:
            buf[at] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0x90, 0xC0, 0xC1, 0xC4, 0xCF,
                                             0xD9, 0xDB, 0xDD, 0xDF, 0xFF]))
        elif kind == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and buf:
            del buf[at:at + draw(st.integers(1, 8))]
        elif kind == "splice":
            buf[at:] = draw(st.binary(max_size=40))
    return bytes(buf)


@each_message
def test_mutated_encodings_decode_to_a_well_typed_message_or_protocol_error(cls):
    @FUZZ
    @given(st.data())
    def check(data):
        mutated = data.draw(valid_frames(cls).flatmap(mutations))
        decode_or_protocol_error(mutated)

    check()


@each_message
def test_random_bytes_after_a_valid_header_raise_only_protocol_error(cls):
    header = msgpack.packb(VERSION) + msgpack.packb(cls.TYPE)

    @FUZZ
    @given(prefix=st.sampled_from([b"\x93", b"\x93", b"\xdc\x00\x03", b"\xdd\x00\x00\x00\x03"]),
           tail=st.binary(max_size=64))
    def check(prefix, tail):
        decode_or_protocol_error(prefix + header + tail)

    check()


# --- valid envelopes with a bad body ---------------------------------------------------------

@each_message_with_typed_fields
def test_wrong_field_types_raise_protocol_error(cls):
    fields = typed_fields(cls)

    @FUZZ
    @given(msg=messages_of(cls), data=st.data())
    def check(msg, data):
        body = body_of(msg)
        spoiled = data.draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, unique=True))
        for name in spoiled:
            body[name] = data.draw(wrong_value_for(fields[name]), label=name)
        must_reject(frame(VERSION, cls.TYPE, body))

    check()


@each_message_with_required_fields
def test_missing_required_fields_raise_protocol_error(cls):
    names = required(cls)

    @FUZZ
    @given(msg=messages_of(cls), data=st.data())
    def check(msg, data):
        body = body_of(msg)
        for name in data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True)):
            del body[name]
        must_reject(frame(VERSION, cls.TYPE, body))

    check()


@each_message
def test_extra_fields_raise_protocol_error(cls):
    known = set(field_types(cls))

    @FUZZ
    @given(msg=messages_of(cls), extra=st.dictionaries(
        st.one_of(TEXT, BLOB).filter(lambda k: k not in known), GARBAGE, min_size=1, max_size=3))
    def check(msg, extra):
        must_reject(frame(VERSION, cls.TYPE, {**body_of(msg), **extra}))

    check()


@each_message
def test_a_body_that_is_not_a_map_raises_protocol_error(cls):
    @FUZZ
    @given(body=GARBAGE.filter(lambda v: not isinstance(v, dict)))
    def check(body):
        must_reject(frame(VERSION, cls.TYPE, body))

    check()


# --- versions and type names --------------------------------------------------------------

@each_message
def test_other_protocol_versions_raise_version_mismatch(cls):
    @FUZZ
    @given(msg=messages_of(cls),
           version=DECODABLE.filter(lambda v: not (type(v) is int and v == VERSION)))
    def check(msg, version):
        error = must_reject(frame(version, cls.TYPE, body_of(msg)), VersionMismatch)
        assert isinstance(error, VersionMismatch)  # must_reject checked it
        # a scalar is kept as is; anything else only as a short description
        if version is None or isinstance(version, (bool, int, float)) or (
                isinstance(version, str) and len(version) <= 40):
            assert error.peer_version == version or version != version  # NaN
        else:
            assert isinstance(error.peer_version, str) and len(error.peer_version) <= 60

    check()


@each_message
def test_unknown_type_names_raise_protocol_error(cls):
    near_misses = st.sampled_from([cls.TYPE.upper(), cls.TYPE.title(), f" {cls.TYPE}",
                                   f"{cls.TYPE}\0", f"{cls.TYPE}s", cls.TYPE[:-1],
                                   cls.TYPE.encode(), [cls.TYPE], {cls.TYPE: 1}])

    @FUZZ
    @given(msg=messages_of(cls),
           type_name=st.one_of(near_misses, GARBAGE).filter(lambda t: t not in TYPE_NAMES
                                                            if isinstance(t, str) else True))
    def check(msg, type_name):
        error = must_reject(frame(VERSION, type_name, body_of(msg)))
        assert not isinstance(error, VersionMismatch)

    check()


# --- deeply nested garbage ---------------------------------------------------------------------

def nested_bytes(depth: int, kind: str) -> bytes:
    """A msgpack value nested ``depth`` levels deep, built as bytes (packb refuses deep input)."""
    if kind == "array":
        return b"\x91" * depth + b"\x90"
    return b"\x81\xa1k" * depth + b"\x80"  # {"k": {"k": ... {}}}


def with_value_at(cls, msg, position: str, value: bytes) -> bytes:
    """The encoding of ``msg`` with raw msgpack ``value`` spliced in at ``position``."""
    body = body_of(msg)
    if position == "version":
        return b"\x93" + value + msgpack.packb(cls.TYPE) + msgpack.packb(body, use_bin_type=True)
    if position == "type":
        return b"\x93" + msgpack.packb(VERSION) + value + msgpack.packb(body, use_bin_type=True)
    if position == "body":
        return b"\x93" + msgpack.packb(VERSION) + msgpack.packb(cls.TYPE) + value
    name = position if position in body else "zz-extra"
    body.pop(name, None)
    count = len(body) + 1
    header = bytes([0x80 | count]) if count < 16 else b"\xde" + count.to_bytes(2, "big")
    pairs = b"".join(msgpack.packb(k) + msgpack.packb(v, use_bin_type=True)
                     for k, v in body.items())
    return (b"\x93" + msgpack.packb(VERSION) + msgpack.packb(cls.TYPE) + header + pairs
            + msgpack.packb(name) + value)


@each_message
def test_deeply_nested_garbage_anywhere_raises_only_protocol_error(cls):
    positions = ["version", "type", "body", "extra field"] + list(field_types(cls))

    # No shrinking: the frame is big and the failing depth and position say it all.
    @settings(max_examples=50, deadline=None, phases=[Phase.explicit, Phase.generate])
    @given(msg=messages_of(cls), position=st.sampled_from(positions),
           depth=st.one_of(st.integers(1, MSGPACK_MAX_DEPTH + 50),
                           st.integers(MSGPACK_MAX_DEPTH - 60, MSGPACK_MAX_DEPTH + 2)),
           kind=st.sampled_from(["array", "map"]))
    @example(msg=simple(cls), position="type", depth=1000, kind="array")
    def check(msg, position, depth, kind):
        data = with_value_at(cls, msg, position, nested_bytes(depth, kind))
        result = decode_or_protocol_error(data)
        if position in ("version", "type", "body", "extra field"):
            assert isinstance(result, ProtocolError), f"accepted garbage at {position}"

    check()


@pytest.mark.parametrize("position", ["version", "type"])
@pytest.mark.parametrize("kind", ["array", "map"])
def test_a_nested_version_or_type_just_inside_msgpacks_depth_limit_is_a_protocol_error(
        position, kind):
    """The hand-picked case behind the generated one above: about 1,000 levels
    of nesting still unpack, and turning them into an error message must not
    blow Python's recursion limit (a 1 KB frame that would end the broker)."""
    msg = m.Heartbeat()
    for depth in (990, 1000, 1010, 1020):
        must_reject(with_value_at(m.Heartbeat, msg, position, nested_bytes(depth, kind)))


# --- what an error says: short, whatever the peer sent --------------------------------------

# big frames: no shrinking
@settings(max_examples=40, deadline=None, phases=[Phase.explicit, Phase.generate])
@given(version=st.one_of(st.binary(min_size=1000, max_size=5000),
                         st.text(min_size=1000, max_size=5000),
                         st.lists(INTS, min_size=300, max_size=600)),
       type_name=st.sampled_from(sorted(TYPE_NAMES)))
def test_the_error_for_another_version_stays_short_whatever_the_peer_sent(version, type_name):
    """The broker sends this text back to the peer and logs it: a peer must not be
    able to make it huge (test_proto checks the same for unknown type names)."""
    error = must_reject(frame(version, type_name, {}), VersionMismatch)
    assert len(str(error)) < 300, \
        f"{len(str(error))} characters for a {len(frame(version, type_name, {}))} byte frame"


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_protocol_error_message_stays_short(data):
    cls = data.draw(st.sampled_from(MESSAGES))
    junk = data.draw(st.one_of(st.binary(min_size=500, max_size=3000),
                               st.text(min_size=500, max_size=3000)))
    where = data.draw(st.sampled_from(["type", "field name", "field value", "body"]))
    if where == "type":
        raw = frame(VERSION, junk, {})
    elif where == "field name":
        raw = frame(VERSION, cls.TYPE, {junk: 1})
    elif where == "field value":
        fields = sorted(field_types(cls))
        assume(fields)
        name = data.draw(st.sampled_from(fields))
        assume(not holds(field_types(cls)[name], junk))
        raw = frame(VERSION, cls.TYPE, {name: junk})
    else:
        raw = frame(VERSION, cls.TYPE, junk)
    error = must_reject(raw)
    assert len(str(error)) < 300
