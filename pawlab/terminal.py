"""Text for a terminal: names from data (classes, files, folders) shown, never obeyed.

A file or class folder may be named with control characters: ``ESC ] 0 ; title BEL`` retitles
a terminal, ``ESC [ 2 J`` clears it, U+202E reverses the text after it. `printable` writes
each such character as an escape (``\\x1b``, ``\\u202e``), as ``repr`` would; the CLI's
standard output and error pass through `PrintableStream`, so nothing pawlab prints can
drive the terminal. Line breaks and tabs pass; carriage returns pass only where progress
bars draw (standard error): on standard output a name's ``\r`` could hide what precedes it.
"""

from __future__ import annotations

import re
from typing import Any, TextIO

# C0 and C1 controls but \t \n \r, DEL, and the format characters that reorder or hide text
# (bidi embeddings, overrides and isolates; zero-width joiners are harmless and pass)
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, carriage_return: bool = True) -> str:
    """``text`` with every character that could drive a terminal written as an escape
    (``\r`` too unless ``carriage_return``)."""
    escaped = _UNSAFE.sub(_escaped, str(text))
    return escaped if carriage_return else escaped.replace("\r", "\\r")


class PrintableStream:
    """A text stream that writes through `printable`; everything else is the wrapped stream's."""

    def __init__(self, stream: TextIO, carriage_return: bool = True) -> None:
        self.stream, self.carriage_return = stream, carriage_return

    def write(self, text: str) -> int:
        self.stream.write(printable(text, self.carriage_return))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, buffer, ...
        return getattr(self.stream, name)


__all__ = ["PrintableStream", "printable"]
