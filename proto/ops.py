"""Every admin operation, declared once: its name, its typed arguments, who may
make it, and whether the broker may hold its answer.

The broker checks a request's arguments against this declaration before its
handler runs (``broker/admin.py`` has one handler per operation and refuses
to start if one is missing), authorization reads the roles from it
(``broker/auth.py``), the client checks the names of what it sends against it
(``queuectl/transport.py``), and the wire fuzz test draws its requests from it.

Each operation's arguments are one frozen dataclass: a field's annotation is
its type on the wire, a field without a default is required, ``X | None``
accepts nil. Arguments a request carries that its operation does not declare
are ignored, as msgpack maps from newer clients may carry more.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

from .jobspec import SpecError
from .states import Role

# Characters of a text argument (an id, a key, a name): every real one is far
# shorter, and an error quotes it (a review sent a 60 MiB id and got it back).
MAX_TEXT_ARG = 4096
INT_RANGE = (-2**63, 2**63)  # what SQLite stores; msgpack carries up to 2**64 - 1


# --- the arguments of each operation ---------------------------------------------

@dataclass(frozen=True)
class NoArgs:
    pass


@dataclass(frozen=True)
class Hold:
    """A request the broker may park: ``hold`` is how long (seconds, capped by it)."""

    hold: float = field(default=0.0, kw_only=True)


@dataclass(frozen=True)
class EnqueueArgs:
    job: dict[str, Any] | None = None       # one job; or
    jobs: list[Any] | None = None           # several, all or none


@dataclass(frozen=True)
class BatchAddArgs:
    jobs: list[Any]
    batch: int | None = None  # none: open a new batch with this first chunk
    key: str | None = None    # the batch's secret, from the first chunk's reply


@dataclass(frozen=True)
class BatchCommitArgs(Hold):
    batch: int
    count: int
    key: str | None = None


@dataclass(frozen=True)
class BatchAbortArgs:
    batch: int
    key: str | None = None


@dataclass(frozen=True)
class JobArgs:
    id: str


@dataclass(frozen=True)
class JobHoldArgs(Hold):
    id: str


@dataclass(frozen=True)
class ListArgs:
    state: str | None = None
    queue: str | None = None
    limit: int = 100
    search: str | None = None


@dataclass(frozen=True)
class LogsArgs(Hold):
    id: str
    after: list[Any] = field(default_factory=lambda: [0, 0])  # [stdout offset, stderr offset]
    attempt: int | None = None  # the attempt number ``after`` belongs to
    token: int | None = None    # one earlier attempt, by its token (never parks)


@dataclass(frozen=True)
class LimitArgs:
    limit: int | None = None


@dataclass(frozen=True)
class DlqRetryArgs:
    ids: list[str] | None = None
    all: bool = False


@dataclass(frozen=True)
class KeyArgs:
    key: str


@dataclass(frozen=True)
class ConfigSetArgs:
    key: str
    value: Any = None  # text or a number; the config key's parser judges it


@dataclass(frozen=True)
class AgentIdsArgs(Hold):
    ids: list[str]


@dataclass(frozen=True)
class QueueArgs:
    name: str


@dataclass(frozen=True)
class QueueLimitArgs:
    name: str
    limit: int | None  # none removes the limit; required all the same


# --- the operations -----------------------------------------------------------------

@dataclass(frozen=True)
class Op:
    name: str
    args: type
    role: Role = Role.ADMIN  # the least role a key needs: READER or ADMIN
    parks: bool = False  # the broker may hold the answer (``hold``)

    @property
    def read_only(self) -> bool:
        """Neither writes nor parks: answered again on its own after a batch
        failed, so a full or read-only store still serves it."""
        return self.role is Role.READER and not self.parks


_DECLARED = (
    Op("ping", NoArgs, Role.READER),
    Op("enqueue", EnqueueArgs),
    Op("batch_add", BatchAddArgs),
    Op("batch_commit", BatchCommitArgs, parks=True),
    Op("batch_abort", BatchAbortArgs),
    Op("get", JobArgs, Role.READER),
    Op("list", ListArgs, Role.READER),
    Op("status", NoArgs, Role.READER),
    Op("metrics", NoArgs, Role.READER),
    Op("wait", JobHoldArgs, Role.READER, parks=True),
    Op("cancel", JobHoldArgs, parks=True),
    Op("logs", LogsArgs, Role.READER, parks=True),
    Op("dlq_list", LimitArgs, Role.READER),
    Op("dlq_retry", DlqRetryArgs),
    Op("config_show", NoArgs, Role.READER),
    Op("config_get", KeyArgs, Role.READER),
    Op("config_set", ConfigSetArgs),
    Op("agents", NoArgs, Role.READER),
    Op("stop_agents", NoArgs),
    Op("wait_agents", AgentIdsArgs, parks=True),
    Op("queue_list", NoArgs, Role.READER),
    Op("queue_pause", QueueArgs),
    Op("queue_resume", QueueArgs),
    Op("queue_limit", QueueLimitArgs),
)
OPS: dict[str, Op] = {op.name: op for op in _DECLARED}


# --- checking a request's arguments --------------------------------------------------

_REQUIRED = object()


@dataclass(frozen=True)
class _Field:
    name: str
    kinds: tuple[type, ...]  # accepted Python types (empty: anything)
    nullable: bool
    items: type | None  # the type of every element of a list, if declared
    default: Any  # _REQUIRED, a value, or a factory (callable) for mutable defaults
    factory: bool


def _field_of(spec: dataclasses.Field[Any], hint: Any) -> _Field:
    nullable = False
    kinds: list[type] = []
    items: type | None = None
    options = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) \
        else (hint,)
    for option in options:
        if option is type(None):
            nullable = True
        elif option is Any:
            nullable, kinds = True, []
            break
        elif option is float:
            kinds += [int, float]
        else:
            origin = typing.get_origin(option) or option
            kinds.append(origin)
            if origin is list and typing.get_args(option) not in ((), (Any,)):
                items = typing.get_args(option)[0]
    if spec.default is not dataclasses.MISSING:
        default, factory = spec.default, False
    elif spec.default_factory is not dataclasses.MISSING:
        default, factory = spec.default_factory, True
    else:
        default, factory = _REQUIRED, False
    return _Field(spec.name, tuple(kinds), nullable, items, default, factory)


_FIELDS: dict[type, tuple[_Field, ...]] = {}
for _op in _DECLARED:
    if _op.args not in _FIELDS:
        _hints = typing.get_type_hints(_op.args)
        _FIELDS[_op.args] = tuple(_field_of(f, _hints[f.name])
                                  for f in dataclasses.fields(_op.args))


def parse_args(op: Op, raw: Any) -> Any:
    """The arguments of a request to ``op``, typed; raises SpecError."""
    if not isinstance(raw, dict):
        raise SpecError("args", "must be a map")
    values = {}
    for spec in _FIELDS[op.args]:
        if spec.name in raw:
            values[spec.name] = _check(spec, raw[spec.name])
        elif spec.default is _REQUIRED:
            raise SpecError(spec.name, "is required")
        else:
            values[spec.name] = spec.default() if spec.factory else spec.default
    return op.args(**values)


def _check(spec: _Field, value: Any) -> Any:
    if value is None and spec.nullable:
        return None
    if not spec.kinds:
        return value
    if isinstance(value, bool) and bool not in spec.kinds:
        raise SpecError(spec.name, "has the wrong type")
    if not isinstance(value, spec.kinds):
        raise SpecError(spec.name, "has the wrong type")
    if type(value) is int and not INT_RANGE[0] <= value < INT_RANGE[1]:
        raise SpecError(spec.name, "is out of range")
    if type(value) is str and len(value) > MAX_TEXT_ARG:
        raise SpecError(spec.name, f"must be at most {MAX_TEXT_ARG} characters")
    if spec.items is not None and isinstance(value, list) and \
            not all(isinstance(item, spec.items) for item in value):
        raise SpecError(spec.name, f"must be a list of {_NAMES.get(spec.items, 'values')}")
    return value


_NAMES = {str: "strings", int: "integers"}


def argument_names(op: Op) -> tuple[str, ...]:
    return tuple(spec.name for spec in _FIELDS[op.args])
