"""The stats page's pure parts: how values are written, chart geometry, UTF-8 cuts,
and that the CLI does not load Flask until the page is asked for."""

from __future__ import annotations

import subprocess
import sys

import pytest

from queuectl.client import InvalidInput
from queuectl.dashboard import charts, fmt
from queuectl.dashboard.logs import complete_length
from queuectl.dashboard.server import check_bind, is_loopback
from queuectl.proto.timefmt import to_iso


@pytest.mark.parametrize("seconds, text", [
    (None, "\u2014"), (0, "0 ms"), (0.0342, "34 ms"), (1.24, "1.2 s"), (9.96, "10.0 s"),
    (12.4, "12 s"), (60, "1 m"), (184, "3 m 4 s"), (3600, "1 h"), (7500, "2 h 5 m"),
    (90000, "1 d 1 h"),
])
def test_durations_read_like_a_person_would_say_them(seconds, text):
    assert fmt.duration(seconds) == text


def test_numbers_get_thousands_separators_and_ages_are_relative():
    assert fmt.number(1234567) == "1,234,567"
    assert fmt.number(0) == "0" and fmt.number(None) == "\u2014"
    now = 1_800_000_000.0
    assert fmt.ago(to_iso(now - 12.4), now) == "12 s ago"
    assert fmt.ago(to_iso(now - 185), now) == "3 m ago"
    assert fmt.ago(to_iso(now - 7300), now) == "2 h ago"
    assert fmt.ago(to_iso(now - 3 * 86400), now) == "3 d ago"
    assert fmt.ago(to_iso(now + 300), now) == "in 5 m"
    assert fmt.ago(to_iso(now), now) == "just now"
    assert fmt.ago(None, now) == "\u2014"


def test_hidden_and_direction_changing_characters_are_made_visible():
    assert fmt.visible("a\u202eb\x00c\x1b\u2066") == "a\\u202eb\\u0000c\\u001b\\u2066"
    assert fmt.visible("tab\there\nnext", oneline=True) == "tab here \u23ce next"
    assert fmt.clip("x" * 100, 10) == "x" * 9 + "\u2026"
    assert fmt.clip("short", 10) == "short"
    # output keeps its lines, drops colour codes, shows other controls
    assert fmt.output("\x1b[31mred\x1b[0m\r\nbell\x07") == "red\nbell\\u0007"


def test_nice_axis_tops():
    assert charts.nice_ceiling(0) == (4.0, 1.0)
    assert charts.nice_ceiling(3) == (3.0, 1.0)
    assert charts.nice_ceiling(7) == (8.0, 2.0)
    assert charts.nice_ceiling(47) == (60.0, 20.0)
    for value in (1, 9, 11, 999, 1_000_001, 123_456_789):
        top, step = charts.nice_ceiling(value)
        assert top >= value and top / step <= 4 and top - step < value


def test_throughput_chart_at_zero_and_at_large_numbers():
    empty = charts.throughput({"start": "2030-01-01T00:00:00Z", "completed": [0] * 60,
                               "failed": [0] * 60})
    assert empty.available and len(empty.bars) == 60
    assert all(b.completed_h == 0 and b.failed_h == 0 for b in empty.bars)
    assert [label for _, label in empty.y_ticks] == ["0", "1", "2", "3", "4"]
    assert empty.bars[0].title == "00:00 UTC: 0 completed, 0 failed"
    assert [label for _, label, _ in empty.x_ticks] == ["60 m ago", "45 m", "30 m", "15 m",
                                                        "now"]
    big = charts.throughput({"start": None, "completed": [2_000_000] + [10] * 59,
                             "failed": [500_000] + [0] * 59})
    first = big.bars[0]
    assert first.failed_y >= big.top - 0.01  # the tallest bar fits in the plot
    assert abs(first.failed_y + first.failed_h - first.completed_y) < 0.01  # stacked
    assert abs(first.completed_y + first.completed_h - big.bottom) < 0.01
    # axis labels stay short enough for the margin: 3M, not 3,000,000
    assert big.y_ticks[-1][1] == "3M" and all(len(label) <= 4 for _, label in big.y_ticks)
    assert [charts.compact(n) for n in (0, 950, 1500, 20_000, 2_500_000)] == [
        "0", "950", "1.5k", "20k", "2.5M"]
    assert (big.completed, big.failed) == (2_000_590, 500_000)
    assert "2,000,000 completed, 500,000 failed" in first.title
    assert not charts.throughput(None).available


def test_state_distribution_keeps_small_states_visible():
    empty = charts.distribution({})
    assert empty.total == 0 and empty.segments == [] and len(empty.legend) == 6
    counts = {"completed": 1_000_000, "dead": 1, "pending": 0}
    chart = charts.distribution(counts)
    widths = {s.state: s.width for s in chart.segments}
    assert set(widths) == {"completed", "dead"}
    assert widths["dead"] >= charts.MIN_SEGMENT
    assert abs(sum(widths.values()) - chart.width) < 0.05
    assert [s.percent for s in chart.legend if s.state == "completed"] == ["100.0%"]


@pytest.mark.parametrize("text", ["é", "€", "😀", "aé😀€b"])
def test_a_character_cut_between_two_reads_is_held_back(text):
    data = text.encode()
    for cut in range(len(data) + 1):
        head = data[:cut]
        keep = complete_length(head)
        head[:keep].decode("utf-8")  # never a partial character
        assert data.startswith(head[:keep]) and cut - keep < 4
    assert complete_length(b"\xff\xfe") == 2  # not UTF-8 at all: nothing to wait for


def test_loopback_addresses():
    for host in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com", ""):
        assert not is_loopback(host), host


def test_a_public_address_takes_a_token_of_16_characters_or_more_without_spaces():
    for token in ("x" * 16, "Zx0_-.~+/=" * 2, "\u00e9" * 16):
        check_bind("0.0.0.0", 8080, token)  # accepted: nothing is bound by the check
    for token in ("x" * 15, " " * 16, "x" * 15 + " ", "x" * 8 + "\u00a0" + "x" * 8):
        with pytest.raises(InvalidInput, match="at least 16"):
            check_bind("0.0.0.0", 8080, token)
    check_bind("127.0.0.1", 8080, "a")  # loopback needs no token; one given is not judged
    with pytest.raises(InvalidInput, match="host"):
        check_bind("\x1b]0;x\x07", 8080, "x" * 16)


def test_the_cli_does_not_import_flask_until_the_page_runs():
    code = ("import sys; from queuectl.cli import main; "
            "main.main(['--help']); "
            "print(sorted(m for m in ('flask', 'waitress', 'prometheus_client', 'flask_wtf')"
            " if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert "dashboard" in result.stdout
