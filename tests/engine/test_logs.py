"""CRI log format parsing (keel.engine.logs) and signal names: pure functions."""

import pytest

from keel.engine import logs
from keel.engine.engine import parse_signal
from keel.engine.errors import EngineError


def test_parse_line_and_tail(tmp_path):
    p = tmp_path / "ctr.log"
    p.write_bytes(b"2024-05-01T10:00:00.123456789+00:00 stdout F one\n"
                  b"2024-05-01T10:00:01.000000000+02:00 stderr P tw\n"
                  b"2024-05-01T10:00:02Z stderr F o\n"
                  b"garbage line\n"
                  b"2024-05-01T10:00:03.5Z stdout F \n"
                  b"2024-05-01T10:00:04Z stdout F incomplete")   # no newline yet: not read
    entries, off = logs.read_entries(str(p))
    assert [(e.stream, e.partial, e.message) for e in entries] == [
        ("stdout", False, b"one"), ("stderr", True, b"tw"), ("stderr", False, b"o"), ("stdout", False, b"")]
    assert entries[0].time == pytest.approx(1714557600.123456)
    assert entries[1].time == pytest.approx(1714557600 - 7200 + 1)
    assert [e.message for e in logs.tail(entries, 2)] == [b"tw", b"o", b""]
    assert logs.tail(entries, 0) == [] and logs.tail(entries, -1) == entries
    assert off == p.stat().st_size - len(b"2024-05-01T10:00:04Z stdout F incomplete")


def test_parse_since():
    assert logs.parse_since("10m", now=1000.0) == 400.0
    assert logs.parse_since("1h30m", now=10000.0) == 10000 - 5400
    assert logs.parse_since("1714557600") == 1714557600
    assert logs.parse_since("2024-05-01T10:00:00Z") == 1714557600
    with pytest.raises(EngineError, match="--since 'yesterday'"):
        logs.parse_since("yesterday")


def test_parse_signal():
    assert parse_signal("KILL") == parse_signal("sigkill") == parse_signal(9) == 9
    assert parse_signal("TERM") == 15 and parse_signal("RTMIN+1") == 35
    for bad in ("NOPE", "0", "99"):
        with pytest.raises(EngineError, match="invalid signal"):
            parse_signal(bad)
