"""The agent's bounded output buffer: newest bytes kept, stream offsets exact,
sent bytes kept for a broker that comes back without them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from queuectl.agent.output import StreamBuffer


def send_all(buf: StreamBuffer, chunk: int = 1000) -> tuple[int, bytes]:
    """What the agent does: peek a chunk, send it, mark it sent. Returns (first offset, bytes)."""
    first, sent = buf.sent, b""
    while buf.unsent():
        offset, data = buf.peek(chunk)
        assert offset == first + len(sent)
        sent += data
        buf.mark_sent(len(data))
    return first, sent


def test_empty_buffer_holds_nothing_at_offset_zero():
    buf = StreamBuffer(16)
    assert buf.unsent() == 0
    assert buf.peek(100) == (0, b"")
    assert (buf.start, buf.sent, buf.end) == (0, 0, 0)


def test_peek_does_not_send_and_mark_sent_moves_on():
    buf = StreamBuffer(100)
    buf.append(b"hello ")
    buf.append(b"world")
    assert buf.peek(4) == (0, b"hell")
    assert buf.peek(4) == (0, b"hell")  # unsent output survives a failed send
    buf.mark_sent(4)
    assert buf.peek(100) == (4, b"o world")
    buf.mark_sent(7)
    assert buf.unsent() == 0
    buf.append(b"!")
    assert buf.peek(10) == (11, b"!")


def test_rewind_sends_again_what_the_broker_lost():
    buf = StreamBuffer(100)
    buf.append(b"0123456789")
    assert send_all(buf) == (0, b"0123456789")
    buf.rewind(4)  # a restarted broker stored only the first 4 bytes
    assert send_all(buf) == (4, b"456789")
    buf.rewind(50)  # never forward: a broker cannot hold more than was sent
    assert buf.unsent() == 0


def test_rewind_before_the_oldest_byte_held_resends_from_there():
    buf = StreamBuffer(4)
    buf.append(b"abcdef")
    assert send_all(buf) == (2, b"cdef")
    buf.append(b"gh")
    assert send_all(buf) == (6, b"gh")
    buf.rewind(0)
    assert send_all(buf) == (4, b"efgh")  # the broker sees the gap before 4


def test_over_the_limit_keeps_the_newest_bytes_and_moves_the_offset():
    buf = StreamBuffer(5)
    buf.append(b"abc")
    buf.append(b"defg")
    assert buf.unsent() == 5
    assert send_all(buf) == (2, b"cdefg")  # "ab" dropped: the broker sees a gap of 2


def test_a_single_chunk_bigger_than_the_limit_keeps_its_tail():
    buf = StreamBuffer(4)
    buf.append(b"0123456789")
    assert send_all(buf) == (6, b"6789")


def test_dropping_after_a_partial_send_keeps_offsets_consistent():
    buf = StreamBuffer(4)
    buf.append(b"abcd")
    assert buf.peek(2) == (0, b"ab")
    buf.mark_sent(2)
    buf.append(b"efgh")  # holds "cdefgh" -> keeps "efgh"
    assert send_all(buf) == (4, b"efgh")


@settings(max_examples=300)
@given(limit=st.integers(1, 64),
       ops=st.lists(st.one_of(
           st.tuples(st.just("append"), st.binary(max_size=100)),
           st.tuples(st.just("send"), st.integers(0, 100)),
           st.tuples(st.just("peek"), st.integers(0, 100)),
           st.tuples(st.just("rewind"), st.integers(0, 400))), max_size=30))
def test_buffer_is_a_window_of_the_stream_and_sends_every_held_byte_the_broker_lacks(limit, ops):
    """Model: the whole stream written so far, and how far the broker holds it."""
    buf = StreamBuffer(limit)
    stream = b""
    broker_has = 0  # the broker holds every byte before this position (or saw a gap)
    for op, arg in ops:
        if op == "append":
            buf.append(arg)
            stream += arg
        elif op == "peek":
            offset, data = buf.peek(arg)
            assert data == stream[offset:offset + len(data)]
        elif op == "rewind":
            broker_has = min(arg, broker_has)  # a broker that lost some of what it was sent
            buf.rewind(broker_has)
        else:
            offset, data = buf.peek(arg)
            assert offset >= broker_has
            assert data == stream[offset:offset + len(data)]
            assert len(data) == min(arg, buf.unsent())
            buf.mark_sent(len(data))
            broker_has = offset + len(data)
        assert len(buf.data) <= limit
        assert buf.end == len(stream)
        assert bytes(buf.data) == stream[buf.start:]
        # unsent bytes are dropped only beyond the limit
        assert buf.unsent() == min(limit, len(stream) - broker_has)
