"""The store's row declarations (broker/rows.py): each one is its table's column
list, its converters and its enqueue defaults, so a column the schema lacks, or
a value that does not survive the round trip, shows here."""

from __future__ import annotations

import dataclasses

import apsw
import pytest

from queuectl.broker.jobs import JobService
from queuectl.broker.lifecycle import RUNNABLE
from queuectl.broker.rows import (
    ATTEMPTS,
    BATCHES,
    DEFAULT_PRIORITY,
    DEFAULT_QUEUE,
    JOBS,
    Job,
    NewJob,
    literal,
    one_of,
)
from queuectl.proto.states import JobState, Outcome

NOW = 1_700_000_000.0
CONFIG = {"timeout_sec": 30.0, "max_retries": 4, "base_backoff": 2.0, "max_backoff": 60.0}


@pytest.mark.parametrize("table", [JOBS, ATTEMPTS, BATCHES], ids=lambda t: t.name)
def test_every_declared_column_is_in_the_migrated_schema(store, table):
    schema = {row[1] for row in store.conn.execute(f"PRAGMA table_info({table.name})")}
    assert set(table.columns) <= schema


def test_a_new_job_is_the_spec_given_fields_in_column_order():
    given = [name for name, _ in JOBS.given]
    assert list(NewJob._fields) == given
    assert given == [f.name for f in dataclasses.fields(Job) if f.name in given]
    assert {"state", "seq", "attempts", "token"}.isdisjoint(given)
    # the optional fields at the end may be left out (None), so a new one breaks no caller
    assert NewJob(id="x", command="true", queue="q", priority=1, run_at=NOW, timeout_sec=1.0,
                  max_retries=1) == NewJob("x", "true", "q", 1, NOW, 1.0, 1, None, None, None)


def test_an_enqueued_job_reads_back_field_by_field_with_its_defaults(store):
    service = JobService(store, dict(CONFIG), lambda job: None)
    [new] = service.enqueue([{"id": "a", "command": "make", "env": {"K": "v"},
                              "requires": {"gpu": "1", "arch": "x86"}}], NOW)
    job = store.job("a")
    assert (job.queue, job.priority, job.timeout_sec, job.max_retries) == (
        DEFAULT_QUEUE, DEFAULT_PRIORITY, 30.0, 4)
    assert (job.env, job.requires, job.run_at, job.state) == (
        {"K": "v"}, {"arch": "x86", "gpu": "1"}, NOW, JobState.PENDING)
    assert job.cancel_requested is False and job.created_at == job.updated_at == NOW
    stored = store.conn.execute("SELECT requires FROM jobs WHERE id = 'a'").fetchall()[0][0]
    assert stored == '{"arch": "x86", "gpu": "1"}'  # sorted: qc_labels_match compares JSON
    assert {name: getattr(job, name) for name in new._fields} == new._asdict()


def test_an_empty_requires_is_stored_as_anywhere_and_an_empty_env_as_itself(store):
    service = JobService(store, dict(CONFIG), lambda job: None)
    service.enqueue([{"id": "e", "command": "true", "env": {}, "requires": {}}], NOW)
    job = store.job("e")
    assert (job.env, job.requires) == ({}, None)


def test_a_transition_sets_only_declared_settable_columns(store):
    service = JobService(store, dict(CONFIG), lambda job: None)
    service.enqueue([{"id": "t", "command": "true"}], NOW)
    job = store.job("t")
    for name in ("command", "state", "seq", "queue", "nonsense"):
        with pytest.raises(ValueError, match="cannot set"):
            store.transition(job, JobState.CANCELED, NOW, **{name: "x"})
    assert store.job("t") == job
    job = store.set_fields(store.claim(NOW, "a", b"o", None)[0], NOW + 1, cancel_requested=True)
    assert job.cancel_requested is True and job.updated_at == NOW + 1


def test_sql_literals_come_from_the_enums_and_are_quoted():
    assert literal(JobState.PENDING) == "'pending'"
    assert one_of([JobState.PENDING, JobState.FAILED]) == "('pending', 'failed')"
    assert literal(Outcome.CANCELED) == "'canceled'"


def test_the_timer_index_covers_the_runnable_states_the_store_names(store):
    """jobs_timer was created by migration 1 with its states spelled out; the timer's
    queries name them from lifecycle.RUNNABLE and must match it to use the index."""
    [sql] = store.conn.execute("SELECT sql FROM sqlite_master WHERE name = 'jobs_timer'").fetchone()
    assert f"state IN {one_of(RUNNABLE)}" in sql
    # INDEXED BY fails ("no query solution") unless the WHERE implies the index's
    store.conn.execute(f"SELECT min(run_at) FROM jobs INDEXED BY jobs_timer WHERE due = 0"
                       f" AND state IN {one_of(RUNNABLE)}").fetchall()
    with pytest.raises(apsw.SQLError, match="no query solution"):
        store.conn.execute("SELECT min(run_at) FROM jobs INDEXED BY jobs_timer WHERE due = 0"
                           " AND state IN ('pending')").fetchall()
