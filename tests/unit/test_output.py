"""Output for people: counts with their nouns, durations in whole units."""

from __future__ import annotations

from mlpd.output import duration, plural


def test_a_count_takes_the_singular_only_for_one():
    assert [plural(n, "error") for n in (0, 1, 2)] == ["0 errors", "1 error", "2 errors"]
    assert plural(1, "file") == "1 file" and plural(3, "match", "matches") == "3 matches"


def test_durations_are_whole_units_never_fractions_of_a_second():
    assert duration(None) == "-"
    assert duration(0.0072) == "<1s"
    assert duration(0) == "0s" and duration(45.4) == "45s" and duration(5400) == "1h30m"
