"""Log lines with timestamps: kept when asked, stripped otherwise, filtered by --since."""

from __future__ import annotations

from mlpd.cli.jobs import parse_since
from mlpd.logtext import lines, select, stamp_of
from mlpd.runtime.protocol import format_timestamp

A, B = format_timestamp(1_764_558_000.25), format_timestamp(1_764_558_060.5)
TEXT = f"{A} first\n{B} second\n".encode()


def test_a_stamp_round_trips_to_the_nanosecond_docker_writes():
    assert A == "2025-12-01T03:00:00.250000000Z"
    assert stamp_of(f"{A} x".encode()) == (1_764_558_000.25, len(A) + 1)
    assert stamp_of(b"no stamp here\n") == (None, 0)


def test_lines_are_rejoined_across_chunks():
    assert list(lines([b"ab", b"c\nde", b"f\n", b"tail"])) == [b"abc\n", b"def\n", b"tail"]


def test_stamps_are_shown_only_when_asked_and_since_filters():
    assert b"".join(select([TEXT], timestamps=False)) == b"first\nsecond\n"
    assert b"".join(select([TEXT], timestamps=True)) == TEXT
    assert b"".join(select([TEXT[:7], TEXT[7:]], timestamps=False, since=1_764_558_030)) == b"second\n"
    assert b"".join(select([b"old log without stamps\n"], timestamps=False)) == b"old log without stamps\n"
    assert b"".join(select([b"old log without stamps\n"], timestamps=False, since=0)) == b""


def test_since_takes_a_duration_ago_or_a_utc_time():
    assert parse_since("10m", now=1000.0) == 400.0
    assert parse_since("2025-12-01T03:00") == 1_764_558_000.0
    assert parse_since("2025-12-01T03:00:00+01:00") == 1_764_558_000.0 - 3600
