"""The protobuf wire format, as far as onnxfix reads and writes it by hand.

Field numbers and tags of the few ONNX fields the scanner and the writer touch, varints,
a field iterator over a file or a buffer, the size limit protobuf puts on one message, and the
one place a protobuf message is parsed from bytes (errors become one-line ModelErrors).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from google.protobuf.message import DecodeError

from onnxfix.errors import ModelError, one_line

# The largest message protobuf serializes or reads (and so onnx.load): a bigger model needs
# external data. Read as `wire.PROTOBUF_LIMIT` so tests can lower it to exercise that path.
PROTOBUF_LIMIT = 2**31 - 1

# Field numbers (onnx.proto) and the wire-format tags the writer emits.
MODEL_GRAPH = 7
GRAPH_INITIALIZER = 5
TENSOR_RAW_DATA = 9
TAG_GRAPH = bytes([MODEL_GRAPH << 3 | 2])
TAG_INITIALIZER = bytes([GRAPH_INITIALIZER << 3 | 2])
TAG_RAW_DATA = bytes([TENSOR_RAW_DATA << 3 | 2])

# A field's key and length prefix take at most this many bytes (two 10-byte varints).
_HEAD = 20


class Malformed(Exception):
    """Raised by the field iterator; turned into a ModelError naming the file."""


class FileBytes:
    """Random access to a file's bytes through small pread windows.

    Not mmap: with large page-cache folios, touching one byte of a mapping can map megabytes
    into the process (its RSS), and a file truncated meanwhile would raise SIGBUS.
    """

    WINDOW = 1 << 16

    def __init__(self, fd: int, size: int):
        self.fd, self.size = fd, size
        self.base, self.buf = 0, b""

    def window(self, pos: int) -> tuple[int, bytes]:
        """(base, bytes) starting at or before `pos` and holding at least _HEAD bytes from it
        (fewer only at the end of the file)."""
        if self.base <= pos and pos + _HEAD <= self.base + len(self.buf):
            return self.base, self.buf
        if not 0 <= pos < self.size:
            raise Malformed(f"read past the end of the file at byte {pos}")
        self.base, self.buf = pos, self.read(pos, min(self.WINDOW, self.size - pos))
        return self.base, self.buf

    def read(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes at `offset` (from the current window when it holds them)."""
        if length <= 0:
            return b""
        if self.base <= offset and offset + length <= self.base + len(self.buf):
            return self.buf[offset - self.base:offset - self.base + length]
        parts = []
        while length > 0:
            chunk = os.pread(self.fd, min(length, 1 << 30), offset)
            if not chunk:
                raise Malformed(f"the file ended early at byte {offset} (changed while read?)")
            parts.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)


class MemoryBytes:
    """The FileBytes interface over bytes already in memory."""

    def __init__(self, data: bytes | memoryview):
        self.data, self.size = data, len(data)

    def window(self, pos: int) -> tuple[int, bytes | memoryview]:
        if not 0 <= pos < self.size:
            raise Malformed(f"read past the end of the buffer at byte {pos}")
        return 0, self.data

    def read(self, offset: int, length: int) -> bytes | memoryview:
        return self.data[offset:offset + length]


def read_varint(buf, pos: int, end: int, base: int = 0) -> tuple[int, int]:
    """The varint at buf[pos] (not past buf[end]) and the index after it; `base` is the
    buffer's offset in the file, for messages."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise Malformed(f"truncated varint at byte {base + pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise Malformed(f"varint longer than 10 bytes at byte {base + pos}")


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def len_field(tag: bytes, length: int) -> int:
    """Encoded size of a length-delimited field whose payload has `length` bytes."""
    return len(tag) + len(varint(length)) + length


def fields(src: FileBytes | MemoryBytes, pos: int, end: int
           ) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, value start, field end) of one message.

    Positions are absolute in `src`. Only keys and length prefixes are read: a field's value
    is skipped, however large, so a graph walks at the cost of its field count.
    """
    base, buf, stop = 0, b"", 0
    while pos < end:
        if pos + _HEAD > stop:
            base, buf = src.window(pos)
            stop = base + len(buf)
        limit = min(end, stop) - base
        start = pos
        i = pos - base
        key = buf[i] if i < limit else 0x80  # 0x80: let read_varint report the truncation
        if key < 0x80:
            i += 1
        else:
            key, i = read_varint(buf, i, limit, base)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise Malformed(f"field number 0 at byte {start}")
        value = base + i
        if wire == 2:
            length, i = read_varint(buf, i, limit, base)
            value = base + i
            pos = value + length
        elif wire == 0:
            _, i = read_varint(buf, i, limit, base)
            pos = base + i
        elif wire == 1:
            pos = value + 8
        elif wire == 5:
            pos = value + 4
        else:
            raise Malformed(f"unsupported wire type {wire} (field {number}) at byte {start}")
        if pos > end:
            raise Malformed(f"field {number} at byte {start} runs past the end of its "
                            f"message (needs {pos - start} bytes, {end - start} left)")
        yield number, wire, start, value, pos


def parse(message, data: bytes, origin: str):
    """`message` parsed from `data` by protobuf; a failure is a one-line ModelError."""
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        text = str(e)
        if "MaxDepth" in text or "recursion" in text.lower():
            raise ModelError(f"{origin}: nesting too deep for protobuf") from None
        raise ModelError(f"{origin}: not a valid ONNX protobuf ({one_line(e)})") from None
    return message
