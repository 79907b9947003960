"""A multipart body's files, parsed by python-multipart's callbacks in a worker thread (a body
of many MiB would hold up the event loop); every refusal a `Refused` 400 naming what is wrong."""

from __future__ import annotations

from typing import TYPE_CHECKING

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from pawlab.serve.service import Refused

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks


class _Form:
    """python-multipart's callbacks, gathering a body's files in upload order as (file name,
    bytes); at most ``max_parts`` files and as many fields (which are skipped)."""

    def __init__(self, max_parts: int) -> None:
        self.max_parts = max_parts
        self.files: list[tuple[str | None, bytes]] = []
        self.fields = 0
        self.ended = False
        self._name = self._value = b""  # of the header being read
        self._disposition = b""
        self._file: tuple[str, bytearray] | None = None  # the part being read, if a file

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_name,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_end": self._body_end,
        }

    def _begin(self) -> None:
        self._disposition, self._file = b"", None

    def _header_name(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._name.lower() == b"content-disposition":
            self._disposition = self._value
        self._name = self._value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise Refused(400, 'multipart body: a part\'s Content-Disposition has no "name"')
        if b"filename" not in options:
            self.fields += 1
            if self.fields > self.max_parts:
                raise Refused(400, f"multipart body: Too many fields (more than {self.max_parts})")
            return
        if len(self.files) >= self.max_parts:
            raise Refused(400, f"multipart body: Too many files (more than {self.max_parts})")
        self._file = (options[b"filename"].decode("utf-8", "replace"), bytearray())

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self._file[1].extend(data[start:end])

    def _end(self) -> None:
        if self._file is not None:
            self.files.append((self._file[0], bytes(self._file[1])))

    def _body_end(self) -> None:
        self.ended = True


def files(content_type: str, body: bytes, max_parts: int) -> list[tuple[str | None, bytes]]:
    """A multipart body's files, in upload order, as (file name, bytes). Run in a worker
    thread: parsing a body of many MiB would hold up the event loop."""
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise Refused(400, "multipart body: its Content-Type names no boundary")
    form = _Form(max_parts)
    try:
        parser = MultipartParser(boundary, form.callbacks())
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise Refused(400, f"multipart body: malformed: {exc}") from None
    if not form.ended:
        raise Refused(400, "multipart body: it ends before its closing boundary")
    if not form.files:
        raise Refused(400, "multipart body: no file in it")
    return form.files
