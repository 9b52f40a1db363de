"""A model read without its weights, and where each weight's bytes are."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onnxfix.errors import ModelError
from onnxfix.io.external import check_location, open_external
from onnxfix.io.tensors import check_payload_size, external_info


@dataclass(frozen=True)
class Payload:
    """`length` bytes at `offset` of the open file `fd`; `stub` when they are a payload of the
    source .onnx that the reader left in place (not external data of the input)."""

    fd: int
    offset: int
    length: int
    stub: bool = False


@dataclass
class Skeleton:
    """A model whose large initializers are external-data references into the source file.

    model: the ModelProto (big top-level initializers stubbed, everything else parsed).
    path: the source .onnx file (absolute).
    stubs: initializer name -> (offset, length) of its raw_data payload in the source file.
    locations: every external-data location the model reads (stubs' included), as found when
    the file was read: empty when every weight was small enough to be parsed.
    The source file (and any external data file it uses) stays open until `close()`, so the
    weights are read from the very files that were scanned, even if the paths are replaced.
    """

    model: onnx.ModelProto
    path: Path
    stubs: dict[str, tuple[int, int]]
    inline_limit: int = 1024
    fds: dict[tuple[str, ...], int] = field(default_factory=dict, repr=False)
    stat: tuple[int, int, int, int] = (0, 0, 0, 0)
    spans: set[tuple[int, int]] = field(default_factory=set, repr=False)
    locations: set[str] = field(default_factory=set, repr=False)

    @property
    def location(self) -> str:
        """The external-data location the stubs use: the source file's base name."""
        return self.path.name

    @property
    def folder(self) -> Path:
        return self.path.parent

    def close(self) -> None:
        fds, self.fds = self.fds, {}
        for fd in set(fds.values()):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> Skeleton:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # the fds are ours; never leak them
        with contextlib.suppress(Exception):
            self.close()

    def resolve(self, t: onnx.TensorProto, origin: str) -> Payload:
        """Where an external tensor's payload is, bounds and size checked."""
        info = external_info(t, origin)
        location = info.get("location", "")
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise ModelError(f"{origin}: tensor {t.name!r} has a non-numeric external data "
                             "offset or length") from None
        key = tuple(check_location(location, origin))
        fd = self._data_fd(key, location, origin)
        size = os.fstat(fd).st_size
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise ModelError(f"{origin}: tensor {t.name!r}: external data {location!r} "
                             f"[{offset}, {offset}+{length}) lies outside the file "
                             f"({size} bytes)")
        check_payload_size(t, length, origin)
        stub = key == (self.location,) and (offset, length) in self.spans
        self.locations.add(location)
        return Payload(fd, offset, length, stub)

    def _source_fd(self) -> int:
        key = (self.location,)
        if key not in self.fds:
            raise ModelError(f"{self.path}: the skeleton is closed")
        fd = self.fds[key]
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != self.stat:
            raise ModelError(f"{self.path}: the file changed after it was read; load it again")
        return fd

    def _data_fd(self, key: tuple[str, ...], location: str, origin: str) -> int:
        if key == (self.location,):
            return self._source_fd()
        if key not in self.fds:
            self.fds[key] = open_external(self.folder, location, origin)
        return self.fds[key]
