"""Envelope encoding: every frame is msgpack ``[VERSION, type, body, ...]``.

A frame carries one message or several: ``[VERSION, type1, body1, type2,
body2, ...]``. Agents and the broker put everything one loop iteration has
for the peer into one frame (a result, the next job's start, an ack and the
next dispatch), so a job costs one frame each way, not four. Admin clients
and their replies use one message per frame.

``decode`` is the only way bytes from a peer become a message, and it raises
exactly one exception type, :class:`ProtocolError`, for anything malformed:
bad msgpack, a wrong shape, an unknown type, a missing or mistyped field, or
another protocol version (:class:`VersionMismatch`, a subclass, so the
receiver can tell the peer which version it speaks).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import msgpack

VERSION = 3
MAX_BATCH = 10_000  # messages in one frame, at most
# The largest frame either side accepts (also set as ZMQ_MAXMSGSIZE on the
# broker's socket, so libzmq drops a bigger message before we ever see it).
MAX_FRAME = 64 * 1024 * 1024


class ProtocolError(Exception):
    """A frame that cannot be decoded into a valid message."""


INT64 = range(-2**63, 2**63)  # what SQLite and every int field can hold


def _brief(value: object) -> str:
    """A short, safe rendering of a value a peer sent (it may be huge or deeply nested)."""
    if isinstance(value, (bool, int, float)) or value is None:
        text = repr(value)
    elif isinstance(value, (str, bytes)):
        text = repr(value[:40])
    else:
        return f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


class VersionMismatch(ProtocolError):
    def __init__(self, peer_version: object):
        super().__init__(
            f"peer speaks protocol version {_brief(peer_version)}, this side speaks {VERSION}"
        )
        scalar = peer_version is None or isinstance(peer_version, (bool, int, float)) or (
            isinstance(peer_version, str) and len(peer_version) <= 40)
        self.peer_version = peer_version if scalar else _brief(peer_version)


_REGISTRY: dict[str, type] = {}
_CHECKS: dict[type, dict[str, tuple[tuple[type, ...], bool]]] = {}


def _accepted_types(annotation: Any) -> tuple[tuple[type, ...], bool]:
    """Turn a field annotation into (isinstance types, may be None)."""
    optional = False
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        optional = type(None) in args
        members = [a for a in args if a is not type(None)]
    else:
        members = [annotation]
    accepted: list[type] = []
    for member in members:
        base = typing.get_origin(member) or member
        if base is typing.Any or base is object:
            return (object,), True
        if base is float:
            accepted.extend([float, int])
        else:
            accepted.append(base)
    return tuple(accepted), optional


_Message = TypeVar("_Message")


# dataclass_transform tells type checkers that a decorated class is a frozen
# dataclass (its fields become the __init__ parameters), as the decorator makes it.
@typing.dataclass_transform(frozen_default=True)
def message(type_name: str) -> Callable[[type[_Message]], type[_Message]]:
    """Class decorator: register a frozen dataclass as wire message ``type_name``."""

    def register(cls: type[_Message]) -> type[_Message]:
        cls = dataclasses.dataclass(frozen=True, slots=True)(cls)
        hints = typing.get_type_hints(cls)
        # dataclass() has just made cls one, which type[_Message] cannot say to mypy
        fields = dataclasses.fields(typing.cast(Any, cls))
        _CHECKS[cls] = {f.name: _accepted_types(hints[f.name]) for f in fields}
        cls.TYPE = type_name  # type: ignore[attr-defined]  # set here, declared by no class
        if type_name in _REGISTRY:
            raise RuntimeError(f"duplicate message type {type_name}")
        _REGISTRY[type_name] = cls
        return cls

    return register


def _pair(msg: Any) -> tuple[str, dict[str, Any]]:
    return msg.TYPE, {name: getattr(msg, name) for name in _CHECKS[type(msg)]}


def encode(msg: Any) -> bytes:
    # msgpack has no type hints: packb returns Any, so the result is annotated here
    frame: bytes = msgpack.packb([VERSION, *_pair(msg)], use_bin_type=True)
    return frame


def encode_batch(msgs: list[Any]) -> bytes:
    """One frame holding ``msgs`` in order (at least one). See ``batches``."""
    envelope: list[Any] = [VERSION]
    for msg in msgs:
        envelope.extend(_pair(msg))
    frame: bytes = msgpack.packb(envelope, use_bin_type=True)
    return frame


FRAME_BUDGET = MAX_FRAME // 4  # bytes a sender puts in one frame, by estimate
SEND_BATCH = 1_000             # messages a sender puts in one frame, at most


def _estimate(msg: Any) -> int:
    """A generous estimate of a message's encoded size (its text and bytes, plus
    a little per field), cheap enough for every message."""
    size = 64
    for name in _CHECKS[type(msg)]:
        value = getattr(msg, name)
        if isinstance(value, (str, bytes)):
            size += len(value) * (4 if isinstance(value, str) else 1) + 16
        elif isinstance(value, (list, dict)):
            size += 64 * len(value) + sum(len(k) * 4 + len(v) * 4 for k, v in value.items()
                                          if isinstance(k, str) and isinstance(v, str)) \
                if isinstance(value, dict) else 64 * len(value)
        else:
            size += 16
    return size


def batches(msgs: list[Any]) -> list[list[Any]]:
    """``msgs`` in order, cut into groups that each fit one frame: at most
    ``SEND_BATCH`` messages and about ``FRAME_BUDGET`` bytes (a message bigger
    than that goes alone; ``MAX_FRAME`` is four times the budget)."""
    groups: list[list[Any]] = [[]]
    used = 0
    for msg in msgs:
        size = _estimate(msg)
        if groups[-1] and (used + size > FRAME_BUDGET or len(groups[-1]) >= SEND_BATCH):
            groups.append([])
            used = 0
        groups[-1].append(msg)
        used += size
    return groups if groups[0] else []


def decode(frame: bytes) -> Any:
    """One message from ``frame``; raises ProtocolError (or VersionMismatch) for anything else,
    including a frame of several messages."""
    msgs = decode_batch(frame)
    if len(msgs) != 1:
        raise ProtocolError(f"expected one message, got {len(msgs)}")
    return msgs[0]


def decode_batch(frame: bytes) -> list[Any]:
    """Every message of ``frame``, in order; the whole frame is refused (ProtocolError)
    if any of them is malformed."""
    try:
        return _decode(frame)
    except RecursionError:  # msgpack unpacks 1,000 levels; Python code may not handle them
        raise ProtocolError("message nested too deeply") from None


def _decode(frame: bytes) -> list[Any]:
    if len(frame) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds the {MAX_FRAME} byte limit")
    try:
        envelope = msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several unrelated types on garbage
        raise ProtocolError(f"not a msgpack frame: {exc.__class__.__name__}") from None
    if not isinstance(envelope, list) or len(envelope) < 3 or len(envelope) % 2 == 0:
        if isinstance(envelope, list) and envelope and type(envelope[0]) is int \
                and envelope[0] != VERSION:
            raise VersionMismatch(envelope[0])
        raise ProtocolError("envelope must be [version, type, body, ...]")
    version = envelope[0]
    if type(version) is not int or version != VERSION:
        raise VersionMismatch(version)
    if len(envelope) > 1 + 2 * MAX_BATCH:
        raise ProtocolError(f"more than {MAX_BATCH} messages in one frame")
    return [_message(envelope[i], envelope[i + 1]) for i in range(1, len(envelope), 2)]


def _message(type_name: Any, body: Any) -> Any:
    cls = _REGISTRY.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {_brief(type_name)}")
    if not isinstance(body, dict):
        raise ProtocolError(f"{type_name}: body must be a map")
    checks = _CHECKS[cls]
    for key, value in body.items():
        check = checks.get(key)
        if check is None:
            raise ProtocolError(f"{type_name}: unknown field {str(key)[:40]!r}")
        accepted, optional = check
        if value is None:
            if not optional:
                raise ProtocolError(f"{type_name}: field {key!r} must not be null")
        # A bool is an int to isinstance: it fits only a field that takes bools (or anything).
        elif (isinstance(value, bool) and bool not in accepted and object not in accepted) \
                or not isinstance(value, accepted):
            raise ProtocolError(f"{type_name}: field {key!r} has the wrong type")
        elif type(value) is int and object not in accepted and value not in INT64:
            raise ProtocolError(f"{type_name}: field {key!r} is out of range")
    try:
        return cls(**body)
    except TypeError:
        raise ProtocolError(f"{type_name}: missing required fields") from None
