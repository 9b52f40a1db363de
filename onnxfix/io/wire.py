"""Big models at I/O speed: read an .onnx file's structure without its weights.

`load_skeleton` walks the protobuf wire format by hand (tags and varints) down to
ModelProto.graph.initializer and replaces every large `raw_data` payload by an external-data
reference into the *input file itself* (location = its base name, offset and length of the
payload). Everything else is parsed normally, so the skeleton is an ordinary, small
`onnx.ModelProto`: the rewrite passes edit it like any model, and onnxruntime runs it straight
from the original file when it is saved in the same folder.

Writing a skeleton back, weights streamed, is `wire_write.save_with_weights`.

Safety (DESIGN.md): external-data locations that are absolute, climb out of the model folder or
pass through a symlink are refused; malformed wire data (truncated varints, lengths past the end
of the file or of the enclosing message, unknown wire types, nesting deeper than protobuf allows)
becomes a one-line `ModelError`; nothing is ever read outside the file.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from onnxfix.errors import ModelError, UsageError

# Bounded buffer when payloads are read into memory.
READ_CHUNK = 8 * 2**20

# Field numbers (onnx.proto) and the wire-format tags the writer emits.
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_RAW_DATA = 9
_TAG_GRAPH = bytes([_MODEL_GRAPH << 3 | 2])
_TAG_INITIALIZER = bytes([_GRAPH_INITIALIZER << 3 | 2])
_TAG_RAW_DATA = bytes([_TENSOR_RAW_DATA << 3 | 2])
_EXTERNAL = onnx.TensorProto.EXTERNAL

# Bytes per element for the fixed-size tensor types; packed 4-bit types take half a byte.
_ITEM_BYTES = {
    onnx.TensorProto.FLOAT: 4, onnx.TensorProto.UINT8: 1, onnx.TensorProto.INT8: 1,
    onnx.TensorProto.UINT16: 2, onnx.TensorProto.INT16: 2, onnx.TensorProto.INT32: 4,
    onnx.TensorProto.INT64: 8, onnx.TensorProto.BOOL: 1, onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.UINT32: 4, onnx.TensorProto.UINT64: 8,
    onnx.TensorProto.COMPLEX64: 8, onnx.TensorProto.COMPLEX128: 16,
    onnx.TensorProto.BFLOAT16: 2,
}
for _name in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0"):
    if hasattr(onnx.TensorProto, _name):
        _ITEM_BYTES[getattr(onnx.TensorProto, _name)] = 1
_HALF_BYTE = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1")
              if hasattr(onnx.TensorProto, n)}


# ---------------------------------------------------------------------------------------------
# Wire format primitives


class _Malformed(Exception):
    """Raised by the scanner; turned into a ModelError naming the file."""


class _FileBytes:
    """Random access to a file's bytes through small pread windows.

    Not mmap: with large page-cache folios, touching one byte of a mapping can map megabytes
    into the process (its RSS), and a file truncated meanwhile would raise SIGBUS.
    """

    WINDOW = 1 << 16

    def __init__(self, fd: int, size: int):
        self.fd, self.size = fd, size
        self.base, self.buf = 0, b""

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self._read(key.start, key.stop - key.start)
        if not self.base <= key < self.base + len(self.buf):
            if not 0 <= key < self.size:
                raise _Malformed(f"read past the end of the file at byte {key}")
            self.base, self.buf = key, self._read(key, min(self.WINDOW, self.size - key))
        return self.buf[key - self.base]

    def _read(self, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        if self.base <= offset and offset + length <= self.base + len(self.buf):
            return self.buf[offset - self.base:offset - self.base + length]
        parts = []
        while length > 0:
            chunk = os.pread(self.fd, min(length, 1 << 30), offset)
            if not chunk:
                raise _Malformed(f"the file ended early at byte {offset} (changed while read?)")
            parts.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise _Malformed(f"truncated varint at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _Malformed(f"varint longer than 10 bytes at byte {pos}")


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len_field(tag: bytes, length: int) -> int:
    """Encoded size of a length-delimited field whose payload has `length` bytes."""
    return len(tag) + len(_varint(length)) + length


def _fields(buf, pos: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, value start, field end) of one message."""
    while pos < end:
        start = pos
        key, pos = _read_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed(f"field number 0 at byte {start}")
        value = pos
        if wire == 0:
            _, pos = _read_varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, value = _read_varint(buf, pos, end)
            pos = value + length
        else:
            raise _Malformed(f"unsupported wire type {wire} (field {number}) at byte {start}")
        if pos > end:
            raise _Malformed(f"field {number} at byte {start} runs past the end of its "
                             f"message (needs {pos - start} bytes, {end - start} left)")
        yield number, wire, start, value, pos


# ---------------------------------------------------------------------------------------------
# Safe access to external data files


def _external_info(t: onnx.TensorProto, origin: str = "") -> dict[str, str]:
    info = {e.key: e.value for e in t.external_data}
    # protobuf hands out bytes for proto2 strings that are not valid UTF-8
    if not all(isinstance(s, str) for kv in info.items() for s in kv):
        raise ModelError(f"{origin}: tensor {t.name!r} has external data entries that are not "
                         "valid UTF-8")
    return info


def _check_location(location: str, origin: str) -> list[str]:
    """The location's path components, refusing what may not leave the model folder."""
    if not location:
        raise ModelError(f"{origin}: external data with an empty location")
    if "\x00" in location:
        raise ModelError(f"{origin}: external data location contains a NUL byte")
    if (location.startswith(("/", "\\")) or os.path.isabs(location)
            or (len(location) > 1 and location[1] == ":" and location[0].isalpha())):
        raise ModelError(f"{origin}: external data location {location!r} is absolute; only "
                         "paths inside the model folder are allowed")
    parts = [p for p in location.split("/") if p not in ("", ".")]
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else 1
        if depth < 0:
            raise ModelError(f"{origin}: external data location {location!r} leaves the model "
                             "folder")
    if not parts:
        raise ModelError(f"{origin}: external data location {location!r} names no file")
    return parts


def _open_external(folder: Path, location: str, origin: str) -> int:
    """Open `location` below `folder` one component at a time, refusing any symlink."""
    parts = _check_location(location, origin)
    try:
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise ModelError(f"{origin}: cannot open folder {folder}: {e.strerror or e}") from None
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            flags |= os.O_NONBLOCK if last else os.O_DIRECTORY
            try:
                nfd = os.open(part, flags, dir_fd=dfd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR) and _is_link(part, dfd):
                    raise ModelError(f"{origin}: external data location {location!r} passes "
                                     f"through a symlink ({part!r}); links are refused"
                                     ) from None
                raise ModelError(f"{origin}: external data {location!r}: "
                                 f"{e.strerror or e}") from None
            os.close(dfd)
            dfd = nfd
        st = os.fstat(dfd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelError(f"{origin}: external data {location!r} is not a regular file")
        if st.st_nlink > 1:  # a hard link can expose any file of the same filesystem
            raise ModelError(f"{origin}: external data {location!r} has {st.st_nlink} hard "
                             "links; links are refused")
        os.set_blocking(dfd, True)
        fd, dfd = dfd, -1
        return fd
    finally:
        if dfd >= 0:
            os.close(dfd)


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _expected_bytes(t: onnx.TensorProto) -> int | None:
    count = math.prod(t.dims)
    if t.data_type in _ITEM_BYTES:
        return count * _ITEM_BYTES[t.data_type]
    if t.data_type in _HALF_BYTE:
        return (count + 1) // 2
    return None


def _check_payload_size(t: onnx.TensorProto, length: int, origin: str) -> None:
    if any(d < 0 for d in t.dims):
        raise ModelError(f"{origin}: tensor {t.name!r} has a negative dim {list(t.dims)}")
    want = _expected_bytes(t)
    if want is not None and want != length:
        raise ModelError(f"{origin}: tensor {t.name!r} declares dims {list(t.dims)} "
                         f"({want} bytes) but holds {length} bytes")


# ---------------------------------------------------------------------------------------------
# The skeleton


@dataclass
class Skeleton:
    """A model whose large initializers are external-data references into the source file.

    model: the ModelProto (big top-level initializers stubbed, everything else parsed).
    path: the source .onnx file (absolute).
    stubs: initializer name -> (offset, length) of its raw_data payload in the source file.
    The source file (and any external data file it uses) stays open until `close()`, so the
    weights are read from the very files that were scanned, even if the paths are replaced.
    """

    model: onnx.ModelProto
    path: Path
    stubs: dict[str, tuple[int, int]]
    inline_limit: int = 1024
    _fds: dict[tuple[str, ...], int] = field(default_factory=dict, repr=False)
    _stat: tuple[int, int, int, int] = (0, 0, 0, 0)
    _spans: set[tuple[int, int]] = field(default_factory=set, repr=False)

    @property
    def location(self) -> str:
        """The external-data location the stubs use: the source file's base name."""
        return self.path.name

    @property
    def folder(self) -> Path:
        return self.path.parent

    def close(self) -> None:
        fds, self._fds = self._fds, {}
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

    # -- internal ------------------------------------------------------------------------------

    def _source_fd(self) -> int:
        key = (self.location,)
        if key not in self._fds:
            raise ModelError(f"{self.path}: the skeleton is closed")
        fd = self._fds[key]
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != self._stat:
            raise ModelError(f"{self.path}: the file changed after it was read; load it again")
        return fd

    def _data_fd(self, location: str, origin: str) -> int:
        key = tuple(_check_location(location, origin))
        if key == (self.location,):
            return self._source_fd()
        if key not in self._fds:
            self._fds[key] = _open_external(self.folder, location, origin)
        return self._fds[key]

    def _resolve(self, t: onnx.TensorProto, origin: str) -> tuple[int, int, int, bool]:
        """(fd, offset, length, is_stub) of an external tensor's payload, bounds checked."""
        info = _external_info(t, origin)
        location = info.get("location", "")
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise ModelError(f"{origin}: tensor {t.name!r} has a non-numeric external data "
                             "offset or length") from None
        fd = self._data_fd(location, origin)
        size = os.fstat(fd).st_size
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise ModelError(f"{origin}: tensor {t.name!r}: external data {location!r} "
                             f"[{offset}, {offset}+{length}) lies outside the file "
                             f"({size} bytes)")
        _check_payload_size(t, length, origin)
        is_stub = (tuple(_check_location(location, origin)) == (self.location,)
                   and (offset, length) in self._spans)
        return fd, offset, length, is_stub


def load_skeleton(path: str | os.PathLike, *, inline_limit: int = 1024) -> Skeleton:
    """Read an .onnx file without its weights.

    Every top-level initializer whose raw_data exceeds `inline_limit` bytes becomes an
    external-data reference into the source file itself ({location: base name, offset, length}),
    with name, dims, data_type and doc_string kept. Everything else is parsed normally.
    Initializers already external in the input stay external (relative to the input's folder)
    after their locations and bounds are checked. Problems raise a one-line ModelError.
    """
    p = Path(os.path.abspath(path))
    if not p.exists():
        raise ModelError(f"{path}: no such file")
    if p.is_dir():
        raise ModelError(f"{path}: is a folder, not an .onnx file")
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise ModelError(f"{path}: cannot read: {e.strerror or e}") from None
    skeleton = None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelError(f"{path}: not a regular file")
        os.set_blocking(fd, True)
        if st.st_size == 0:
            raise ModelError(f"{path}: empty file, not an ONNX model")
        try:
            data, stubs, spans = _scan_model(_FileBytes(fd, st.st_size), st.st_size,
                                             inline_limit, p.name, str(path))
            model = _parse_model(data, str(path))
        except (_Malformed, ModelError) as e:
            refuse_pytorch_checkpoint(fd, path)  # the usual mix-up: say so, not "malformed"
            if isinstance(e, _Malformed):
                raise ModelError(f"{path}: not a valid ONNX protobuf (malformed: {e})") from None
            raise
        skeleton = Skeleton(model=model, path=p, stubs=stubs, inline_limit=inline_limit,
                            _fds={(p.name,): fd},
                            _stat=(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns),
                            _spans=spans)
        for t, where in _all_tensors(model):
            if t.data_location == _EXTERNAL:
                skeleton._resolve(t, f"{path} ({where})")
        return skeleton
    except BaseException as e:
        if skeleton is not None:
            skeleton.close()
        else:
            os.close(fd)
        if isinstance(e, OSError):
            raise ModelError(f"{path}: cannot read: {e.strerror or e}") from None
        if isinstance(e, Exception) and not isinstance(e, (ModelError, UsageError)):
            # hostile input must not surface as a traceback; keep the cause on one line
            text = (str(e).strip().splitlines() or [""])[0]
            raise ModelError(f"{path}: unreadable model ({type(e).__name__}: {text})") from None
        raise


def refuse_pytorch_checkpoint(fd: int, path) -> None:
    """Raise a clear ModelError if a file that is not ONNX is a torch.save checkpoint.

    torch.save writes a zip holding `<name>/data.pkl` (since PyTorch 1.6), or before that a
    bare pickle (first byte 0x80, then the protocol number).
    """
    head = os.pread(fd, 4, 0)
    checkpoint = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    if head == b"PK\x03\x04":
        import zipfile

        try:
            with zipfile.ZipFile(os.fdopen(os.dup(fd), "rb")) as z:
                checkpoint = any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist())
        except (zipfile.BadZipFile, OSError, ValueError):
            checkpoint = False
    if checkpoint:
        raise ModelError(f"{path} is a PyTorch checkpoint, not an ONNX model; export it with "
                         f"torch.onnx.export")


def _parse_model(data: bytes, origin: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        text = str(e)
        if "MaxDepth" in text or "recursion" in text.lower():
            raise ModelError(f"{origin}: nesting too deep for protobuf") from None
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        raise ModelError(f"{origin}: not a valid ONNX protobuf ({first})") from None
    if not model.HasField("graph") or not model.opset_import:
        raise ModelError(f"{origin}: not an ONNX model (no graph or no opset_import)")
    return model


def _scan_model(buf, size: int, inline_limit: int, location: str, origin: str):
    """The skeleton's serialized bytes, the stubs by name and their (offset, length) spans."""
    out = bytearray()
    graph = bytearray()
    stubs: dict[str, tuple[int, int]] = {}
    spans: set[tuple[int, int]] = set()
    for number, wire, start, value, end in _fields(buf, 0, size):
        if number == _MODEL_GRAPH and wire == 2:
            # Repeated occurrences of a message field merge: concatenating their contents does.
            _scan_graph(buf, value, end, inline_limit, location, origin, graph, stubs, spans)
        else:
            out += buf[start:end]
    if graph:
        out += _TAG_GRAPH + _varint(len(graph)) + graph
    return bytes(out), stubs, spans


def _scan_graph(buf, pos: int, end: int, inline_limit: int, location: str, origin: str,
                out: bytearray, stubs: dict, spans: set) -> None:
    run = pos  # start of the current run of fields copied verbatim
    for number, wire, start, value, stop in _fields(buf, pos, end):
        if number != _GRAPH_INITIALIZER or wire != 2:
            continue
        stub = _stub_tensor(buf, value, stop, inline_limit, location, origin)
        if stub is None:
            continue
        tensor, span = stub
        out += buf[run:start]
        body = tensor.SerializeToString()
        out += _TAG_INITIALIZER + _varint(len(body)) + body
        run = stop
        stubs[tensor.name] = span
        spans.add(span)
    out += buf[run:end]


def _stub_tensor(buf, pos: int, end: int, inline_limit: int, location: str, origin: str):
    raw = None
    keep: list[tuple[int, int]] = []
    for number, wire, start, value, stop in _fields(buf, pos, end):
        if number == _TENSOR_RAW_DATA and wire == 2:
            raw = (value, stop)  # the last occurrence wins, as in protobuf
        else:
            keep.append((start, stop))
    if raw is None or raw[1] - raw[0] <= inline_limit:
        return None
    head = onnx.TensorProto()
    try:
        head.ParseFromString(b"".join(buf[a:b] for a, b in keep))
    except (DecodeError, RuntimeError, ValueError):
        raise ModelError(f"{origin}: malformed initializer at byte {pos}") from None
    if not isinstance(head.name, str):
        raise ModelError(f"{origin}: initializer name {head.name!r} is not valid UTF-8")
    offset, length = raw[0], raw[1] - raw[0]
    _check_payload_size(head, length, origin)
    head.ClearField("external_data")
    head.data_location = _EXTERNAL
    for key, val in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = head.external_data.add()
        entry.key, entry.value = key, val
    return head, (offset, length)


def checkable(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a skeleton model for onnx.checker.check_model and shape inference.

    The checker resolves external-data locations of an in-memory model against the current
    directory; this copy prefixes each location with '#', which onnx's checker treats as
    "not a file", so structure is checked without touching the weights (load_skeleton has
    already checked the locations, links and bounds).
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for t, _ in _all_tensors(copy):
        if t.data_location == _EXTERNAL:
            for e in t.external_data:
                if e.key == "location":
                    e.value = "#" + e.value
    return copy


def read_weights(model: onnx.ModelProto, skeleton: Skeleton) -> None:
    """Read every external payload (stubs and input data files) into raw_data, in place.

    Reads go through the skeleton's open descriptors, so they come from the very files that
    were scanned and checked.
    """
    origin = str(skeleton.path)
    for t, where in _all_tensors(model):
        if t.data_location != _EXTERNAL:
            continue
        fd, offset, length, _ = skeleton._resolve(t, f"{origin} ({where})")
        chunks, done = [], 0
        while done < length:
            piece = os.pread(fd, min(READ_CHUNK, length - done), offset + done)
            if not piece:
                raise ModelError(f"{origin}: tensor {t.name!r}: the file ended early")
            chunks.append(piece)
            done += len(piece)
        t.raw_data = b"".join(chunks)
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT


def session_options(skeleton: Skeleton, options=None):
    """onnxruntime SessionOptions that resolve a skeleton's stubs from the source folder.

    With them, `InferenceSession(model.SerializeToString(), options)` runs a skeleton (or an
    edited copy of it) from memory, reading the weights straight from the source files;
    without them, ORT refuses external data of a model given as bytes.
    """
    import onnxruntime as ort

    options = options or ort.SessionOptions()
    options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                     str(skeleton.folder))
    return options


# ---------------------------------------------------------------------------------------------
# Walking every tensor of a model


def _all_tensors(model: onnx.ModelProto) -> Iterator[tuple[onnx.TensorProto, str]]:
    yield from _graph_tensors(model.graph, "graph")
    for f in model.functions:
        for n in f.node:
            yield from _node_tensors(n, f"function {f.domain}::{f.name}")
    for i, ti in enumerate(model.training_info):
        yield from _graph_tensors(ti.initialization, f"training_info[{i}].initialization")
        yield from _graph_tensors(ti.algorithm, f"training_info[{i}].algorithm")


def _graph_tensors(g: onnx.GraphProto, where: str, *, initializers: bool = True):
    if initializers:
        for t in g.initializer:
            yield t, f"{where} initializer {t.name!r}"
    for s in g.sparse_initializer:
        yield s.values, f"{where} sparse initializer {s.values.name!r}"
        yield s.indices, f"{where} sparse initializer {s.values.name!r} indices"
    for n in g.node:
        yield from _node_tensors(n, where)


def _node_tensors(n: onnx.NodeProto, where: str):
    here = f"{where} node {n.name or n.op_type!r}"
    for a in n.attribute:
        if a.HasField("t"):
            yield a.t, here
        yield from ((t, here) for t in a.tensors)
        if a.HasField("sparse_tensor"):
            yield a.sparse_tensor.values, here
            yield a.sparse_tensor.indices, here
        for s in a.sparse_tensors:
            yield s.values, here
            yield s.indices, here
        if a.HasField("g"):
            yield from _graph_tensors(a.g, f"{here}.{a.name}")
        for g in a.graphs:
            yield from _graph_tensors(g, f"{here}.{a.name}")
