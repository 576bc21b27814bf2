"""The store's row types, each declared once, and what the store's SQL derives from them.

A row type is a frozen dataclass whose fields are the columns the store reads
for it, in SELECT order. ``column(...)`` declares beside a field what the store
does with it: how a stored value is loaded (``load``: JSON, bool, an enum) and
stored (``dump``), whether a state change may set it (``settable``), and
whether an enqueued job's spec gives it (``given``, with the default for a spec
that leaves it out). ``Table`` derives from that one declaration the SELECT
list, the loader (a precomputed tuple of converters: the claim and finish paths
build a Job per call, so nothing is looked up by name per row), the insert's
columns with their named parameters, and the assignments of an UPDATE.

A new job field is a field here, a migration, the job spec and the view
(docs/DECISIONS.md, "Adding a job field"). SQL text names states and outcomes
through ``literal`` and ``one_of``, never by retyping their values.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar, dataclass_transform

from queuectl.proto.states import JobState, Outcome

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

DEFAULT_PRIORITY = 100
DEFAULT_QUEUE = "default"


class _FromConfig:
    def __repr__(self) -> str:
        return "FROM_CONFIG"


# A given field whose default is the broker's config value of the same name,
# read when a job is enqueued (docs/DECISIONS.md, section 5).
FROM_CONFIG: Any = _FromConfig()
_NOT_GIVEN = object()


def column(*, load: Callable[[Any], Any] | None = None, dump: Callable[[Any], Any] | None = None,
           settable: bool = False, given: Any = _NOT_GIVEN) -> Any:
    """A field's column: ``load`` and ``dump`` convert values that are not NULL."""
    metadata: dict[str, Any] = {"settable": settable}
    if load is not None:
        metadata["load"] = load
    if dump is not None:
        metadata["dump"] = dump
    if given is not _NOT_GIVEN:
        metadata["given"] = given
    return dataclasses.field(metadata=metadata)


def literal(member: Enum) -> str:
    """An enum's value as an SQL string literal, for text the planner must see
    (a partial index's WHERE), or that is the same on every call."""
    value = str(member.value)
    return "'" + value.replace("'", "''") + "'"


def one_of(members: Iterable[Enum]) -> str:
    """``('a', 'b')``: an SQL list of enum values, in the order given."""
    return "(" + ", ".join(literal(member) for member in members) + ")"


_Class = TypeVar("_Class")
_Row = TypeVar("_Row", bound="DataclassInstance")

# A row as APSW returns it: the selected columns' values, in SELECT order.
Row = tuple[Any, ...]


@dataclass_transform(frozen_default=True, field_specifiers=(column,))
def row_type(cls: type[_Class]) -> type[_Class]:
    """A row type: a frozen, slotted dataclass. Declared as a dataclass transform
    so that type checkers take ``column(...)`` for a field specifier (a field
    with no default), as the dataclass machinery does at run time."""
    return dataclass(frozen=True, slots=True)(cls)


def _labels_json(labels: dict[str, str]) -> str | None:
    """Required labels are stored with sorted keys (qc_labels_match); {} is NULL: anywhere."""
    return json.dumps(labels, sort_keys=True) if labels else None


class Table(Generic[_Row]):
    """What the store's SQL for one table derives from its row type's declaration."""

    def __init__(self, name: str, row_type: type[_Row]):
        fields = dataclasses.fields(row_type)
        self.name = name
        self.columns = tuple(f.name for f in fields)
        self.select = ", ".join(self.columns)
        loads = tuple((i, f.metadata["load"]) for i, f in enumerate(fields) if "load" in f.metadata)
        self.load: Callable[[Row], _Row] = _loader(row_type, loads)
        self.dumps = {f.name: f.metadata["dump"] for f in fields if "dump" in f.metadata}
        self.settable = frozenset(f.name for f in fields if f.metadata.get("settable"))
        # (name, default) of the fields an enqueued job's spec gives, in column order
        given = [f for f in fields if "given" in f.metadata]
        self.given = tuple((f.name, f.metadata["given"]) for f in given)
        self.optional_given = 0  # how many of the last given fields may be NULL
        for f in reversed(given):
            if not str(f.type).endswith("| None"):
                break
            self.optional_given += 1
        self._given_dumps = tuple((i, self.dumps[name]) for i, (name, _) in enumerate(self.given)
                                  if name in self.dumps)

    def insert_sql(self, extra: tuple[str, ...]) -> str:
        """INSERT of the given columns, then ``extra``, each bound by its own name.
        A row may be a tuple in that order (``dump_given(new) + extra values``):
        APSW binds a sequence to the parameters in the order they first appear,
        which is this order; a dict per row would cost a batch 2 us a job."""
        names = [name for name, _ in self.given] + list(extra)
        return (f"INSERT INTO {self.name} ({', '.join(names)})"
                f" VALUES ({', '.join(':' + name for name in names)})")

    def dump_given(self, new: tuple[Any, ...]) -> list[Any]:
        """The stored values of a new row's given fields, in ``insert_sql`` order."""
        values = list(new)
        for index, dump in self._given_dumps:
            value = values[index]
            if value is not None:
                values[index] = dump(value)
        return values

    def assignments(self, names: Iterable[str]) -> str:
        """``a = :a, b = :b`` for an UPDATE's SET."""
        return ", ".join(f"{name} = :{name}" for name in names)


def _loader(row_type: type[_Row], loads: tuple[tuple[int, Callable[[Any], Any]], ...]
            ) -> Callable[[Row], _Row]:
    if not loads:
        return lambda row: row_type(*row)

    def load(row: Row) -> _Row:
        values = list(row)
        for index, convert in loads:
            value = values[index]
            if value is not None:
                values[index] = convert(value)
        return row_type(*values)
    return load


@row_type
class Job:
    seq: int
    id: str = column(given=None)  # None: the job service makes one
    command: str = column(given=None)
    state: JobState = column(load=JobState)
    queue: str = column(given=DEFAULT_QUEUE)
    priority: int = column(given=DEFAULT_PRIORITY)
    run_at: float = column(given=None, settable=True)  # the job service resolves run_at or delay
    timeout_sec: float = column(given=FROM_CONFIG)
    max_retries: int = column(given=FROM_CONFIG)
    attempts: int = column(settable=True)
    env: dict[str, str] | None = column(given=None, load=json.loads, dump=json.dumps)
    cwd: str | None = column(given=None)
    requires: dict[str, str] | None = column(given=None, load=json.loads, dump=_labels_json)
    created_at: float
    updated_at: float
    started_at: float | None = column(settable=True)
    finished_at: float | None = column(settable=True)
    exit_code: int | None = column(settable=True)
    last_error: str | None = column(settable=True)
    token: int | None = column(settable=True)  # its current attempt's token while processing
    agent: str | None = column(settable=True)
    cancel_requested: bool = column(load=bool, settable=True)  # a bool binds as 0 or 1


@row_type
class Attempt:
    id: int  # the attempt's token (a fencing token: never issued twice)
    job_seq: int
    number: int
    agent: str
    dispatched_at: float
    started_at: float | None
    finished_at: float | None
    pid: int | None
    exit_code: int | None
    outcome: Outcome | None = column(load=Outcome)  # None while it runs
    reason: str | None  # what users read (lifecycle.reason_text): None when ok
    late_result: str | None
    stale: bool = column(load=bool)


class BatchState(str, Enum):
    """A streamed batch (broker/batches.py): ``open`` takes chunks; ``committed``
    rows are being made visible, then it is ``done``; ``aborted`` rows are
    being deleted (or are gone)."""

    OPEN = "open"
    COMMITTED = "committed"
    DONE = "done"
    ABORTED = "aborted"


@row_type
class Batch:
    id: int
    state: BatchState = column(load=BatchState)
    rows: int
    first_seq: int
    last_seq: int
    next_seq: int | None
    reason: str | None
    key: bytes | None  # digest of the secret its client must show

    @property
    def unfinished(self) -> bool:
        """Rows are still to be made visible (committed) or deleted (aborted)."""
        return self.next_seq is not None and self.next_seq <= self.last_seq


@dataclass(frozen=True, slots=True)
class Chunk:
    stream: int
    offset: int
    data: bytes


JOBS = Table("jobs", Job)
ATTEMPTS = Table("attempts", Attempt)
BATCHES = Table("batches", Batch)

# A job to insert: the fields its spec gives (Job's ``given`` fields, in column
# order, each with its type there), with every default resolved; the optional
# ones at the end default to None. A tuple, not a frozen dataclass: a batch
# builds 100,000 of them, and a frozen dataclass's __init__ costs a setattr call
# per field. Spelled out so that type checkers see its fields; _check_new_job
# holds it to Job's declaration when this module is imported.
class NewJob(NamedTuple):
    id: str
    command: str
    queue: str
    priority: int
    run_at: float
    timeout_sec: float
    max_retries: int
    env: dict[str, str] | None = None
    cwd: str | None = None
    requires: dict[str, str] | None = None


def _check_new_job() -> None:
    job_types = {f.name: f.type for f in dataclasses.fields(Job)}
    # the annotations as written (this module's are strings; NamedTuple wraps them in ForwardRef)
    declared = [(name, getattr(NewJob.__annotations__[name], "__forward_arg__", None))
                for name in NewJob._fields]
    given = [(name, job_types[name]) for name, _ in JOBS.given]
    if declared != given:
        raise TypeError(f"NewJob's fields {declared} are not Job's given fields {given}")
    defaults = NewJob._field_defaults
    optional = [name for name, _ in JOBS.given[len(JOBS.given) - JOBS.optional_given:]]
    if list(defaults) != optional or any(value is not None for value in defaults.values()):
        raise TypeError(f"NewJob's defaults {defaults} are not None for each of {optional}")


_check_new_job()
