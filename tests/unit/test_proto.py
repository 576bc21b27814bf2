"""The wire: every message round-trips; anything malformed is one ProtocolError."""

from __future__ import annotations

import dataclasses
import operator
import types
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostile import assert_decoded_as_sent, body_fits
from queuectl.proto import MAX_FRAME, VERSION, ProtocolError, VersionMismatch, codec, decode, encode
from queuectl.proto import messages as m

MESSAGES: list[Any] = sorted(codec._REGISTRY.values(), key=operator.attrgetter("TYPE"))

INT64 = st.integers(-(2**63), 2**63 - 1)
FLOAT = st.floats(allow_nan=False)  # NaN != NaN would defeat the equality check
SCALAR = st.one_of(st.none(), st.booleans(), INT64, FLOAT, st.text(), st.binary())
MSGPACK_VALUE = st.recursive(
    SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)

BY_TYPE = {
    int: INT64,
    float: st.one_of(FLOAT, INT64),  # an int is a valid float on the wire
    str: st.text(),
    bytes: st.binary(),
    bool: st.booleans(),
    dict: st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=5),
    list: st.lists(INT64, max_size=5),
}


def strategy_for(annotation) -> st.SearchStrategy:
    if annotation is typing.Any:
        return MSGPACK_VALUE
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(st.none() if arg is type(None) else strategy_for(arg)
                           for arg in typing.get_args(annotation)))
    return BY_TYPE[annotation]


def messages_of(cls) -> st.SearchStrategy:
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(cls)})


def sample(cls):
    """One valid instance with plain values, for the malformed-frame tests."""
    values = {int: 7, float: 1.5, str: "x", bytes: b"x", bool: True, dict: {"k": "v"}, list: [1]}
    hints = typing.get_type_hints(cls)
    body: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        annotation = hints[field.name]
        if annotation is typing.Any:
            body[field.name] = {"any": [1, "two"]}
            continue
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        body[field.name] = values[args[0] if args else annotation]
    return cls(**body)


def frame(version, type_name, body) -> bytes:
    return msgpack.packb([version, type_name, body], use_bin_type=True)


def body_of(msg) -> dict:
    return {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}


# --- round trips ---------------------------------------------------------------

def test_every_message_in_the_module_is_registered():
    declared = {obj for obj in vars(m).values() if isinstance(obj, type) and hasattr(obj, "TYPE")}
    assert declared == set(MESSAGES)
    assert {cls.TYPE for cls in MESSAGES} == {
        "hello", "started", "output", "result", "heartbeat", "drain", "reject", "bye",
        "welcome", "dispatch", "cancel", "revoke", "ack", "stop", "error", "request", "reply"}


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda cls: cls.TYPE)
def test_every_message_round_trips(cls):
    @settings(max_examples=40, deadline=None)
    @given(msg=messages_of(cls))
    def check(msg):
        data = encode(msg)
        assert isinstance(data, bytes)
        decoded = decode(data)
        assert type(decoded) is cls
        assert decoded == msg

    check()


@pytest.mark.parametrize("msg", [
    m.Hello(agent_id="a1", host="h", pid=1, slots=2, labels={}),
    m.Welcome(heartbeat_sec=1.0, lease_sec=8.0, kill_grace_sec=5.0, output_limit=1024),
    m.Dispatch(token=1, job_id="j", attempt=1, command="true", timeout_sec=60),
    m.Reply(req_id=1, ok=True),
], ids=lambda msg: msg.TYPE)
def test_optional_fields_left_at_their_defaults_survive_the_wire(msg):
    decoded = decode(encode(msg))
    assert type(decoded) is type(msg)
    for name, value in body_of(msg).items():
        got = getattr(decoded, name)
        # tuple defaults (()) come back as msgpack arrays, i.e. lists
        assert (list(got) if isinstance(value, tuple) else got) == (
            list(value) if isinstance(value, tuple) else value)


def test_bytes_and_text_stay_distinct():
    out = decode(encode(m.Output(token=1, stream=m.STDOUT, offset=0, data=b"\xff\x00raw")))
    assert out.data == b"\xff\x00raw" and isinstance(out.data, bytes)
    err = decode(encode(m.Error(code="x", message="ünïcødé ✓")))
    assert err.message == "ünïcødé ✓"


def test_every_frame_carries_the_protocol_version():
    for cls in MESSAGES:
        version, type_name, _body = msgpack.unpackb(encode(sample(cls)), raw=False)
        assert version == VERSION
        assert type_name == cls.TYPE


# --- malformed frames ---------------------------------------------------------------

def only_protocol_error(data: bytes) -> ProtocolError:
    """decode must raise ProtocolError, and no other exception type."""
    try:
        decode(data)
    except ProtocolError as exc:
        return exc
    pytest.fail(f"decode accepted {data[:60]!r}")


def rejected_or_decoded_as_sent(data: bytes) -> ProtocolError | None:
    """decode's contract for any bytes: ProtocolError (returned), or the message the
    frame says, exactly; any other exception propagates and fails the test."""
    try:
        msg = decode(data)
    except ProtocolError as exc:
        return exc
    assert_decoded_as_sent(data, msg)
    return None


@st.composite
def mutated_frames(draw) -> bytes:
    """A valid frame with one byte changed, cut off or added: some still decode
    (another value in a field), most must not (a flipped type, version or length)."""
    data = bytearray(encode(sample(draw(st.sampled_from(MESSAGES)))))
    at = draw(st.integers(0, len(data) - 1))
    how = draw(st.sampled_from(["set", "cut", "insert"]))
    if how == "set":
        data[at] = draw(st.integers(0, 255))
    elif how == "cut":
        del data[at]
    else:
        data[at:at] = draw(st.binary(min_size=1, max_size=3))
    return bytes(data)


@settings(max_examples=500)
@given(data=st.one_of(st.binary(max_size=200), mutated_frames()))
def test_random_bytes_are_rejected_or_decoded_exactly_as_sent(data):
    rejected_or_decoded_as_sent(data)


# [version, type, body] with each part right or not, and valid ones as they are sent
ENVELOPES = st.one_of(
    st.tuples(st.one_of(st.just(VERSION), INT64, MSGPACK_VALUE),
              st.one_of(st.sampled_from([cls.TYPE for cls in MESSAGES]), MSGPACK_VALUE),
              st.one_of(st.just({}), MSGPACK_VALUE)).map(list),
    st.sampled_from(MESSAGES).map(lambda cls: [VERSION, cls.TYPE, body_of(sample(cls))]))


@settings(max_examples=300)
@given(value=st.one_of(MSGPACK_VALUE, ENVELOPES))
def test_a_msgpack_value_is_rejected_unless_it_is_an_envelope_of_a_valid_message(value):
    error = rejected_or_decoded_as_sent(msgpack.packb(value, use_bin_type=True))
    if isinstance(value, list) and value and type(value[0]) is int and value[0] != VERSION:
        # another version is named as such, whatever follows it
        assert isinstance(error, VersionMismatch) and error.peer_version == value[0], error


@st.composite
def bodies(draw) -> tuple[str, dict]:
    """A type name and a body: random maps, or a valid body of some message with
    at most one thing wrong (a field missing, of another type or out of range, an
    unknown field, or the body of another type)."""
    if draw(st.booleans()):
        return (draw(st.sampled_from([cls.TYPE for cls in MESSAGES])),
                draw(st.dictionaries(st.text(max_size=15), MSGPACK_VALUE, max_size=6)))
    cls = draw(st.sampled_from(MESSAGES))
    body = body_of(draw(messages_of(cls)))
    fields = sorted(body)
    spoil = draw(st.sampled_from(["none", "missing", "value", "unknown", "type"]))
    if spoil == "missing" and fields:
        del body[draw(st.sampled_from(fields))]
    elif spoil == "value" and fields:
        body[draw(st.sampled_from(fields))] = draw(
            st.one_of(MSGPACK_VALUE, st.integers(2**63, 2**64 - 1)))
    elif spoil == "unknown":
        body[draw(st.text(max_size=15))] = draw(MSGPACK_VALUE)
    elif spoil == "type":
        return draw(st.sampled_from([c.TYPE for c in MESSAGES])), body
    return cls.TYPE, body


@settings(max_examples=300)
@given(case=bodies())
def test_a_body_is_accepted_exactly_when_it_fits_its_type(case):
    """Model: hostile.body_fits, which reads the dataclass fields, not the codec's checks."""
    type_name, body = case
    error = rejected_or_decoded_as_sent(frame(VERSION, type_name, body))
    fits = body_fits(codec._REGISTRY[type_name], body)
    assert (error is None) == fits, f"{type_name} {body!r}: fits={fits}, decode: {error}"


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda cls: cls.TYPE)
def test_truncated_frames_are_rejected(cls):
    data = encode(sample(cls))
    for cut in range(len(data)):
        only_protocol_error(data[:cut])


def test_trailing_garbage_is_rejected():
    only_protocol_error(encode(m.Heartbeat()) + b"\x00")


@pytest.mark.parametrize("value", [
    None, 1, "hello", b"bytes", {"type": "hello"}, [], [VERSION], [VERSION, "heartbeat"],
    [VERSION, "heartbeat", {}, "extra"], [VERSION, "heartbeat", []], [VERSION, "heartbeat", None],
    [VERSION, "heartbeat", "body"], [VERSION, None, {}], [VERSION, 5, {}],
    [VERSION, b"heartbeat", {}], [VERSION, ["heartbeat"], {}],
])
def test_valid_msgpack_of_the_wrong_shape_is_rejected(value):
    only_protocol_error(msgpack.packb(value, use_bin_type=True))


@pytest.mark.parametrize("type_name", ["nope", "Hello", "HELLO", "", "hello ", "x" * 1000])
def test_unknown_message_type_is_rejected(type_name):
    error = only_protocol_error(frame(VERSION, type_name, {}))
    assert "unknown message type" in str(error)
    assert len(str(error)) < 200  # a peer cannot make our log lines huge


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda cls: cls.TYPE)
def test_unknown_field_is_rejected(cls):
    body = {**body_of(sample(cls)), "surprise": 1}
    assert "unknown field" in str(only_protocol_error(frame(VERSION, cls.TYPE, body)))


def test_non_string_field_names_are_rejected():
    only_protocol_error(frame(VERSION, "reject", {b"token": 1}))
    only_protocol_error(msgpack.packb([VERSION, "reject", {1: 1}], use_bin_type=True))


REQUIRED = [(cls, f.name) for cls in MESSAGES for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING]


@pytest.mark.parametrize("cls, name", REQUIRED, ids=lambda x: getattr(x, "TYPE", x))
def test_missing_required_field_is_rejected(cls, name):
    body = body_of(sample(cls))
    del body[name]
    only_protocol_error(frame(VERSION, cls.TYPE, body))


WRONG = {int: "1", float: "1.5", str: 1, bytes: "text", bool: 1, dict: [1], list: {"a": 1}}


def wrong_values():
    for cls in MESSAGES:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            annotation = hints[field.name]
            if annotation is typing.Any:
                continue
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            base = args[0] if args else annotation
            yield cls, field.name, WRONG[base]
            if base is not bool:
                yield cls, field.name, True
            if type(None) not in typing.get_args(annotation):
                yield cls, field.name, None


@pytest.mark.parametrize("cls, name, value", list(wrong_values()),
                         ids=lambda x: getattr(x, "TYPE", repr(x)))
def test_wrong_field_types_are_rejected(cls, name, value):
    body = {**body_of(sample(cls)), name: value}
    only_protocol_error(frame(VERSION, cls.TYPE, body))


@pytest.mark.parametrize("msg", [m.Reject(token=True),
                                 m.Started(token=1, pid=False, started_at=0.0),
                                 m.Started(token=1, pid=1, started_at=True)], ids=repr)
def test_bool_where_a_number_is_expected_is_rejected(msg):
    # msgpack has a real boolean type; True must not pass for token 1
    error = only_protocol_error(encode(msg))
    assert "wrong type" in str(error)


def test_int_where_bool_is_expected_is_rejected():
    only_protocol_error(frame(VERSION, "reply", {"req_id": 1, "ok": 1}))


def test_invalid_utf8_in_a_string_is_rejected():
    good = encode(m.Error(code="abc", message="hello"))
    assert b"hello" in good
    only_protocol_error(good.replace(b"hello", b"hel\xffo"))
    only_protocol_error(encode(m.Error(code="abc", message="x"))
                        .replace(b"\xa3abc", b"\xa3\xc3\x28c"))
    only_protocol_error(encode(m.Heartbeat()).replace(b"heartbeat", b"heartbea\xff"))


def test_frames_over_max_frame_are_rejected_before_parsing():
    big = encode(m.Output(token=1, stream=1, offset=0, data=b"x" * MAX_FRAME))
    assert len(big) > MAX_FRAME
    error = only_protocol_error(big)
    assert "limit" in str(error)


def test_a_frame_just_under_max_frame_is_accepted():
    data = b"x" * (MAX_FRAME - 64)
    assert decode(encode(m.Output(token=1, stream=1, offset=0, data=data))).data == data


# --- versions ------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [0, 1, VERSION + 1, -1, 2**40, "1", 1.5, None, True])
def test_another_protocol_version_raises_version_mismatch_with_the_peer_version(version):
    with pytest.raises(VersionMismatch) as info:
        decode(frame(version, "heartbeat", {}))
    assert info.value.peer_version == version
    assert type(info.value.peer_version) is type(version)
    assert isinstance(info.value, ProtocolError)  # one except clause catches every bad frame
    assert str(VERSION) in str(info.value)


def test_version_is_checked_before_the_type_and_body():
    # a newer peer may have new message types; it must hear "version", not "unknown type"
    with pytest.raises(VersionMismatch) as info:
        decode(frame(VERSION + 1, "brand-new-type", {"new": "field"}))
    assert info.value.peer_version == VERSION + 1


# --- several messages in one frame ------------------------------------------------

def test_a_batch_frame_carries_its_messages_in_order():
    msgs = [m.Result(token=1, outcome="ok", exit_code=0, detail="", started_at=1.0,
                     finished_at=2.0), m.Started(token=2, pid=3, started_at=2.5), m.Heartbeat()]
    frame_ = codec.encode_batch(msgs)
    assert codec.decode_batch(frame_) == msgs
    # a batch of one is exactly a single-message frame
    assert codec.encode_batch([msgs[1]]) == encode(msgs[1])
    assert decode(codec.encode_batch([msgs[1]])) == msgs[1]


def test_a_frame_of_several_messages_is_refused_where_one_is_expected():
    with pytest.raises(ProtocolError, match="expected one message"):
        decode(codec.encode_batch([m.Heartbeat(), m.Heartbeat()]))


def test_one_malformed_message_refuses_the_whole_frame():
    good = ["heartbeat", {}]
    bad = ["started", {"token": "not a number", "pid": 1, "started_at": 1.0}]
    with pytest.raises(ProtocolError, match="started"):
        codec.decode_batch(msgpack.packb([VERSION, *good, *bad, *good], use_bin_type=True))


def test_a_type_without_its_body_is_refused():
    with pytest.raises(ProtocolError, match="envelope"):
        codec.decode_batch(msgpack.packb([VERSION, "heartbeat", {}, "heartbeat"]))


def test_too_many_messages_in_one_frame_are_refused():
    envelope = [VERSION] + ["heartbeat", {}] * (codec.MAX_BATCH + 1)
    with pytest.raises(ProtocolError, match="more than"):
        codec.decode_batch(msgpack.packb(envelope))
    assert len(codec.decode_batch(msgpack.packb([VERSION] + ["heartbeat", {}] * codec.MAX_BATCH))) \
        == codec.MAX_BATCH


def test_a_sender_cuts_its_messages_into_frames_that_each_fit():
    outputs = [m.Output(token=1, stream=1, offset=n << 20, data=b"x" * (1 << 20))
               for n in range(80)]  # 80 MiB of output waiting for one broker
    dispatches = [m.Dispatch(token=n, job_id=f"j{n}", attempt=1, command="é" * 65535,
                             timeout_sec=60.0) for n in range(600)]
    for msgs in (outputs, dispatches, [m.Heartbeat()] * 2500):
        groups = codec.batches(msgs)
        assert [msg for group in groups for msg in group] == msgs  # all, in order
        for group in groups:
            assert len(group) <= codec.SEND_BATCH
            assert len(codec.encode_batch(group)) <= codec.MAX_FRAME
            assert codec.decode_batch(codec.encode_batch(group)) == group
    assert len(codec.batches([m.Heartbeat(), m.Heartbeat()])) == 1
    assert codec.batches([]) == []
