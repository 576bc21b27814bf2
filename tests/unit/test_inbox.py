"""The broker's inbox (broker/inbox.py): frames handled fairly across peers, in
order for each peer, and never more than a budget at a time."""

from __future__ import annotations

from queuectl.broker.inbox import QUEUE_BYTES, Inbox


def frame(peer: bytes, n: int, size: int = 10) -> tuple[bytes, bytes, None]:
    return peer, f"{n}:".encode().ljust(size, b"."), None


def names(frames) -> list[str]:
    return [f"{peer.decode()}{data.split(b':')[0].decode()}" for peer, data, _ in frames]


def test_peers_take_turns_and_each_keeps_its_order():
    inbox = Inbox()
    for n in range(4):
        inbox.put(frame(b"a", n))
    inbox.put(frame(b"b", 0))
    inbox.put(frame(b"c", 0))
    assert names(inbox.take()) == ["a0", "b0", "c0", "a1", "a2", "a3"]
    assert not inbox and inbox.bytes == 0


def test_a_heavy_peer_gets_one_frame_per_turn_up_to_the_budget():
    inbox = Inbox()
    for n in range(5):
        inbox.put(frame(b"heavy", n, size=1000))
    inbox.put(frame(b"light", 0))
    assert names(inbox.take(budget=1500)) == ["heavy0", "light0", "heavy1"]
    assert names(inbox.take(budget=1)) == ["heavy2"]  # always at least one frame
    assert names(inbox.take()) == ["heavy3", "heavy4"]


def test_frames_put_back_come_first_and_in_order():
    inbox = Inbox()
    for n in range(3):
        inbox.put(frame(b"a", n))
    inbox.put(frame(b"b", 0))
    taken = inbox.take()
    assert names(taken) == ["a0", "b0", "a1", "a2"]
    inbox.put(frame(b"c", 0))
    inbox.put_back(taken[1:])  # handled a0 only: the rest, in the order taken, before c
    assert names(inbox.take()) == ["b0", "a1", "c0", "a2"]


def test_the_inbox_is_full_past_its_byte_budget():
    inbox = Inbox()
    inbox.put(frame(b"a", 0, size=QUEUE_BYTES - 1))
    assert not inbox.full()
    inbox.put(frame(b"a", 1))
    assert inbox.full()
