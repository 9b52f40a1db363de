"""Write a (modified) skeleton back with its weights moved by the kernel.

Every small part is serialized by protobuf; every payload still living in a file is streamed
with `os.copy_file_range` (fallbacks: `os.sendfile`, then bounded read/write chunks). Length
prefixes are computed before anything is written. Output is atomic: temporary files in the
destination folder, renamed at the end (data file first, model last).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf import unknown_fields

from onnxfix.errors import ModelError, UsageError
from onnxfix.io.model_io import check_writable, target_mode
from onnxfix.io.wire import (
    _EXTERNAL,
    _GRAPH_INITIALIZER,
    _TAG_GRAPH,
    _TAG_INITIALIZER,
    _TAG_RAW_DATA,
    Skeleton,
    _all_tensors,
    _external_info,
    _fields,
    _graph_tensors,
    _len_field,
    _varint,
)

# The largest message protobuf (and so onnx.load) reads: above it the output needs external data.
# A module constant so tests can lower it to exercise the external-data path with small files.
EMBED_LIMIT = 2**31 - 1
# Offsets of tensors in a written .data file are multiples of this (mmap friendly).
DATA_ALIGN = 4096
# Bounded buffer of the last-resort copy (read/write) and of the zero padding.
COPY_CHUNK = 8 * 2**20
# Copy strategies tried in order; tests narrow this to exercise the fallbacks.
COPY_METHODS: tuple[str, ...] = ("copy_file_range", "sendfile", "readwrite")
LAYOUTS = ("same", "embedded", "external")


@dataclass(frozen=True)
class Saved:
    """What save_with_weights wrote: the layout actually used and the sizes."""

    path: Path
    layout: str  # "embedded" (one file) or "external" (weights in data_path)
    data_path: Path | None
    model_bytes: int
    data_bytes: int


@dataclass
class _Copy:
    """A payload still in a file: `length` bytes at `offset` of `fd`."""

    fd: int
    offset: int
    length: int


class _DataFile:
    """Plans a .data file: every tensor at an aligned offset, in order."""

    def __init__(self, name: str):
        self.name = name
        self.items: list[tuple[int, _Copy | bytes]] = []
        self.size = 0

    def add(self, t: onnx.TensorProto, payload: _Copy | bytes) -> None:
        length = payload.length if isinstance(payload, _Copy) else len(payload)
        offset = -(-self.size // DATA_ALIGN) * DATA_ALIGN
        self.items.append((offset, payload))
        self.size = offset + length
        info = _external_info(t)
        info.update(location=self.name, offset=str(offset), length=str(length))
        t.ClearField("raw_data")
        t.ClearField("external_data")
        t.data_location = _EXTERNAL
        for key in ("location", "offset", "length"):  # then any other keys, e.g. checksum
            entry = t.external_data.add()
            entry.key, entry.value = key, info.pop(key)
        for key, val in info.items():
            entry = t.external_data.add()
            entry.key, entry.value = key, val


def _model_without_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model without its graph, without copying the graph when possible."""
    out = onnx.ModelProto()
    try:
        if len(unknown_fields.UnknownFieldSet(model)):
            raise TypeError("unknown fields")  # only a full copy keeps them
        for fd, value in model.ListFields():
            if fd.name == "graph":
                continue
            if fd.is_repeated:
                getattr(out, fd.name).extend(value)
            elif fd.message_type is not None:
                getattr(out, fd.name).CopyFrom(value)
            else:
                setattr(out, fd.name, value)  # TypeError for strings that are not UTF-8
    except (TypeError, ValueError):
        out.CopyFrom(model)
        out.ClearField("graph")
    return out


def _free_data_name(out: Path, skeleton: Skeleton) -> str:
    """`<out>.data`, unless that is a file the input still reads (in-place runs, or an input
    whose own data file has that name): then `<out>.1.data`, ... Replacing a file the input
    reads would change the input's weights, or break them if a later step failed."""
    protected = {os.path.realpath(skeleton.path)}
    for t, _ in _all_tensors(skeleton.model):
        if t.data_location == _EXTERNAL:
            location = _external_info(t).get("location", "")
            protected.add(os.path.realpath(skeleton.folder / location))
    name, k = out.name + ".data", 0
    while os.path.realpath(out.parent / name) in protected:
        k += 1
        name = f"{out.name}.{k}.data"
    return name


def save_with_weights(model: onnx.ModelProto, skeleton: Skeleton, out_path: str | os.PathLike,
                      *, layout: str = "same", fsync: bool = True) -> Saved:
    """Write `model` (an edited copy of skeleton.model) with the weights streamed from files.

    layout:
      "same"     each tensor keeps the layout it had in the input: payloads stubbed from the
                 input .onnx are embedded as raw_data; tensors that were external data in the
                 input go to one `<out name>.data` file beside the output.
      "embedded" every top-level initializer is embedded (external ones too); tensors external
                 elsewhere (subgraphs, attributes) still go to the .data file.
      "external" every payload (and every in-memory raw_data above skeleton.inline_limit) goes
                 to the .data file, at offsets aligned to DATA_ALIGN.
    "same" and "embedded" switch to "external" when the single file would exceed EMBED_LIMIT.
    The output (and its .data file) appear atomically; `out_path` may be the input file.
    Returns what was written. Raises ModelError for bad references, UsageError when the
    output cannot be written (nothing is left behind).
    """
    if layout not in LAYOUTS:
        raise UsageError(f"layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    out = Path(os.path.abspath(out_path))
    check_writable(out)
    origin = str(skeleton.path)
    data_name = _free_data_name(out, skeleton)

    # External tensors below the top level (rare: subgraph initializers, attributes,
    # functions) always go to the .data file; they are rewritten in copies.
    m0 = _model_without_graph(model)
    graph = model.graph
    if any(t.data_location == _EXTERNAL
           for t, _ in _graph_tensors(graph, "graph", initializers=False)):
        graph = onnx.GraphProto()
        graph.CopyFrom(model.graph)
    nested = _DataFile(data_name)
    for t, where in [*_graph_tensors(graph, "graph", initializers=False), *_all_tensors(m0)]:
        if t.data_location == _EXTERNAL:
            fd, offset, length, _ = skeleton._resolve(t, f"{origin} ({where})")
            nested.add(t, _Copy(fd, offset, length))

    # Top-level initializers: payload source of each one.
    plan: list[tuple[onnx.TensorProto, _Copy | None, bool]] = []  # (tensor, file payload, stub)
    for t in graph.initializer:
        if t.data_location == _EXTERNAL:
            fd, offset, length, is_stub = skeleton._resolve(t, f"{origin} (initializer)")
            plan.append((t, _Copy(fd, offset, length), is_stub))
        else:
            plan.append((t, None, False))

    m0_bytes = m0.SerializeToString()
    # The graph as protobuf writes it (unknown fields and all); its initializer records, in
    # order, are swapped for the planned ones, everything else is kept byte for byte.
    g_bytes = memoryview(graph.SerializeToString())
    g_fields = [(number == _GRAPH_INITIALIZER and wire == 2, start, end)
                for number, wire, start, _, end in _fields(g_bytes, 0, len(g_bytes))]
    if sum(1 for is_init, _, _ in g_fields if is_init) != len(plan):
        raise ModelError(f"{out}: cannot line up the serialized initializers")  # not reached

    def build(mode: str):
        data = _DataFile(data_name)
        data.items, data.size = list(nested.items), nested.size
        replaced: list[list] = []
        for t, payload, is_stub in plan:
            if payload is None:
                if (mode == "external" and t.HasField("raw_data")
                        and len(t.raw_data) > skeleton.inline_limit):
                    moved = onnx.TensorProto()
                    moved.CopyFrom(t)
                    data.add(moved, moved.raw_data)
                    body = moved.SerializeToString()
                    replaced.append([_TAG_INITIALIZER + _varint(len(body)) + body])
                else:
                    replaced.append([])  # kept as serialized
            elif mode == "embedded" or (mode == "same" and is_stub):
                head = onnx.TensorProto()
                head.CopyFrom(t)
                head.ClearField("external_data")
                head.ClearField("data_location")
                hb = head.SerializeToString()
                inner = len(hb) + _len_field(_TAG_RAW_DATA, payload.length)
                replaced.append([_TAG_INITIALIZER + _varint(inner) + hb + _TAG_RAW_DATA
                                 + _varint(payload.length), payload])
            else:
                ref = onnx.TensorProto()
                ref.CopyFrom(t)
                data.add(ref, payload)
                body = ref.SerializeToString()
                replaced.append([_TAG_INITIALIZER + _varint(len(body)) + body])
        pieces: list[bytes | memoryview | _Copy] = []
        items = iter(replaced)
        run = 0  # start of the current run of records kept byte for byte
        for is_init, start, end in g_fields:
            swap = next(items) if is_init else []
            if not swap:
                continue
            pieces.append(g_bytes[run:start])
            run = end
            for piece in swap:
                pieces.append(piece)
        pieces.append(g_bytes[run:])
        size = sum(p.length if isinstance(p, _Copy) else len(p) for p in pieces)
        total = len(m0_bytes) + _len_field(_TAG_GRAPH, size)
        return [m0_bytes, _TAG_GRAPH + _varint(size), *pieces], total, data

    pieces, total, data = build(layout)
    if layout != "external" and total > EMBED_LIMIT:
        layout = "external"
        pieces, total, data = build(layout)
        if total > EMBED_LIMIT:
            raise ModelError(f"{out}: the model without its weights still exceeds protobuf's "
                             f"{EMBED_LIMIT} byte limit")
    used = "external" if data.items else "embedded"
    data_path = out.parent / data_name if data.items else None
    _write_outputs(out, pieces, data if data.items else None, fsync)
    return Saved(path=out, layout=used, data_path=data_path, model_bytes=total,
                 data_bytes=data.size if data.items else 0)


def _write_outputs(out: Path, pieces: list, data: _DataFile | None, fsync: bool) -> None:
    temps: list[str] = []
    try:
        try:
            targets = []
            if data is not None:
                dest = out.parent / data.name
                targets.append((_write_temp(dest, lambda fd: _write_data(fd, data), fsync,
                                            temps), dest))
            targets.append((_write_temp(out, lambda fd: _write_pieces(fd, pieces), fsync,
                                        temps), out))
            for tmp, dest in targets:
                os.chmod(tmp, target_mode(dest))
            _install(targets, temps)
        except OSError as e:
            raise UsageError(f"{out}: cannot write: {e.strerror or e}") from None
    finally:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _write_temp(dest: Path, write, fsync: bool, temps: list[str]) -> str:
    """A temp file beside `dest`, filled by write(fd); recorded in `temps` for cleanup."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    temps.append(tmp)
    with os.fdopen(fd, "wb", buffering=0) as f:
        write(f.fileno())
        if fsync:
            os.fsync(f.fileno())
    return tmp


def _install(targets: list[tuple[str, Path]], temps: list[str]) -> None:
    """Rename the temp files into place, the model last (it makes the output visible).

    A data file already at its destination (an older output's) is set aside first and put
    back if a later rename fails, so a failure leaves every file as it was.
    """
    placed: list[tuple[Path, str | None]] = []
    try:
        for tmp, dest in targets:
            backup = None
            if dest != targets[-1][1] and dest.exists():
                fd, backup = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".old",
                                              dir=dest.parent)
                os.close(fd)
                os.replace(dest, backup)
            placed.append((dest, backup))
            os.replace(tmp, dest)
            temps.remove(tmp)
    except BaseException:
        for dest, backup in reversed(placed):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, dest)
                elif dest != targets[-1][1]:
                    os.unlink(dest)
        raise
    for _, backup in placed:
        if backup is not None:
            with contextlib.suppress(OSError):
                os.unlink(backup)


def _write_pieces(dst: int, pieces: list) -> None:
    pending: list[bytes] = []
    for piece in pieces:
        if isinstance(piece, _Copy):
            _write_all(dst, b"".join(pending))
            pending.clear()
            _copy_range(piece.fd, dst, piece.offset, piece.length)
        else:
            pending.append(piece)
    _write_all(dst, b"".join(pending))


def _write_data(dst: int, data: _DataFile) -> None:
    pos = 0
    for offset, payload in data.items:
        if offset > pos:
            _write_all(dst, bytes(offset - pos))
        if isinstance(payload, _Copy):
            _copy_range(payload.fd, dst, payload.offset, payload.length)
            pos = offset + payload.length
        else:
            _write_all(dst, payload)
            pos = offset + len(payload)


def _write_all(dst: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(dst, view)
        view = view[n:]


_UNSUPPORTED = {errno.ENOSYS, errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP,
                errno.EBADF, errno.EPERM, errno.ETXTBSY}


def _copy_range(src: int, dst: int, offset: int, length: int) -> None:
    """Append `length` bytes at `offset` of `src` to `dst`, in the kernel when possible."""
    done = 0
    for method in COPY_METHODS:
        try:
            done += _COPIERS[method](src, dst, offset + done, length - done)
        except _Unsupported:
            continue
        if done == length:
            return
    raise ModelError(f"a weights file ended early: {done} of {length} bytes at offset {offset} "
                     "could be read (was it changed while being written?)")


class _Unsupported(Exception):
    pass


def _kernel_copy(call, src: int, dst: int, offset: int, length: int) -> int:
    """Loop a kernel copy call(src, dst, offset, count) until `length` bytes have moved."""
    done = 0
    while done < length:
        try:
            n = call(src, dst, offset + done, min(length - done, 1 << 30))
        except OSError as e:
            if done == 0 and e.errno in _UNSUPPORTED:
                raise _Unsupported from None
            raise
        if n == 0:
            break
        done += n
    return done


def _by_copy_file_range(src: int, dst: int, offset: int, length: int) -> int:
    if not hasattr(os, "copy_file_range"):
        raise _Unsupported
    return _kernel_copy(lambda s, d, off, n: os.copy_file_range(s, d, n, off),
                        src, dst, offset, length)


def _by_sendfile(src: int, dst: int, offset: int, length: int) -> int:
    if not hasattr(os, "sendfile"):
        raise _Unsupported
    return _kernel_copy(lambda s, d, off, n: os.sendfile(d, s, off, n), src, dst, offset, length)


def _by_readwrite(src: int, dst: int, offset: int, length: int) -> int:
    done = 0
    while done < length:
        chunk = os.pread(src, min(length - done, COPY_CHUNK), offset + done)
        if not chunk:
            break
        _write_all(dst, chunk)
        done += len(chunk)
    return done


_COPIERS = {"copy_file_range": _by_copy_file_range, "sendfile": _by_sendfile,
            "readwrite": _by_readwrite}
