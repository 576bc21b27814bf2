"""The broker's metrics: counted only after a commit, histogram buckets, and the
per-minute series behind the stats page's chart."""

from __future__ import annotations

import dataclasses

import pytest

from queuectl.broker.metrics import BOUNDS, MINUTES, Metrics
from queuectl.broker.store import Job, NewJob, Store
from queuectl.proto.states import JobState

NOW = 1_700_000_000.0  # a minute boundary is not assumed anywhere below


@pytest.fixture
def job(tmp_path) -> Job:
    """A real job row read back from a real store, to derive states from."""
    store = Store(str(tmp_path / "queue.db"))
    store.insert_jobs([NewJob(id="j", command="true", queue="default", priority=100, run_at=NOW,
                              timeout_sec=60.0, max_retries=3, env=None, cwd=None,
                              requires=None)], NOW)
    row = store.job("j")
    store.close()
    assert row is not None
    return row


def ended(job: Job, state: JobState, seconds: float = 1.5, at: float = NOW) -> Job:
    return dataclasses.replace(job, state=state, started_at=at - seconds, finished_at=at,
                               updated_at=at)


def test_nothing_counts_until_the_commit(job):
    metrics = Metrics(NOW)
    metrics.enqueued(3)
    metrics.job_changed(ended(job, JobState.COMPLETED))
    assert metrics.snapshot(NOW)["counters"]["completed"] == 0
    metrics.commit()
    counters = metrics.snapshot(NOW)["counters"]
    assert (counters["enqueued"], counters["completed"]) == (3, 1)


def test_a_discarded_batch_counts_nothing(job):
    metrics = Metrics(NOW)
    metrics.enqueued(5)
    metrics.job_changed(ended(job, JobState.DEAD))
    metrics.discard()
    metrics.commit()
    snap = metrics.snapshot(NOW)
    assert set(snap["counters"].values()) == {0}
    assert snap["duration"]["count"] == 0 and sum(snap["per_minute"]["failed"]) == 0


def test_a_rolled_back_savepoint_drops_only_its_own_events(job):
    metrics = Metrics(NOW)
    metrics.enqueued(1)
    with pytest.raises(RuntimeError), metrics.transaction():
        metrics.enqueued(10)
        raise RuntimeError("the request failed")
    with metrics.transaction():
        metrics.job_changed(ended(job, JobState.COMPLETED))
    metrics.commit()
    counters = metrics.snapshot(NOW)["counters"]
    assert (counters["enqueued"], counters["completed"]) == (1, 1)


def test_a_dead_job_counts_as_a_failed_attempt_and_a_death(job):
    metrics = Metrics(NOW)
    for state in (JobState.FAILED, JobState.FAILED, JobState.DEAD, JobState.CANCELED,
                  JobState.PENDING, JobState.PROCESSING):
        metrics.job_changed(ended(job, state))
    metrics.commit()
    snap = metrics.snapshot(NOW)
    assert snap["counters"] == {"enqueued": 0, "completed": 0, "failed": 3, "dead": 1,
                                "canceled": 1}
    assert snap["duration"]["count"] == 3  # failed attempts have durations; a cancel has none
    assert snap["per_minute"]["failed"][-1] == 3


@pytest.mark.parametrize("seconds, bucket", [
    (0.0, 0), (BOUNDS[0], 0), (BOUNDS[0] * 1.01, 1), (1.0, BOUNDS.index(1.0)),
    (BOUNDS[-1], len(BOUNDS) - 1), (BOUNDS[-1] + 1, len(BOUNDS)), (86_400.0, len(BOUNDS)),
])
def test_a_duration_lands_in_the_first_bucket_whose_bound_it_does_not_exceed(job, seconds, bucket):
    metrics = Metrics(NOW)
    metrics.job_changed(ended(job, JobState.COMPLETED, seconds=seconds))
    metrics.commit()
    duration = metrics.snapshot(NOW)["duration"]
    assert len(duration["counts"]) == len(duration["bounds"]) + 1
    assert duration["counts"][bucket] == 1 and sum(duration["counts"]) == 1
    assert duration["sum"] == pytest.approx(seconds, abs=1e-6)


def test_the_series_covers_the_last_hour_oldest_first_ending_in_the_current_minute(job):
    metrics = Metrics(NOW)
    for minutes_ago in (0, 0, 5, MINUTES - 1, MINUTES, MINUTES + 30):
        metrics.job_changed(ended(job, JobState.COMPLETED, at=NOW - 60 * minutes_ago))
    metrics.job_changed(ended(job, JobState.FAILED, at=NOW - 60 * 5))
    metrics.commit()
    series = metrics.snapshot(NOW)["per_minute"]
    assert len(series["completed"]) == len(series["failed"]) == MINUTES
    assert series["completed"][-1] == 2 and series["completed"][-6] == 1
    assert series["failed"][-6] == 1
    assert series["completed"][0] == 1  # 59 minutes ago is still in the hour
    assert sum(series["completed"]) == 4  # an hour ago and older are not
    # A minute later the window has moved on by one.
    assert metrics.snapshot(NOW + 60)["per_minute"]["completed"][-2] == 2


def test_the_chart_minute_is_the_brokers_clock_not_the_agents(job):
    metrics = Metrics(NOW)
    skewed = dataclasses.replace(ended(job, JobState.COMPLETED), finished_at=NOW + 7200,
                                 started_at=NOW + 7199)
    metrics.job_changed(skewed)
    metrics.commit()
    snap = metrics.snapshot(NOW)
    assert snap["per_minute"]["completed"][-1] == 1
    assert snap["duration"]["sum"] == pytest.approx(1.0)


def test_seeding_keeps_the_last_hour_and_ignores_times_in_the_future():
    metrics = Metrics(NOW)
    metrics.seed([(NOW - 10, True), (NOW - 10, False), (NOW - 1800, True),
                  (NOW - 4000, True), (NOW + 600, True)], NOW)
    series = metrics.snapshot(NOW)["per_minute"]
    assert (sum(series["completed"]), sum(series["failed"])) == (2, 1)
    assert series["completed"][-1] + series["completed"][-2] >= 1
    assert set(metrics.snapshot(NOW)["counters"].values()) == {0}  # seeding is history only
