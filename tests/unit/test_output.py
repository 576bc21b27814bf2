"""The agent's bounded output buffer: newest bytes kept, stream offsets exact."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from queuectl.agent.output import StreamBuffer


def send_all(buf: StreamBuffer, chunk: int = 1000) -> tuple[int, bytes]:
    """What the agent does: peek a chunk, send it, consume it. Returns (first offset, bytes)."""
    first, sent = buf.offset, b""
    while len(buf):
        offset, data = buf.peek(chunk)
        assert offset == first + len(sent)
        sent += data
        buf.consume(len(data))
    return first, sent


def test_empty_buffer_holds_nothing_at_offset_zero():
    buf = StreamBuffer(16)
    assert len(buf) == 0
    assert buf.peek(100) == (0, b"")
    assert buf.offset == 0


def test_peek_does_not_remove_and_consume_moves_the_offset():
    buf = StreamBuffer(100)
    buf.append(b"hello ")
    buf.append(b"world")
    assert buf.peek(4) == (0, b"hell")
    assert buf.peek(4) == (0, b"hell")  # unsent output survives a failed send
    buf.consume(4)
    assert buf.peek(100) == (4, b"o world")
    buf.consume(7)
    assert len(buf) == 0
    buf.append(b"!")
    assert buf.peek(10) == (11, b"!")


def test_peek_from_a_start_position_reports_the_stream_offset():
    buf = StreamBuffer(100)
    buf.append(b"0123456789")
    buf.consume(3)
    assert buf.peek(4, start=2) == (5, b"5678")
    assert buf.peek(100, start=6) == (9, b"9")
    assert buf.peek(100, start=7) == (10, b"")
    assert len(buf) == 7  # peeking never consumes


def test_over_the_limit_keeps_the_newest_bytes_and_moves_the_offset():
    buf = StreamBuffer(5)
    buf.append(b"abc")
    buf.append(b"defg")
    assert len(buf) == 5
    assert send_all(buf) == (2, b"cdefg")  # "ab" dropped: the broker sees a gap of 2


def test_a_single_chunk_bigger_than_the_limit_keeps_its_tail():
    buf = StreamBuffer(4)
    buf.append(b"0123456789")
    assert send_all(buf) == (6, b"6789")


def test_dropping_after_a_partial_send_keeps_offsets_consistent():
    buf = StreamBuffer(4)
    buf.append(b"abcd")
    assert buf.peek(2) == (0, b"ab")
    buf.consume(2)
    buf.append(b"efgh")  # holds "cdefgh" -> keeps "efgh"
    assert send_all(buf) == (4, b"efgh")


@settings(max_examples=200)
@given(limit=st.integers(1, 64),
       ops=st.lists(st.one_of(
           st.tuples(st.just("append"), st.binary(max_size=100)),
           st.tuples(st.just("send"), st.integers(0, 100)),
           st.tuples(st.just("peek"), st.integers(0, 100))), max_size=30))
def test_buffer_is_always_the_newest_unsent_part_of_the_stream(limit, ops):
    """Model: the whole stream written so far; the buffer is a window of it."""
    buf = StreamBuffer(limit)
    stream = b""
    sent_to = 0  # the broker has every byte before this position (or saw a gap)
    for op, arg in ops:
        if op == "append":
            buf.append(arg)
            stream += arg
        elif op == "peek":
            offset, data = buf.peek(arg, start=min(arg, 3))
            assert data == stream[offset:offset + len(data)]
        else:
            offset, data = buf.peek(arg)
            assert offset >= sent_to
            assert data == stream[offset:offset + len(data)]
            assert len(data) == min(arg, len(buf))
            buf.consume(len(data))
            sent_to = offset + len(data)
        assert len(buf) <= limit
        assert buf.offset + len(buf) == len(stream)
        assert bytes(buf.data) == stream[buf.offset:]
        # unsent bytes are dropped only beyond the limit
        assert len(buf) == min(limit, len(stream) - sent_to)
