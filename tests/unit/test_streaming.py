"""How Client.enqueue_many cuts its input into requests (queuectl/streaming.py)."""

from __future__ import annotations

import itertools

import pytest

from queuectl import streaming
from queuectl.client import Client, Conflict


def cut(jobs, labels=None):
    labels = labels or (f"job {n}" for n in itertools.count(1))
    return [len(specs) for specs, _ in streaming.chunks(jobs, labels, Client._check)]


def test_jobs_are_cut_by_count_and_by_size():
    assert cut([{"command": "true"}] * 12_001) == [5_000, 5_000, 2_001]
    big = {"command": "x" * 100_000}
    sizes = cut([big] * 100)
    assert sum(sizes) == 100 and max(sizes) <= streaming.CHUNK_BYTES // 100_000 + 1


def test_a_small_or_empty_input_is_one_chunk():
    assert cut([{"command": "true"}] * 3) == [3]
    assert cut([]) == [0]


def test_an_id_twice_in_one_chunk_names_both_labels():
    jobs = [{"id": "a", "command": "true"}, {"command": "true"}, {"id": "a", "command": "x"}]
    with pytest.raises(Conflict,
                       match=r"line 3: id 'a' appears twice in the batch \(first at line 1\)"):
        cut(jobs, (f"line {n}" for n in itertools.count(1)))
