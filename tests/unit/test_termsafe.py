"""Job text reaches a terminal as text: no escape sequence survives, whole or split across writes."""

import io
import random

import pytest

from mlpd.termsafe import TerminalFilter, strip_controls

HOSTILE = [
    "\x1b]52;c;cm0gLXJmIH4K\x07",          # OSC 52: write the clipboard (BEL-terminated)
    "\x1b]52;c;cm0gLXJmIH4K\x1b\\",        # the same, ST-terminated
    "\x1b[2J\x1b[H",                        # clear the screen, cursor home
    "\x1b]0;you have been pwned\x07",       # retitle the window
    "\x1bc",                                # full reset
    "\x1bP+q544e\x1b\\",                    # DCS (a terminfo query)
    "\x1b_hidden\x1b\\",                    # APC
    "\x1b[31mred\x1b[0m",                   # colour: shown as plain text
    "\x9b2J",                               # C1 CSI as a code point
    "a\x08b\x07c\x00d\x7f",                 # backspace, bell, NUL, DEL
]


@pytest.mark.parametrize("seq", HOSTILE)
def test_every_escape_sequence_and_control_character_is_dropped(seq):
    out = strip_controls("before " + seq + " after\n")
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out and "\x00" not in out and "\x08" not in out
    assert out.startswith("before ") and out.endswith(" after\n")


def test_newlines_tabs_carriage_returns_and_unicode_stay():
    text = "epoch 1\tloss 0.5\r epoch 2 — ✓ 学习\n"
    assert strip_controls(text) == text


def filtered(chunks: list[bytes]) -> bytes:
    sink = io.BytesIO()
    f = TerminalFilter(sink)
    for c in chunks:
        f.write(c)
    return sink.getvalue()


def test_a_sequence_split_across_writes_never_gets_through():
    data = ("line one\n" + "".join(HOSTILE) + "line two ✓\n").encode()
    expected = filtered([data])
    assert b"\x1b" not in expected and expected.startswith(b"line one\n") and expected.endswith("line two ✓\n".encode())
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(data)), 12))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert filtered(pieces) == expected


def test_an_unfinished_sequence_is_held_not_printed_and_a_huge_one_is_dropped():
    assert filtered([b"ok \x1b]52;c;AAAA"]) == b"ok "
    assert filtered([b"\x1b]52;c;" + b"A" * 70_000, b" then text\n"]).endswith(b" then text\n")
