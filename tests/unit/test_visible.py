"""Control characters shown as escapes (cli/visible.py): one-line text for tables
and messages, and the filter ``logs`` applies to job output on a terminal."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from queuectl.cli.visible import LogFilter, visible

CONTROLS = [chr(c) for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))]


@pytest.mark.parametrize("char", CONTROLS, ids=lambda c: f"U+{ord(c):04X}")
def test_every_c0_del_and_c1_control_is_escaped(char):
    shown = visible(f"a{char}b")
    assert shown.startswith("a\\") and shown.endswith("b")
    assert not any(c in shown for c in CONTROLS)


def test_escapes_read_like_python_and_printable_text_is_kept():
    assert visible("x\x1b]0;TITLE\x1b\\") == "x\\x1b]0;TITLE\\x1b\\"
    assert visible("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert visible("csi \x9b31m del \x7f") == "csi \\x9b31m del \\x7f"
    assert visible("h\u00e9llo \u2603 \u65e5\u672c") == "h\u00e9llo \u2603 \u65e5\u672c"
    assert visible("bytes \udcff") == "bytes \\udcff"  # argv that was not UTF-8: no crash
    assert visible("") == ""


def run_filter(chunks: list[bytes]) -> bytes:
    screen = LogFilter()
    return b"".join(screen.feed(chunk) for chunk in chunks) + screen.flush()


OUTPUT = ("plain\tcol\r\n\x1b[1;31mred\x1b[0m \x1b[38;5;208mamber\x1b[m\n"
          "title \x1b]0;PWNED\x07 clip \x1b]52;c;SGVsbG8=\x1b\\ clear \x1b[2J"
          " c1 \u009b31m h\u00e9 \u2603 cr\rend").encode() + b" bad \xff\xfe\n"


def test_log_filter_passes_colours_and_line_breaks_and_escapes_the_rest():
    shown = run_filter([OUTPUT]).decode()
    assert shown == ("plain\tcol\r\n\x1b[1;31mred\x1b[0m \x1b[38;5;208mamber\x1b[m\n"
                     "title \\x1b]0;PWNED\\x07 clip \\x1b]52;c;SGVsbG8=\\x1b\\ clear \\x1b[2J"
                     " c1 \\x9b31m h\u00e9 \u2603 cr\\rend bad \\xff\\xfe\n")


def test_log_filter_gives_the_same_text_wherever_the_chunks_are_cut():
    whole = run_filter([OUTPUT])
    for cut in range(len(OUTPUT) + 1):
        assert run_filter([OUTPUT[:cut], OUTPUT[cut:]]) == whole, cut
    assert run_filter([bytes([b]) for b in OUTPUT]) == whole


def in_order(wanted: str, text: str) -> bool:
    """Is every character of ``wanted`` in ``text``, in the same order?"""
    rest = iter(text)
    return all(char in rest for char in wanted)


@given(st.binary(max_size=200), st.integers(0, 200))
def test_log_filter_never_lets_a_control_through_but_sgr_and_line_breaks(data, cut):
    shown = run_filter([data[:cut], data[cut:]]).decode("utf-8")
    rest = re.sub("\x1b\\[[0-9;:]*m|\r\n|[\n\t]", "", shown)
    assert not any(c in rest for c in CONTROLS)
    # and it hides nothing: every printable character of the input is shown, in order
    printable = "".join(c for c in data.decode("utf-8", "replace")
                        if c not in CONTROLS and c != "\ufffd")
    assert in_order(printable, shown), (data, shown)


@given(st.text(st.characters(blacklist_categories=["Cc", "Cs"])), st.integers(0, 200))
def test_log_filter_shows_text_without_controls_as_it_is(text, cut):
    data = text.encode()
    assert run_filter([data[:cut], data[cut:]]) == data


def test_an_unfinished_sequence_at_the_end_is_shown_escaped():
    assert run_filter([b"done\x1b[31"]) == b"done\\x1b[31"
    assert run_filter([b"half \xe2\x98"]) == b"half \\xe2\\x98"
    assert run_filter([b"cr\r"]) == b"cr\\r"


def test_bidi_controls_and_line_separators_are_escaped_too():
    """They reorder or break what a terminal shows ("Trojan Source"); the broker
    refuses them in agent ids and labels, and every output shows them escaped."""
    assert visible("rtl\u202egnp.exe") == "rtl\\u202egnp.exe"
    assert visible("a\u2028b\u2029c\u2066d") == "a\\u2028b\\u2029c\\u2066d"
