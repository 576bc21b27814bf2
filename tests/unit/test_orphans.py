"""Leases a restarted broker holds for their agents (broker/orphans.py): only the
connection a lease was given to may adopt it, and no one else may take its id."""

from __future__ import annotations

from queuectl.broker.orphans import Orphans

REAL, OTHER = b"real-owner-digest", b"someone-else"


def orphans() -> Orphans:
    held = Orphans()
    held.add(7, "host-1-ab", REAL, deadline=10.0)
    held.add(8, "host-1-ab", REAL, deadline=10.0)
    held.add(9, "host-2-cd", None, deadline=10.0)  # leased before schema v7
    return held


def test_only_the_owner_adopts_and_each_lease_once():
    held = orphans()
    assert not held.adopt(7, OTHER)
    assert held.adopt(7, REAL)
    assert not held.adopt(7, REAL)
    assert held.of(REAL) == [8]
    assert not held.adopt(9, REAL) and not held.adopt(9, OTHER)  # no owner: no one


def test_an_agents_id_is_kept_for_it_while_its_leases_wait():
    held = orphans()
    assert held.held_for_another("host-1-ab", OTHER)
    assert not held.held_for_another("host-1-ab", REAL)
    assert not held.held_for_another("host-2-cd", OTHER)  # told to cancel, never locked out
    assert not held.held_for_another("host-3-ef", OTHER)


def test_leases_expire_at_their_deadline_and_a_stalled_loop_extends_it():
    held = orphans()
    held.extend(5.0)
    assert list(held.expired(14.9)) == []
    assert sorted(held.expired(15.0)) == [7, 8, 9]
    assert len(held) == 0
