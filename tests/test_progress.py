"""The one progress helper: it counts the unit a loop iterates, and without a terminal prints plain lines and
always the final state."""

from __future__ import annotations

import io
import re

import pytest

import winnow.progress as progress
from winnow.progress import Tracker, track, track_rows


def test_rows_are_counted_by_length_and_items_by_one():
    s = io.StringIO()
    chunks = [(1, 2, 3), (4, 5), (6,)]
    assert list(track(chunks, 6, "scoring pass", "rows", count=len, file=s)) == chunks
    assert s.getvalue() == "scoring pass: 6/6 rows in 0:00:00\n"
    s = io.StringIO()
    plan = [("random", [1, 2, 3]), ("most harmful", [4, 5])]  # 2 retrains, not 4 "rows"
    assert list(track(plan, len(plan), "group retrains", "retrains", file=s)) == plan
    assert s.getvalue() == "group retrains: 2/2 retrains in 0:00:00\n"


def test_batches_of_tuples_count_their_rows():
    s = io.StringIO()
    batches = [(None, [0] * 8, None), (None, [0] * 8, None), (None, [0] * 5, None)]  # (x, y, ids)
    list(track(batches, 21, "features", "rows", count=lambda b: len(b[1]), file=s))
    assert s.getvalue() == "features: 21/21 rows in 0:00:00\n"


def test_periodic_lines_then_the_final_state(monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_INTERVAL", 0.0)
    s = io.StringIO()
    for _ in track(range(4), 4, "LDS retrains", "retrains", file=s):
        pass
    lines = s.getvalue().splitlines()
    assert lines[:3] == [f"LDS retrains: {k}/4 retrains ({25 * k}%), 0:00:00" + (", about 0:00:00 left")
                         for k in (1, 2, 3)]
    assert lines[3:] == ["LDS retrains: 4/4 retrains in 0:00:00"]  # never a stale line: the end is said


def test_an_early_end_still_prints_where_it_stopped():
    s = io.StringIO()
    for i in track(range(10), 10, "leave-one-out", "retrains", file=s):
        if i == 2:
            break
    assert s.getvalue() == "leave-one-out: 2/10 retrains in 0:00:00\n"
    s = io.StringIO()
    with pytest.raises(RuntimeError):
        for i in track(range(10), 10, "seeds", "seeds", file=s):
            if i == 1:
                raise RuntimeError("boom")
    assert s.getvalue() == "seeds: 1/10 seeds in 0:00:00\n"


def test_unknown_total_and_big_numbers():
    s = io.StringIO()
    with Tracker(None, "features", "rows", file=s) as t:
        t.advance(12_345)
    assert s.getvalue() == "features: 12 345 rows in 0:00:00\n"


def test_disabled_prints_nothing_and_track_rows_is_rows():
    s = io.StringIO()
    assert list(track(range(3), 3, "x", file=s, enabled=False)) == [0, 1, 2]
    assert s.getvalue() == ""
    assert list(track_rows([[1, 2], [3]], 3, "pass", enabled=False)) == [[1, 2], [3]]


def test_a_terminal_gets_one_display_with_nested_rows():
    s = io.StringIO()
    for _ in track(range(2), 2, "outer", "retrains", file=s, tty=True):
        for _ in track([[1, 2]] * 3, 6, "inner", "rows", count=len, file=s, tty=True):
            pass
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", s.getvalue())
    assert "outer" in text and "2/2" in text and "retrains" in text and "inner" in text
    assert progress._LIVE is None and progress._LIVE_USERS == 0  # the display is released
