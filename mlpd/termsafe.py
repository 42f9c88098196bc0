"""What the CLI prints is text, never terminal commands.

A job's output, a failure reason, a workspace's log: a member's code wrote them, and a terminal
obeys the escape sequences in what it shows: OSC 52 writes the clipboard, others clear the screen,
retitle the window or hide what came before. `mlpd` therefore writes its stdout and stderr through
:class:`TerminalFilter`, which drops every escape sequence (CSI, OSC, DCS, APC, PM, SOS and the
two-character ones) and every control character but newline, tab and carriage return (progress bars
use it). Sequences split across writes are held until they end, so a stream cannot slip one
through in pieces. `mlpd logs --raw` (and `ws logs --raw`, `deployments logs --raw`) writes the
bytes as they are.
"""

from __future__ import annotations

import codecs
import io
import re
import sys
from typing import BinaryIO

# An escape sequence, or one control character (ESC itself when nothing valid follows it).
_SEQUENCE = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]"          # CSI ... final
    r"|\][^\x07\x1b]*(?:\x07|\x1b\\)"      # OSC ... BEL or ST
    r"|[PX^_][^\x1b]*\x1b\\"               # DCS, SOS, PM, APC ... ST
    r"|[ -/]*[0-~])"                       # two-character (and nF) sequences
    r"|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# The start of a sequence that has not ended yet, at the end of what was written so far.
_UNFINISHED = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?|[PX^_][^\x1b]*\x1b?|[ -/]*)?\Z")
MAX_HELD = 64 * 1024  # an unfinished sequence longer than this is dropped, not held forever


def strip_controls(text: str) -> str:
    """text without escape sequences or control characters (newline, tab and carriage return stay)."""
    return _SEQUENCE.sub("", text)


class TerminalFilter(io.RawIOBase):
    """A binary stream that passes what is written to `target` without escape sequences."""

    def __init__(self, target: BinaryIO):
        super().__init__()
        self.target = target
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.held = ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return bool(getattr(self.target, "isatty", lambda: False)())

    def write(self, data) -> int:
        text = self.held + self.decoder.decode(bytes(data))
        unfinished = _UNFINISHED.search(text)
        cut = unfinished.start() if unfinished and len(text) - unfinished.start() <= MAX_HELD else len(text)
        self.held = text[cut:] if unfinished and cut < len(text) else ""
        clean = strip_controls(text[:cut])
        if clean:
            self.target.write(clean.encode("utf-8"))
        return len(data)

    def flush(self) -> None:
        self.target.flush()


def install() -> None:
    """Route this process's sys.stdout and sys.stderr through a TerminalFilter (idempotent)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if getattr(stream, "mlpd_raw", None) is not None or not hasattr(stream, "buffer"):
            continue
        stream.flush()
        filtered = io.BufferedWriter(TerminalFilter(stream.buffer), buffer_size=8192)
        wrapper = io.TextIOWrapper(filtered, encoding="utf-8", errors="replace", line_buffering=True, write_through=True)
        wrapper.mlpd_raw = stream.buffer  # type: ignore[attr-defined]
        setattr(sys, name, wrapper)


def raw_stdout() -> BinaryIO:
    """The process's own stdout, unfiltered (for --raw)."""
    return getattr(sys.stdout, "mlpd_raw", None) or sys.stdout.buffer
